"""ensemble_nn: batched members vs an independent per-member loop, early stopping,
non-crossing, calibration against known quantiles, determinism, save/load, window batching,
parameter errors. Small networks and short budgets keep the file at a few seconds."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
import torch
from ensemble_loop import fit_predict_member_loop
from scipy.stats import norm

from pipeline.io import read_npz, write_npz
from pipeline.models.estimator_nn import EnsembleNN
from pipeline.models.solvers._batched_mlp import (
    design_matrix,
    forward,
    member_loss,
    train_predict_windows,
)
from pipeline.models.solvers._nn_data import check_nn_params, prepare_window
from pipeline.models.solvers.common import crossing_rate
from pipeline.models.solvers.ensemble_nn import WindowData, fit_predict_ensemble_windows

CPU = torch.device("cpu")
QS = (0.1, 0.5, 0.9)
SMALL = dict(
    quantiles=QS,
    units_per_layer=(8, 8),
    learning_rate=3e-3,
    epochs=25,
    batch_size=16,
    patience=4,
    parallel_models=3,
    seed=0,
    validation_fraction=0.2,
    scale="per_country",
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def t64(a: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(a, dtype=torch.float64).unsqueeze(0)


def ar_panel(n_c: int, n_t: int, shock_seed: int):
    """AR(1) per country with Gaussian shocks; country parameters fixed, shocks vary.

    Returns X (n, 1) = y_t, y (n,) = y_{t+1}, country (n,), and the true conditional
    mean and standard deviation of y_{t+1} given y_t.
    """
    rng = np.random.default_rng(0)
    mu, rho, sig = rng.uniform(-2, 4, n_c), rng.uniform(0.3, 0.8, n_c), rng.uniform(0.5, 2, n_c)
    rng = np.random.default_rng(shock_seed)
    y = np.empty((n_c, n_t + 1))
    y[:, 0] = mu + sig / np.sqrt(1 - rho**2) * rng.standard_normal(n_c)
    for t in range(n_t):
        y[:, t + 1] = mu + rho * (y[:, t] - mu) + sig * rng.standard_normal(n_c)
    cond_mean = mu[:, None] + rho[:, None] * (y[:, :-1] - mu[:, None])
    return (
        y[:, :-1].reshape(-1, 1),
        y[:, 1:].reshape(-1),
        np.repeat(np.arange(n_c), n_t),
        cond_mean.reshape(-1),
        np.repeat(sig, n_t),
    )


def window(n_c: int, n_t: int, seed: int, H: int = 2) -> WindowData:
    """A window with lags 0..2 as features and H horizons, NaN past the origin."""
    rng = np.random.default_rng(seed)
    y = np.cumsum(rng.standard_normal((n_c, n_t + 3)), axis=1) * 0.3 + rng.uniform(0, 5, (n_c, 1))
    X, Y, C, T = [], [], [], []
    for c in range(n_c):
        ts = np.arange(2, n_t + 2)  # origin = n_t + 2 (last column)
        X.append(np.stack([y[c, ts], y[c, ts - 1], y[c, ts - 2]], axis=1))
        origin = n_t + 2
        Y.append(
            np.stack(
                [
                    np.where(ts + h <= origin, y[c, np.minimum(ts + h, origin)], np.nan)
                    for h in range(1, H + 1)
                ],
                axis=1,
            )
        )
        C.append(np.full(ts.size, c))
        T.append(ts)
    X_new = np.stack([y[:, -1], y[:, -2], y[:, -3]], axis=1)
    return WindowData(
        np.concatenate(X),
        np.concatenate(Y),
        np.concatenate(C),
        X_new,
        np.arange(n_c),
        np.concatenate(T),
    )


def test_batched_members_equal_member_loop():
    """Oracle: nn.Linear members trained one at a time with torch.optim.Adam."""
    win = window(5, 40, seed=1)
    spec = check_nn_params(**SMALL)
    batched = train_predict_windows([win], spec, CPU, torch.float64)[0]
    loop = fit_predict_member_loop(win, spec, CPU, torch.float64)
    np.testing.assert_array_equal(batched.epochs, loop.epochs)
    assert batched.epochs.min() < SMALL["epochs"]  # early stopping took part
    assert np.unique(batched.epochs).size > 1  # members stop at their own epochs
    for key in batched.state:
        if key.startswith("param"):
            np.testing.assert_allclose(batched.state[key], loop.state[key], rtol=0, atol=1e-10)
    np.testing.assert_allclose(batched.pred, loop.pred, rtol=0, atol=1e-10)


def test_ragged_windows_in_chunks_equal_member_loop(monkeypatch):
    """Oracle again, with what the batch adds: two windows of different epoch lengths (so
    members start their epochs at different steps and the per-step row slots wrap around),
    the step and Adam in several chunks of members, and compaction as members stop."""
    from pipeline.models.solvers import _nn_update

    monkeypatch.setattr(_nn_update, "CHUNK", 2)  # 6 members: 3 chunks, then fewer
    wins = [window(5, 40, seed=1), window(3, 23, seed=4)]
    spec = check_nn_params(**SMALL)
    batched = train_predict_windows(wins, spec, CPU, torch.float64)
    steps = {
        -(-t.size // SMALL["batch_size"]) for w in wins for t in prepare_window(w, spec).train_rows
    }
    assert len(steps) > 1  # the windows' epochs differ in length
    for win, res in zip(wins, batched, strict=True):
        loop = fit_predict_member_loop(win, spec, CPU, torch.float64)
        np.testing.assert_array_equal(res.epochs, loop.epochs)
        assert np.unique(res.epochs).size > 1  # members stop at their own epochs
        for key in res.state:
            if key.startswith("param"):
                np.testing.assert_allclose(res.state[key], loop.state[key], rtol=0, atol=1e-10)
        np.testing.assert_allclose(res.pred, loop.pred, rtol=0, atol=1e-10)


def test_adam_fallback_equals_the_fused_kernel():
    """Where torch has no fused Adam (devices other than CPU and CUDA) the functional Adam
    runs on the same blocks with the same shared step count."""
    from pipeline.models.solvers._nn_update import Adam

    blocks = [(4, 3), (4, 1), (4, 7)]

    def run(fused: bool) -> list[torch.Tensor]:
        adam = Adam(1e-2, CPU)
        adam.fused = fused
        params = [torch.as_tensor(rng.standard_normal(b)) for b in blocks]
        m, v = (
            [torch.zeros(b, dtype=torch.float64) for b in blocks],
            [torch.zeros(b, dtype=torch.float64) for b in blocks],
        )
        for k in range(3):
            grads = [torch.as_tensor(np.sin(np.arange(np.prod(b)) + k).reshape(b)) for b in blocks]
            adam.tick()
            adam.update(params, grads, m, v)
        assert adam.count.item() == 3
        return params

    rng = np.random.default_rng(3)
    fused = run(True)
    rng = np.random.default_rng(3)
    for a, b in zip(fused, run(False), strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12, atol=1e-14)


def test_early_stopping_stops_and_restores_best_weights():
    win = window(5, 40, seed=2)
    params = {**SMALL, "learning_rate": 3e-2, "epochs": 200, "patience": 3}
    spec = check_nn_params(**params)
    res = train_predict_windows([win], spec, CPU, torch.float64)[0]
    best = res.state["best_epoch"]
    # stopped `patience` epochs after its best epoch, long before the epoch budget
    np.testing.assert_array_equal(res.epochs, best + params["patience"])
    assert res.epochs.max() < params["epochs"]
    # the returned weights are those of the best epoch: a run whose budget ends exactly
    # there (same seeds, same shuffles) ends with the same weights
    prep = prepare_window(win, spec)
    n_params = sum(key.startswith("param") for key in res.state)
    for k in range(spec.parallel_models):
        spec_k = check_nn_params(**{**params, "epochs": int(best[k])})
        ref = train_predict_windows([win], spec_k, CPU, torch.float64)[0]
        for key in res.state:
            if key.startswith("param"):
                np.testing.assert_allclose(res.state[key][k], ref.state[key][k], atol=1e-12)
        # and the recorded best validation loss is the loss of the returned weights
        rows = prep.val_rows[k]
        member = [torch.as_tensor(res.state[f"param{i}"][k : k + 1]) for i in range(n_params)]
        q = forward(
            member, t64(prep.X[rows]), t64(design_matrix(prep.X[rows], prep.cidx[rows], 5)), 3
        )[0]
        loss = member_loss(q, t64(prep.Y[rows]), t64(prep.W[rows]), t64(np.array(QS)))
        assert float(loss[0]) == pytest.approx(res.state["val_loss"][k], abs=1e-12)


def test_quantiles_never_cross_on_random_inputs():
    rng = np.random.default_rng(3)
    B, n, p, H, Q, C = 4, 200, 3, 2, 5, 3
    sizes = [p, 8, 8, H * Q]
    params = [torch.randn(B, a, b, dtype=torch.float64) * 3 for a, b in pairwise(sizes)]
    params += [torch.randn(B, 1, b, dtype=torch.float64) * 3 for b in sizes[1:]]
    params.append(torch.randn(B, 2, C, H, dtype=torch.float64) * 3)
    x = torch.as_tensor(rng.standard_normal((B, n, p)) * 100)
    design = torch.as_tensor(rng.standard_normal((B, n, 2 * C)))
    q = forward(params, x, design, Q)[0]
    assert torch.all(torch.diff(q, dim=-1) >= 0)
    X, y, c, _, _ = ar_panel(3, 60, shock_seed=4)
    model = EnsembleNN(
        units_per_layer=(8,),
        epochs=5,
        parallel_models=2,
        quantiles=(0.05, 0.3, 0.5, 0.7, 0.95),
        device="cpu",
    )
    pred = model.fit(X, y, c).predict(rng.standard_normal((500, 1)) * 50, rng.integers(0, 3, 500))
    assert crossing_rate(pred) == 0.0


def test_calibration_on_ar1_panel_with_known_quantiles():
    """Coverage of each quantile within 0.04 of its level on 4000 fresh points.

    The binomial standard error of a coverage rate is at most sqrt(0.25 / 4000) = 0.008,
    so 0.04 leaves ~3 SE for sampling plus ~0.015 for estimation error of a short training
    budget on 2000 rows; the forecasts are also within 0.3 sigma of the true quantiles.
    """
    X, y, c, _, _ = ar_panel(8, 250, shock_seed=1)
    Xt, yt, ct, mean, sig = ar_panel(8, 500, shock_seed=2)
    model = EnsembleNN(
        units_per_layer=(16, 16), learning_rate=1e-2, epochs=80, batch_size=64, patience=10,
        parallel_models=4, quantiles=QS, device="cpu",
    )  # fmt: skip
    pred = model.fit(X, y, c).predict(Xt, ct)
    coverage = (yt[:, None] <= pred).mean(axis=0)
    np.testing.assert_allclose(coverage, QS, atol=0.04)
    truth = mean[:, None] + sig[:, None] * norm.ppf(QS)
    assert np.all(np.mean(np.abs(pred - truth) / sig[:, None], axis=0) < 0.3)


def test_deterministic_and_seed_dependent():
    win = window(4, 30, seed=5)
    a = fit_predict_ensemble_windows([win], **SMALL, device="cpu")[0]
    b = fit_predict_ensemble_windows([win], **SMALL, device="cpu")[0]
    np.testing.assert_array_equal(a.pred, b.pred)
    c = fit_predict_ensemble_windows([win], **{**SMALL, "seed": 1}, device="cpu")[0]
    assert not np.allclose(a.pred, c.pred)


def test_save_load_round_trip(tmp_path):
    win = window(4, 30, seed=6)
    labels = np.array(["AT", "BE", "DE", "FR"])
    model = EnsembleNN(**{k: v for k, v in SMALL.items()}, device="cpu")
    model.fit(win.X, win.y, labels[win.country], win.time)
    pred, fac = model.predict(win.X_new, labels), model.factors(win.X_new, labels)
    assert pred.shape == (4, 2, 3) and fac.shape == (4, 8)
    model.save(tmp_path / "m.pt")
    loaded = EnsembleNN.load(tmp_path / "m.pt")
    np.testing.assert_array_equal(loaded.predict(win.X_new, labels), pred)
    np.testing.assert_array_equal(loaded.factors(win.X_new, labels), fac)
    write_npz(tmp_path / "m.npz", model.to_arrays())
    again = EnsembleNN.from_arrays(read_npz(tmp_path / "m.npz"))
    np.testing.assert_array_equal(again.predict(win.X_new, labels), pred)
    np.testing.assert_array_equal(again.epochs_, model.epochs_)


def test_window_result_independent_of_batch_companions():
    """Same window alone vs batched with two ragged others (other sizes and countries)."""
    wins = [window(5, 40, seed=7), window(3, 25, seed=8), window(7, 33, seed=9, H=2)]
    spec = check_nn_params(**SMALL)
    together = train_predict_windows(wins, spec, CPU, torch.float64)
    for win, res in zip(wins, together, strict=True):
        alone = train_predict_windows([win], spec, CPU, torch.float64)[0]
        np.testing.assert_array_equal(alone.epochs, res.epochs)
        np.testing.assert_allclose(alone.pred, res.pred, rtol=0, atol=1e-10)
    # the estimator's fit is the same code path with one window
    model = EnsembleNN(**SMALL, device="cpu").fit(
        wins[0].X, wins[0].y, wins[0].country, wins[0].time
    )
    np.testing.assert_array_equal(model.epochs_, together[0].epochs)


def test_per_country_scaling_returns_original_units():
    win = window(4, 30, seed=10)
    spec = check_nn_params(**SMALL)
    base = train_predict_windows([win], spec, CPU, torch.float64)[0]
    scaled = WindowData(
        win.X * 1000 + 5,
        win.y * 1000 + 5,
        win.country,
        win.X_new * 1000 + 5,
        win.country_new,
        win.time,
    )
    big = train_predict_windows([scaled], spec, CPU, torch.float64)[0]
    np.testing.assert_allclose(big.pred, base.pred * 1000 + 5, rtol=1e-7)


def test_one_dimensional_target_gives_one_column_per_quantile():
    X, y, c, _, _ = ar_panel(3, 40, shock_seed=11)
    model = EnsembleNN(units_per_layer=(4,), epochs=3, parallel_models=2, device="cpu").fit(X, y, c)
    assert model.predict(X[:7], c[:7]).shape == (7, 3)
    with pytest.raises(ValueError, match="country"):
        model.predict(X[:1], np.array([99]))


@pytest.mark.parametrize(
    ("override", "name"),
    [
        ({"units_per_layer": ()}, "units_per_layer"),
        ({"units_per_layer": (8, 0)}, "units_per_layer"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"learning_rate": -1e-3}, "learning_rate"),
        ({"patience": 0}, "patience"),
        ({"parallel_models": 0}, "parallel_models"),
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"quantiles": (0.0, 0.5)}, "quantiles"),
        ({"quantiles": (0.5, 1.2)}, "quantiles"),
        ({"scale": "global"}, "scale"),
        ({"validation_fraction": 1.0}, "validation_fraction"),
        ({"device": "tpu9"}, "device"),
    ],
)
def test_bad_parameters_raise_clear_errors(override, name):
    X, y, c, _, _ = ar_panel(2, 20, shock_seed=12)
    with pytest.raises(ValueError, match=name):
        EnsembleNN(**{**SMALL, "device": "cpu", **override}).fit(X, y, c)
    with pytest.raises(ValueError, match=name):
        fit_predict_ensemble_windows(
            [window(2, 20, seed=0)], **{**SMALL, "device": "cpu", **override}
        )


def test_origin_row_and_masked_targets_do_not_influence_training():
    """No look-ahead: X_new (the origin's features) is not used for scaling or fitting, and a
    row whose targets are all missing (the origin itself) is dropped, whatever its features."""
    win = window(4, 30, seed=13)
    spec = check_nn_params(**SMALL)
    base = train_predict_windows([win], spec, CPU, torch.float64)[0]
    shifted_new = WindowData(win.X, win.y, win.country, win.X_new + 50.0, win.country_new, win.time)
    origin_rows = WindowData(
        np.vstack([win.X, win.X_new + 1e6]),
        np.vstack([win.y, np.full((4, win.y.shape[1]), np.nan)]),
        np.concatenate([win.country, win.country_new]),
        win.X_new,
        win.country_new,
        np.concatenate([win.time, np.full(4, win.time.max() + 1)]),
    )
    for other in (shifted_new, origin_rows):
        res = train_predict_windows([other], spec, CPU, torch.float64)[0]
        for key in ("x_loc", "x_scale", "param0", "param6"):
            np.testing.assert_array_equal(res.state[key], base.state[key])


@pytest.mark.parametrize("gather_ar", [True, False])
@pytest.mark.parametrize(("Q", "units"), [(3, (5, 4)), (1, (6,)), (4, (3, 3, 3))])
def test_hand_written_gradient_equals_autograd(Q, units, gather_ar):
    """The training step's gradient (no autograd) against autograd through `forward` and
    `member_loss` (an independent oracle), float64, ragged weights, ties excluded; the AR
    term both ways (gathered on CPU; a one-hot matmul on CUDA, deterministic there)."""
    from pipeline.models.solvers._nn_step import Layout, Step, loss_weights, quantiles

    rng = np.random.default_rng(Q)
    A, n, p, H, C = 4, 9, 3, 2, 3
    tau = torch.as_tensor(np.linspace(0.1, 0.9, Q) if Q > 1 else [0.3])
    lay = Layout((p, *units, H * Q), C, H, Q)
    buf = torch.as_tensor(rng.standard_normal(A * lay.width))
    x = torch.as_tensor(rng.standard_normal((A, n, p)))
    cidx = rng.integers(0, C, (A, n))
    design = torch.as_tensor(np.stack([design_matrix(x[a].numpy(), cidx[a], C) for a in range(A)]))
    y = torch.as_tensor(rng.standard_normal((A, n, H)) * 3)
    w = torch.as_tensor((rng.random((A, n, H)) < 0.7).astype(float))
    w[-1] = 0.0  # a member without targets in this batch: zero gradient, no division by 0
    grad = torch.full_like(buf, np.nan)
    step = Step(lay, tau)
    step.rebind(buf, grad, A)
    step.gather_ar = gather_ar
    step(x, torch.as_tensor(cidx), y, loss_weights(w, Q))

    params = [v.clone().requires_grad_() for v in lay.saved(lay.views(buf, A))]
    q = forward(params, x, design, Q)[0]
    member_loss(q, y, w, tau).sum().backward()
    expected = lay.pack([prm.grad for prm in params])
    np.testing.assert_allclose(grad.numpy(), expected.numpy(), rtol=1e-10, atol=1e-12)
    # the validation's forward (the AR term gathered) against the one-hot matmul's
    with torch.no_grad():
        np.testing.assert_allclose(
            quantiles(lay, lay.views(buf, A), x, torch.as_tensor(cidx)).numpy(),
            q.numpy(),
            rtol=1e-12,
            atol=1e-12,
        )
    views = lay.views(grad, A)
    assert all(torch.count_nonzero(g[-1]) == 0 for g in views)
    assert sum(torch.count_nonzero(g[:-1]) for g in views) > 0.5 * (A - 1) * lay.width


def test_step_reuses_its_buffers_after_compaction():
    """After the batch shrinks, the step writes into the first A rows of buffers sized for
    the larger batch: a member's gradient is the same bits as from a step made for A alone,
    and a call with the full batch again still matches."""
    from pipeline.models.solvers._nn_step import Layout, Step, loss_weights

    rng = np.random.default_rng(5)
    A, n, p, H, C, Q = 5, 7, 3, 2, 3, 3
    tau = torch.tensor([0.1, 0.5, 0.9])
    lay = Layout((p, 4, 4, H * Q), C, H, Q)
    buf = torch.as_tensor(rng.standard_normal(A * lay.width), dtype=torch.float32)
    x = torch.as_tensor(rng.standard_normal((A, n, p)), dtype=torch.float32)
    cidx = torch.as_tensor(rng.integers(0, C, (A, n)))
    y = torch.as_tensor(rng.standard_normal((A, n, H)), dtype=torch.float32)
    w = torch.ones(A, n, H)

    def grad_of(step: Step, k: int) -> torch.Tensor:
        sub = lay.pack([v[:k] for v in lay.views(buf, A)])
        grad = torch.full_like(sub, np.nan)
        step.rebind(sub, grad, k)
        step(x[:k], cidx[:k], y[:k], loss_weights(w[:k], Q))
        return grad

    shared = Step(lay, tau)
    full = grad_of(shared, A)
    assert torch.equal(grad_of(shared, 2), grad_of(Step(lay, tau), 2))
    assert torch.equal(grad_of(shared, A), full)
    assert torch.isfinite(full).all()


@pytest.mark.parametrize("before", [False, True])
def test_training_flushes_subnormals_and_restores_the_thread_setting(before):
    """Adam's moments of dead units sink into subnormals, which cost the CPU microcode
    assists: the trainer flushes them to zero while it trains, then leaves this thread's
    setting as it found it (a worker's thread runs other models next)."""
    from pipeline.models.solvers._nn_step import flush_denormals, flushes_denormals

    tiny = torch.finfo(torch.float32).tiny
    torch.set_flush_denormal(before)
    try:
        assert flushes_denormals() == before
        with flush_denormals():
            assert flushes_denormals()
            assert torch.tensor(tiny).div(4.0).item() == 0.0
        assert flushes_denormals() == before
        assert (torch.tensor(tiny).div(4.0).item() == 0.0) == before
    finally:
        torch.set_flush_denormal(False)


def test_the_trainer_trains_with_subnormals_flushed(monkeypatch):
    from pipeline.models.solvers import _batched_mlp
    from pipeline.models.solvers._nn_step import flushes_denormals

    seen = []
    real = _batched_mlp.train_members

    def spy(*args, **kwargs):
        seen.append(flushes_denormals())
        return real(*args, **kwargs)

    monkeypatch.setattr(_batched_mlp, "train_members", spy)
    X, y, country, _, _ = ar_panel(3, 30, 0)
    win = WindowData(X, y, country, X[:3], country[:3])
    train_predict_windows([win], check_nn_params(**{**SMALL, "epochs": 2}), CPU)
    assert seen == [True] and not flushes_denormals()
