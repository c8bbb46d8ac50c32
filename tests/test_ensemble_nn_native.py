"""ensemble_nn's native kernel (pipeline/models/solvers/native): its gradient and Adam step
against the torch step (`_nn_step.Step` + torch's fused Adam), a whole small training run
against the torch trainer, its two instruction-set variants bit for bit, batch-mate
independence, and the backend choice. Skipped where the kernel is not built, except the
tests of the torch fallback."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from test_ensemble_nn import SMALL, window

from pipeline.models.solvers import _nn_native, native
from pipeline.models.solvers._batched_mlp import resolve_backend, train_predict_windows
from pipeline.models.solvers._nn_data import ADAM_BETAS, ADAM_EPS, check_nn_params, init_member
from pipeline.models.solvers._nn_step import Layout, Step, loss_weights
from pipeline.models.solvers._nn_update import Adam

CPU = torch.device("cpu")
built = pytest.mark.skipif(not native.available(), reason="native kernel not built here")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tables(rng: np.random.Generator, n: int, p: int, H: int, C: int) -> types.SimpleNamespace:
    """Row tables as `_nn_rows.Stacked` holds them, the dummy row (zeros, weight 0) last."""
    x = np.vstack([rng.standard_normal((n, p)), np.zeros((1, p))])
    y = np.vstack([rng.standard_normal((n, H)), np.zeros((1, H))])
    w = np.vstack([(rng.random((n, H)) < 0.8).astype(float), np.zeros((1, H))])
    cid = np.r_[rng.integers(0, C, n), 0]
    f32 = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    return types.SimpleNamespace(
        x=f32(x), cid=torch.as_tensor(cid), y_t=f32(y.T), w_t=f32(w.T), dummy=n, n=n
    )


def members(lay: Layout, A: int, seed: int) -> list[torch.Tensor]:
    """A members' initial weights (float64 -> float32) with random biases and AR terms, so
    every part of the gradient is exercised."""
    L = len(lay.sizes) - 1
    gens = [torch.Generator().manual_seed(seed + a) for a in range(A)]
    params = [
        init_member(g, lay.sizes[0], lay.sizes[1:-1], lay.sizes[-1], lay.n_countries, lay.H)
        for g in gens
    ]
    stacks = [torch.stack([m[i] for m in params]) for i in range(len(params[0]))]
    stacks[-1] = stacks[-1].flatten(1, 2)  # AR (A, 2C, H)
    rng = torch.Generator().manual_seed(seed)
    for i in range(L, len(stacks)):
        stacks[i] = 0.3 * torch.randn(stacks[i].shape, generator=rng, dtype=torch.float64)
    return [s.to(torch.float32) for s in stacks]


CASES = [
    # p, units, H, Q, C, bs, n rows (a short last batch: padding rows)
    (6, (32, 32, 32), 4, 3, 5, 32, 70),
    (3, (7, 5), 1, 1, 1, 8, 13),
    (5, (17,), 4, 1, 3, 16, 40),
    (1, (9, 33, 4), 1, 3, 4, 5, 23),
]


@built
@pytest.mark.parametrize(("p", "units", "H", "Q", "C", "bs", "n"), CASES)
def test_kernel_step_equals_torch_step_and_fused_adam(p, units, H, Q, C, bs, n):
    """Three Adam steps of 3 members on the same batches, against `Step` + torch's fused Adam
    in float32. After step 1 the kernel's moments are (1 - beta1) g and (1 - beta2) g^2 of
    its gradient g: g within 1e-5 of each block's largest, and its update is Adam's (bias
    corrections, eps) on those moments to 1e-5 of lr. After 3 steps the parameters agree
    within 1e-5 of the block's scale plus 1e-3 lr per step: Adam divides each gradient by its
    own size, so a near-zero gradient's rounding moves its weight by a fraction of lr."""
    rng = np.random.default_rng(p + Q)
    quantiles = (0.1, 0.5, 0.9)[:Q] if Q == 3 else (0.5,)
    spec = check_nn_params(**{**SMALL, "quantiles": quantiles, "units_per_layer": units,
                              "batch_size": bs, "learning_rate": 1e-2})  # fmt: skip
    lay = Layout((p, *units, H * Q), C, H, Q)
    data = tables(rng, n, p, H, C)
    A, steps = 3, 3
    rows = np.full((A, steps * bs), data.dummy, dtype=np.int32)
    for a in range(A):
        k = min(steps * bs - 3, n)  # the last batch padded
        rows[a, :k] = rng.permutation(n)[:k]
    init = members(lay, A, seed=p)
    # kernel
    rl = _nn_native.RowLayout(lay)
    kern = _nn_native.Kernel(native.load(), rl, spec, data)
    params = rl.pack(init)
    m, v = np.zeros_like(params), np.zeros_like(params)
    p0 = params.astype(np.float64)
    kern.train(np.arange(A), rows, np.ones(A), np.zeros(A), params, m, v)
    m1, v1 = rl.unpack(m), rl.unpack(v)
    b1, b2 = ADAM_BETAS
    want = p0 - spec.learning_rate / (1 - b1) * m / (np.sqrt(v) / np.sqrt(1 - b2) + ADAM_EPS)
    np.testing.assert_allclose(params, want, rtol=0, atol=1e-5 * spec.learning_rate)
    kern.train(np.arange(A), np.ascontiguousarray(rows[:, bs:]), np.full(A, 2), np.ones(A),
               params, m, v)  # fmt: skip
    native_params = rl.unpack(params)
    # torch
    buf = lay.pack(init)
    grad, tm, tv = (torch.zeros_like(buf) for _ in range(3))
    step, adam = Step(lay, torch.tensor(quantiles)), Adam(spec.learning_rate, CPU)
    step.rebind(buf, grad, A)
    views = [lay.views(t, A) for t in (buf, grad, tm, tv)]
    for s in range(steps):
        r = torch.as_tensor(rows[:, s * bs : (s + 1) * bs].astype(np.int64))
        x, cid = data.x[r], data.cid[r]
        y, w = data.y_t.T[r], data.w_t.T[r]
        step(x.contiguous(), cid, y, loss_weights(w, Q))
        if s == 0:
            g1 = [g.clone() for g in views[1]]
        adam.tick()
        adam.update(*views)
    for i, (mk, vk, g) in enumerate(zip(m1, v1, g1, strict=True)):
        scale = g.abs().max().item() + 1e-30
        assert (mk / (1 - b1) - g).abs().max().item() <= 1e-5 * scale, i
        assert (vk / (1 - b2) - g * g).abs().max().item() <= 1e-5 * scale**2, i
    for i, (a, b) in enumerate(zip(native_params, views[0], strict=True)):
        err = (a - b).abs().max().item()
        assert err <= 1e-5 * b.abs().max().item() + 1e-3 * spec.learning_rate * steps, (i, err)
    assert ADAM_EPS == 1e-7  # the kernel gets it from _nn_data, like torch's Adam


@built
def test_native_training_run_close_to_torch():
    """A whole small run (two ragged windows, short last batches, validation, best weights):
    the same epochs, and forecasts within 1e-5 of their scale where no early stop moved."""
    spec = check_nn_params(**{**SMALL, "epochs": 20, "patience": 100})
    wins = [window(5, 40, seed=1), window(3, 23, seed=4)]
    a = train_predict_windows(wins, spec, CPU, torch.float32, backend="torch")
    b = train_predict_windows(wins, spec, CPU, torch.float32, backend="native")
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.epochs, y.epochs)
        np.testing.assert_allclose(y.pred, x.pred, rtol=0, atol=1e-5 * np.abs(x.pred).max())
        np.testing.assert_allclose(y.state["val_loss"], x.state["val_loss"], rtol=1e-5)
        assert (np.diff(y.pred, axis=-1) >= 0).all()


@built
def test_native_early_stopping_matches_torch():
    """With early stopping: every member stops at the torch trainer's epoch here, and the
    restored best weights give the same forecasts (1e-5 of their scale)."""
    spec = check_nn_params(**{**SMALL, "learning_rate": 3e-2, "epochs": 200, "patience": 3})
    win = window(5, 40, seed=2)
    a = train_predict_windows([win], spec, CPU, torch.float32, backend="torch")[0]
    b = train_predict_windows([win], spec, CPU, torch.float32, backend="native")[0]
    assert b.epochs.max() < 200
    np.testing.assert_array_equal(a.epochs, b.epochs)
    np.testing.assert_array_equal(a.state["best_epoch"], b.state["best_epoch"])
    np.testing.assert_allclose(b.pred, a.pred, rtol=0, atol=1e-5 * np.abs(a.pred).max())


@built
@pytest.mark.skipif(
    not {"avx512f", "avx2", "fma"} <= native._cpu_flags()
    or native.variant_path("_nn_avx512") is None
    or native.variant_path("_nn_avx2") is None,
    reason="needs both variants built and a CPU with AVX-512",
)
def test_variants_are_bit_identical(monkeypatch):
    """AVX-512 (16 lanes) and AVX2 (8 lanes) give the same bits: a whole run with odd widths
    (vector bodies and scalar tails) and ragged windows."""
    spec = check_nn_params(**{**SMALL, "units_per_layer": (19, 40), "epochs": 8})
    wins = [window(5, 40, seed=1), window(3, 23, seed=4)]
    out = {}
    for name in ("_nn_avx512", "_nn_avx2"):
        monkeypatch.setattr(_nn_native, "load", lambda name=name: native.load(name))
        out[name] = train_predict_windows(wins, spec, CPU, torch.float32, backend="native")
    assert native.load("_nn_avx512").nn_vector_width() == 16
    assert native.load("_nn_avx2").nn_vector_width() == 8
    for a, b in zip(out["_nn_avx512"], out["_nn_avx2"], strict=True):
        for key in a.state:
            np.testing.assert_array_equal(a.state[key], b.state[key])
        np.testing.assert_array_equal(a.pred, b.pred)


@built
def test_native_window_result_independent_of_batch_mates():
    """A window's bits alone equal its bits in a batch, in either position (one key, one
    result), with early stopping: members leave the batch at different epochs."""
    spec = check_nn_params(**{**SMALL, "learning_rate": 3e-2, "epochs": 60, "patience": 3})
    wins = [window(5, 40, seed=1), window(4, 30, seed=7)]
    together = train_predict_windows(wins, spec, CPU, torch.float32, backend="native")
    swapped = train_predict_windows(wins[::-1], spec, CPU, torch.float32, backend="native")
    assert np.unique(np.concatenate([r.epochs for r in together])).size > 1
    for win, res, other in zip(wins, together, swapped[::-1], strict=True):
        alone = train_predict_windows([win], spec, CPU, torch.float32, backend="native")[0]
        for key in alone.state:
            np.testing.assert_array_equal(alone.state[key], res.state[key])
            np.testing.assert_array_equal(alone.state[key], other.state[key])
        np.testing.assert_array_equal(alone.pred, res.pred)


@built
def test_native_training_restores_the_thread_float_setting():
    from pipeline.models.solvers._nn_step import flushes_denormals

    torch.set_flush_denormal(False)
    spec = check_nn_params(**{**SMALL, "epochs": 2})
    train_predict_windows([window(3, 20, seed=0)], spec, CPU, torch.float32, backend="native")
    assert not flushes_denormals()


def test_backend_choice(monkeypatch):
    """auto: native for float32 on a CPU where built, torch otherwise (float64, CUDA, or
    QPIPE_NN_NATIVE=0); a fit that asks for native where it is missing fails clearly."""
    f32, f64 = torch.float32, torch.float64
    assert resolve_backend("auto", CPU, f64) == "torch"
    assert resolve_backend("torch", CPU, f32) == "torch"
    assert resolve_backend("auto", CPU, f32) == ("native" if native.available() else "torch")
    with pytest.raises(ValueError, match="float32 on the CPU"):
        resolve_backend("native", CPU, f64)
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("fast", CPU, f32)
    monkeypatch.setattr(native, "load", lambda name=None: None)
    assert resolve_backend("auto", CPU, f32) == "torch"
    with pytest.raises(RuntimeError, match="not built for this machine"):
        resolve_backend("native", CPU, f32)


def test_forced_torch_path_trains(monkeypatch):
    """Without the kernel (as on a machine with no compiler) the torch path trains float32."""
    monkeypatch.setattr(native, "load", lambda name=None: None)
    spec = check_nn_params(**{**SMALL, "epochs": 3})
    res = train_predict_windows([window(3, 20, seed=0)], spec, CPU, torch.float32)[0]
    assert np.isfinite(res.pred).all() and (res.epochs == 3).all()


@built
def test_backend_enters_the_fit_key(tmp_path, monkeypatch):
    """The native kernel and torch round differently: a CPU fit's key names the backend the
    driver resolved, so a study run with the kernel never reuses torch's fits or back."""
    from conftest import ROOT
    from test_device_key import config_for

    from pipeline.data.prepared import load_panel
    from pipeline.models.plugins.registry import get_adapter
    from pipeline.runtime.fits.fit_groups import build_groups
    from pipeline.stages.prepare import prepare

    adapter, cfg = get_adapter("ensemble_nn"), config_for(tmp_path, "cpu")
    prepare(cfg, ROOT)
    panel = load_panel(tmp_path)
    assert adapter.params(cfg)["backend"] == "native"
    with_kernel = build_groups(panel, cfg, adapter)[0].keys.tolist()
    monkeypatch.setattr(native, "load", lambda name=None: None)
    assert adapter.params(cfg)["backend"] == "torch"
    assert build_groups(panel, cfg, adapter)[0].keys.tolist() != with_kernel
    assert adapter.params(config_for(tmp_path, "cuda"))["backend"] == "torch"
