"""Naive baseline vs the pipeline's batched solvers on the seed study's own fits (issue 8, item 4).

    .venv/bin/python benchmarks/bench_baseline.py [--write]

The fit problems are the seed study's, built by the project's code (compose_config with
experiment=seed, prepare, build_groups + the model adapters), on data/eurostat/hicp_manr.csv.gz.
"Naive" is one task per (model, country, quantile, horizon, origin), written the plain way:

- ar_qr: scikit-learn QuantileRegressor(quantile=q, alpha=0, solver="highs") on intercept +
  the 12 lags of the fit's complete rows; one call per quantile.
- lqr: per quantile, the same model as ours (standardized lags [0,1,2,3,6,12] + 1000 random
  Fourier features, squared-L2 penalty lam = alpha / N, huberized check loss), each of the
  7 alphas fitted on the first n-12 rows, scored on the last 12, the best refitted on all
  rows; every solve by scipy L-BFGS-B on that objective (primal, 1007 coefficients). Also
  timed: the literal scikit-learn version, QuantileRegressor(alpha=alpha / N, solver="highs")
  on the same features, whose penalty is L1 (a different estimator: timing only).
- ensemble_nn: one network per (horizon, origin) (a single-horizon head), its 10 members
  trained one after another with the reference loop `tests/ensemble_loop.py`
  (nn.Linear + torch.optim.Adam), seed settings (1500 epochs, patience 50). Ours trains one
  network per origin for all 4 horizons, members batched.

Everything is single-threaded; times are CPU seconds of this process (= wall on an idle
core); data preparation is shared and not timed on either side.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.optimize import minimize  # noqa: E402
from scipy.spatial.distance import pdist  # noqa: E402
from sklearn.linear_model import QuantileRegressor  # noqa: E402

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Naive baseline vs the pipeline (issue 8)"


def timed(fn):
    """(cpu seconds, wall seconds, result) of fn()."""
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return time.process_time() - c0, time.perf_counter() - t0, out


def build(out_dir: str):
    """Seed config, prepared panel and every FitGroup of each model (project code only)."""
    from pipeline.config.compose import compose_config
    from pipeline.data.prepared import load_panel
    from pipeline.models.plugins.registry import get_adapter
    from pipeline.runtime.fits.fit_groups import build_groups
    from pipeline.stages.prepare import prepare

    os.chdir(ROOT)
    config = compose_config(["experiment=seed", f"runtime.output_dir={out_dir}"])
    prepare(config, ROOT)
    panel = load_panel(config.output_dir)
    groups = {
        m: build_groups(panel, config, get_adapter(m)) for m in ("ar_qr", "lqr", "ensemble_nn")
    }
    return config, panel, groups


def payload(config, model: str, group, idx: np.ndarray) -> dict:
    from pipeline.models.plugins.registry import get_adapter
    from pipeline.runtime.fits.tasks import task_payload

    adapter = get_adapter(model)
    return task_payload(
        group,
        idx,
        params=adapter.params(config),
        quantiles=config.data.quantiles,
        seed=config.seed,
    )


def run_ours(config, model: str, groups, picks: list[np.ndarray], per_task: int):
    """Our batched solver (the adapter's fit_batch: what a worker runs, minus the cache write)
    on the picked fits of each group, in chunks of `per_task` fits; returns cpu, wall, outputs."""
    from pipeline.models.plugins.registry import get_adapter

    fit = get_adapter(model).fit_batch
    cpu = wall = 0.0
    outs = []
    for g, idx in zip(groups, picks, strict=True):
        for lo in range(0, idx.size, per_task):
            pl = payload(config, model, g, idx[lo : lo + per_task])
            c, w, out = timed(lambda pl=pl: fit(pl))
            cpu, wall = cpu + c, wall + w
            outs.append(out)
    return cpu, wall, outs


def warm_up(config, model: str, group) -> None:
    """One untimed call, so imports and first-call set-up are not charged to either side."""
    run_ours(config, model, [group], [np.arange(2)], 2)


def sample(groups, size: int, rng) -> list[np.ndarray]:
    """A uniform random sample of `size` fits over all groups, as positions per group."""
    sizes = np.array([len(g) for g in groups])
    flat = np.sort(rng.choice(sizes.sum(), size=min(size, sizes.sum()), replace=False))
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    return [flat[(flat >= s) & (flat < s + n)] - s for s, n in zip(starts, sizes, strict=True)]


# --- naive ar_qr ----------------------------------------------------------------------------


def naive_ar_qr(X, y, X_new, qs):
    """One fit, one sklearn call per quantile: (coef (Q, p+1), forecasts (Q,))."""
    coef, fc = [], []
    for q in qs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = QuantileRegressor(quantile=q, alpha=0, solver="highs").fit(X, y)
        coef.append(np.r_[m.intercept_, m.coef_])
        fc.append(float(m.predict(X_new[None])[0]))
    return np.array(coef), np.array(fc)


def bench_ar_qr(config, groups, args, rng) -> dict:
    from pipeline.models.solvers.common import pinball_per_quantile

    qs = config.data.quantiles
    n_study = sum(len(g) for g in groups)
    picks = sample(groups, args.ar_naive, rng)
    warm_up(config, "ar_qr", groups[0])
    d0 = groups[0].data
    naive_ar_qr(d0["X"][0][d0["w"][0] > 0], d0["y"][0][d0["w"][0] > 0], d0["X_new"][0][0], qs)
    times, walls, gaps, fgaps = [], [], [], []
    for g, idx in zip(groups, picks, strict=True):
        if not idx.size:
            continue
        d = g.data
        ours = run_ours(config, "ar_qr", [g], [idx], args.ar_task)[2][0]
        for j, i in enumerate(idx):
            keep = d["w"][i] > 0
            X, y, xn = d["X"][i][keep], d["y"][i][keep], d["X_new"][i][0]
            c, wl, (coef, fc) = timed(lambda X=X, y=y, xn=xn: naive_ar_qr(X, y, xn, qs))
            times.append(c)
            walls.append(wl)
            Xi = np.c_[np.ones(len(y)), X]
            cours = ours["state"]["coef"][j]
            lo = pinball_per_quantile(y, Xi @ cours.T, qs)
            ln = pinball_per_quantile(y, Xi @ coef.T, qs)
            gaps.append((lo - ln) / np.maximum(ln, 1e-12))
            fgaps.append(np.abs(np.r_[1.0, xn] @ cours.T - fc))
    full = sample(groups, args.ar_ours or n_study, rng)
    cpu, wall, _ = run_ours(config, "ar_qr", groups, full, args.ar_task)
    n_ours = sum(i.size for i in full)
    smp_cpu, _, _ = run_ours(config, "ar_qr", groups, picks, args.ar_task)
    fg = np.concatenate(fgaps)
    return {
        "model": "ar_qr",
        "n_study": n_study,
        "tasks_per_fit": len(qs),
        "naive_fits": len(times),
        "naive_s": np.array(times),
        "naive_wall": sum(walls),
        "ours_fits": n_ours,
        "ours_cpu": cpu,
        "ours_wall": wall,
        "ours_sample_cpu": smp_cpu,
        "agree": (
            f"max relative pinball gap (ours - sklearn) / sklearn: {np.max(gaps):+.1e}; "
            f"forecasts (before sorting) equal to 1e-6 in {np.mean(fg < 1e-6):.0%} of "
            f"{fg.size} (fit, quantile), max |difference| {fg.max():.2g}"
        ),
    }


# --- naive lqr ------------------------------------------------------------------------------


def huber_obj(z, Phi, y, tau, lam, eps):
    """Mean Moreau-smoothed check loss + lam |beta|^2 (last entry of z = free intercept)."""
    r = y - Phi @ z[:-1] - z[-1]
    lo, hi = (tau - 1.0) * eps, tau * eps
    loss = np.where(
        r > hi,
        tau * r - tau * hi / 2,
        np.where(r < lo, (tau - 1) * r - (tau - 1) * lo / 2, r * r / (2 * eps)),
    )
    psi = np.clip(r / eps, tau - 1.0, tau)
    n = len(y)
    grad = np.r_[-Phi.T @ psi / n + 2 * lam * z[:-1], -psi.sum() / n]
    return loss.mean() + lam * z[:-1] @ z[:-1], grad


def lqr_design(X, y, xn, D, seed):
    """Standardize on the window, median-distance bandwidth, [x~, RFF] features."""
    from pipeline.models.solvers.rff import rff_weights

    mx, sx = X.mean(0), X.std(0)
    sx = np.where(sx > 1e-12 * (1 + np.abs(mx)), sx, 1.0)
    my, sy = y.mean(), y.std()
    Xs, xs = (X - mx) / sx, (xn - mx) / sx
    dist = np.sort(pdist(Xs))
    bw = dist[(dist.size - 1) // 2]  # lower median, as ours (torch.nanmedian) defines it
    W, b = rff_weights(X.shape[1], D, seed)  # the same seeded draws as ours

    def phi(Z):
        return np.hstack([Z, np.sqrt(2.0 / D) * np.cos(Z @ W / bw + b)])

    return phi(Xs), (y - my) / sy, phi(xs[None])[0], my, sy


def naive_lqr_quantile(X, y, xn, tau, how, *, alphas, D, seed, val):
    """One naive task: (model, country, quantile, horizon, origin). Returns (alpha, forecast,
    objective at the solution on all rows (L-BFGS only))."""
    from pipeline.models.solvers.lqr import HUBER_EPS

    Phi, ys, pn, my, sy = lqr_design(X, y, xn, D, seed)
    n = len(ys)

    def solve(rows, alpha):
        lam = alpha / len(rows)
        if how == "sklearn":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                m = QuantileRegressor(quantile=tau, alpha=lam, solver="highs")
                m.fit(Phi[rows], ys[rows])
            return np.r_[m.coef_, m.intercept_]
        res = minimize(
            huber_obj,
            np.zeros(Phi.shape[1] + 1),
            jac=True,
            method="L-BFGS-B",
            args=(Phi[rows], ys[rows], tau, lam, HUBER_EPS),
            options={"maxiter": 20000, "gtol": 1e-9, "ftol": 1e-14},
        )
        return res.x

    fit_rows, val_rows = np.arange(n - val), np.arange(n - val, n)
    scores = []
    for a in alphas:
        z = solve(fit_rows, a)
        r = ys[val_rows] - Phi[val_rows] @ z[:-1] - z[-1]
        scores.append(np.maximum(tau * r, (tau - 1) * r).mean())
    alpha = alphas[int(np.argmin(scores))]  # first alpha on ties
    z = solve(np.arange(n), alpha)
    obj = huber_obj(z, Phi, ys, tau, alpha / n, HUBER_EPS)[0]
    return alpha, float(pn @ z[:-1] + z[-1]) * sy + my, obj, (Phi, ys, my, sy)


def bench_lqr(config, groups, args, rng) -> dict:
    from pipeline.models.solvers.lqr import HUBER_EPS

    p = config.models.lqr
    qs, al = config.data.quantiles, tuple(float(a) for a in p.alphas)
    n_study = sum(len(g) for g in groups)
    picks = sample(groups, args.lqr_naive, rng)
    warm_up(config, "lqr", groups[0])
    task = partial(
        naive_lqr_quantile, alphas=al, D=p.rff_features, seed=config.seed, val=p.validation_size
    )
    times, sk_times, same, fgap, ogap, sk_fgap = [], [], [], [], [], []
    wall_n = 0.0
    for g, idx in zip(groups, picks, strict=True):
        if not idx.size:
            continue
        d = g.data
        ours = run_ours(config, "lqr", [g], [idx], args.lqr_task)[2][0]
        for j, i in enumerate(idx):
            keep = d["w"][i] > 0
            X, y, xn = d["X"][i][keep], d["y"][i][keep], d["X_new"][i][0]
            cpu, fcs, sk_fcs = 0.0, [], []
            for k, tau in enumerate(qs):
                c, wl, (a, fc, obj, (Phi, ys, _, _)) = timed(partial(task, X, y, xn, tau, "lbfgs"))
                cpu += c
                wall_n += wl
                fcs.append(fc)
                same.append(a == ours["alpha"][j][k])
                if same[-1]:  # our solution on the naive's objective
                    z = np.r_[ours["state"]["beta"][j][k], ours["state"]["gamma"][j][k]]
                    mine = huber_obj(z, Phi, ys, tau, a / len(ys), HUBER_EPS)[0]
                    ogap.append((mine - obj) / abs(obj))
                if len(sk_times) < args.lqr_sklearn * len(qs):
                    c2, _, (_, fc2, _, _) = timed(partial(task, X, y, xn, tau, "sklearn"))
                    sk_times.append(c2)
                    sk_fcs.append(fc2)
            times.append(cpu)
            fgap.append(np.abs(np.sort(fcs) - ours["pred"][j, 0, 0]))
            if sk_fcs:
                sk_fgap.append(np.abs(np.sort(sk_fcs) - ours["pred"][j, 0, 0]))
    full = sample(groups, args.lqr_ours, rng)
    cpu, wall, _ = run_ours(config, "lqr", groups, full, args.lqr_task)
    smp_cpu, _, _ = run_ours(config, "lqr", groups, picks, args.lqr_task)
    sk = np.array(sk_times).reshape(-1, len(qs)).sum(1) if sk_times else np.array([np.nan])
    fg = np.concatenate(fgap)
    return {
        "model": "lqr",
        "n_study": n_study,
        "tasks_per_fit": len(qs),
        "naive_fits": len(times),
        "naive_s": np.array(times),
        "naive_wall": wall_n,
        "ours_fits": sum(i.size for i in full),
        "ours_cpu": cpu,
        "ours_wall": wall,
        "ours_sample_cpu": smp_cpu,
        "sklearn_s": sk,
        "sklearn_fgap": float(np.max(np.concatenate(sk_fgap))) if sk_fgap else float("nan"),
        "agree": (
            f"same chosen alpha in {np.mean(same):.0%} of {len(same)} (fit, quantile); where "
            f"the same, max relative objective gap (ours - L-BFGS) / L-BFGS "
            f"{max(ogap) if ogap else float('nan'):+.1e}; max |forecast difference| "
            f"{fg.max():.2g} (median {np.median(fg):.1g}; HICP rate, pp)"
        ),
    }


# --- naive ensemble -------------------------------------------------------------------------


def bench_ensemble(config, panel, groups, args, rng) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))  # the reference loop is test code
    from ensemble_loop import fit_predict_member_loop

    from pipeline.models.plugins.registry import get_adapter
    from pipeline.models.solvers._nn_data import WindowData, check_nn_params
    from pipeline.models.solvers.common import pinball_per_quantile
    from pipeline.schema import COUNTRY, TIME, Y_RAW

    (g,) = groups
    e, qs, hs = config.models.ensemble_nn, config.data.quantiles, g.horizons
    spec = check_nn_params(
        quantiles=qs,
        units_per_layer=e.units_per_layer,
        learning_rate=e.learning_rate,
        epochs=args.epochs or e.epochs,
        batch_size=e.batch_size,
        patience=e.patience,
        parallel_models=e.parallel_models,
        seed=config.seed,
        validation_fraction=0.2,
        scale=config.data.scale,
    )
    pairs = rng.choice(len(g) * len(hs), size=args.ens_naive, replace=False)
    fits, his = pairs // len(hs), pairs % len(hs)
    mi = panel[TIME].dt.year * 12 + panel[TIME].dt.month - 1
    keys = zip(panel[COUNTRY].astype(str), mi, strict=True)
    actual = dict(zip(keys, panel[Y_RAW], strict=True))
    d = g.data
    naive, loss = [], []
    for b, hi in zip(fits, his, strict=True):
        ci, ti = np.nonzero(d["w"][b] > 0)
        new = np.nonzero(g.rows[b])[0]
        win = WindowData(
            X=d["X"][b][ci, ti],
            y=d["y"][b][ci, ti, hi],
            country=ci,
            X_new=d["X_new"][b][new],
            country_new=new,
            time=ti,
        )
        c, w, res = timed(lambda win=win: fit_predict_member_loop(win, spec, torch.device("cpu")))
        naive.append((c, w, int(res.epochs.sum())))
        loss.append((b, hi, new, res.pred))
    # ours: one network per origin (all horizons); the sampled origins plus random others up
    # to the pipeline's origins per task (Adapter.batch_fits), trained as one batched call
    adapter = get_adapter("ensemble_nn")
    G = min(args.ens_batch or getattr(adapter, "batch_fits", 1), len(g))
    picked = np.unique(fits)
    others = rng.permutation(np.setdiff1d(np.arange(len(g)), picked))
    batch = np.sort(np.r_[picked, others[: max(0, G - picked.size)]])
    ours_cpu = ours_wall = 0.0
    outs = {}
    for lo in range(0, batch.size, G):
        pl = payload(config, "ensemble_nn", g, batch[lo : lo + G])
        pl["params"] = {**pl["params"], "epochs": spec.epochs, "device": "cpu"}
        c, w, out = timed(lambda pl=pl: adapter.fit_batch(pl))
        ours_cpu, ours_wall = ours_cpu + c, ours_wall + w
        outs.update({int(b): (k, out) for k, b in enumerate(batch[lo : lo + G])})
    cmp, ours_epochs = [], []
    for b, hi, new, pred in loss:
        k, out = outs[int(b)]
        ours_epochs.append(int(out["states"][k]["epochs"].sum()))
        month = int(g.origin[b]) + hs[hi]
        yt = np.array([actual.get((g.countries[b][c], month), np.nan) for c in new])
        ok = np.isfinite(yt)
        mine = out["pred"][k][new, hi]
        cmp.append(
            (
                pinball_per_quantile(yt[ok], mine[ok], qs).mean(),
                pinball_per_quantile(yt[ok], pred[ok], qs).mean(),
            )
        )
    cmp = np.array(cmp)
    return {
        "model": "ensemble_nn",
        "n_study": len(g) * len(hs),
        "tasks_per_fit": 1,
        "naive_fits": len(naive),
        "naive_s": np.array([n[0] for n in naive]),
        "naive_wall": sum(n[1] for n in naive),
        # ours: per origin; one origin = len(hs) naive units (horizon, origin)
        "ours_fits": batch.size * len(hs),
        "ours_cpu": ours_cpu,
        "ours_wall": ours_wall,
        "ours_batch": G,
        "agree": (
            f"realized mean pinball over the sampled (horizon, origin)'s countries: ours "
            f"{cmp[:, 0].mean():.3f}, naive {cmp[:, 1].mean():.3f} (different networks: a "
            f"sanity check, not parity); member-epochs per training: naive "
            f"{[n[2] for n in naive]}, ours (same origins, all horizons, batched) {ours_epochs}"
        ),
    }


# --- report ---------------------------------------------------------------------------------


def summarize(results: list[dict], timings: dict, workers: int, source: str) -> str:
    lines = [
        "| model | fits in study (naive tasks) | naive: sample, CPU s / fit | naive: study CPU s "
        "(extrapolated) | ours: fits timed, CPU s / fit | ours: study CPU s | speed-up (CPU) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    tot_n = tot_o = wall_n = wall_o = 0.0
    for r in results:
        s = r["naive_s"]
        per, se = s.mean(), s.std(ddof=1) / np.sqrt(s.size) if s.size > 1 else float("nan")
        n_tot, n_se = per * r["n_study"], se * r["n_study"]
        o_per = r["ours_cpu"] / r["ours_fits"]
        o_tot = o_per * r["n_study"]
        tot_n, tot_o = tot_n + n_tot, tot_o + o_tot
        wall_n += r["naive_wall"] / s.size * r["n_study"]
        wall_o += r["ours_wall"] / r["ours_fits"] * r["n_study"]
        r.update(naive_total=n_tot, ours_total=o_tot)
        lines.append(
            f"| {r['model']} | {r['n_study']:,} ({r['n_study'] * r['tasks_per_fit']:,}) | "
            f"{s.size}: {per:.3g} | {n_tot:,.0f} ± {n_se:,.0f} | {r['ours_fits']:,}: "
            f"{o_per:.3g} | {o_tot:,.1f} | {n_tot / o_tot:,.0f}x |"
        )
    lines.append(
        f"| **whole study** | | | **{tot_n:,.0f}** | | **{tot_o:,.1f}** | "
        f"**{tot_n / tot_o:,.0f}x** |"
    )
    lines += [
        "",
        f"Wall clock in the same run, extrapolated the same way: naive {wall_n:,.0f} s, ours "
        f"{wall_o:,.1f} s, {wall_n / wall_o:,.0f}x (other jobs shared the 2 cores).",
    ]
    out = "\n".join(lines)
    stages = {k: v for k, v in timings.items() if k.startswith("train@")}
    if stages:
        rows = [
            "",
            "",
            f"Against the seed run's measured stage wall times ({source}, "
            f"{workers} workers; its runtime adds cluster start, keys, cache writes and "
            f"parquet to the solvers): naive = its extrapolated CPU / {workers} and ours = our "
            f"solver CPU / {workers}, as if perfectly parallel:",
            "",
            "| stage | status | measured wall s | ours solvers / workers, s | naive / workers, s "
            "| naive / measured |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for r in results:
            st = stages.get(f"train@{r['model']}")
            if st and st["status"] != "ok":
                rows.append(f"| train@{r['model']} | {st['status']} | - | - | - | - |")
            elif st:
                nv = r["naive_total"] / workers
                rows.append(
                    f"| train@{r['model']} | {st['status']} | {st['seconds']:.0f} | "
                    f"{r['ours_total'] / workers:,.1f} | {nv:,.0f} | {nv / st['seconds']:,.1f}x |"
                )
        ok = [r for r in results if stages.get(f"train@{r['model']}", {}).get("status") == "ok"]
        if len(ok) == len(results):
            meas = sum(stages[f"train@{r['model']}"]["seconds"] for r in results)
            nv = sum(r["naive_total"] for r in results) / workers
            ov = sum(r["ours_total"] for r in results) / workers
            whole = sum(v["seconds"] for v in timings.values())
            rows.append(
                f"| **all train stages** | ok | **{meas:.0f}** | {ov:,.1f} | {nv:,.0f} | "
                f"**{nv / meas:,.1f}x** |"
            )
            rows += [
                "",
                f"Every stage of that run ({', '.join(timings)}): {whole:.0f} s wall; the "
                f"naive train stages alone on the same {workers} workers: {nv:,.0f} s "
                f"({nv / whole:,.1f}x).",
            ]
        out += "\n".join(rows)
    return out


def write_section(text: str) -> None:
    from pipeline.io import write_text

    path = ROOT / "benchmarks" / "README.md"
    old = path.read_text()
    pattern = re.compile(re.escape(SECTION) + r".*?(?=^## |\Z)", re.S | re.M)
    text = text.rstrip() + "\n\n"
    new = pattern.sub(lambda _: text, old) if pattern.search(old) else old.rstrip() + "\n\n" + text
    write_text(path, new.rstrip() + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ar-naive", type=int, default=300, help="ar_qr fits timed naively")
    ap.add_argument("--ar-ours", type=int, default=0, help="ar_qr fits timed for ours (0 = all)")
    ap.add_argument("--ar-task", type=int, default=1024, help="ar_qr fits per task (seed probe)")
    ap.add_argument("--lqr-naive", type=int, default=30, help="lqr fits timed with L-BFGS")
    ap.add_argument("--lqr-sklearn", type=int, default=6, help="of those, also with sklearn L1")
    ap.add_argument("--lqr-ours", type=int, default=1024, help="lqr fits timed for ours")
    ap.add_argument("--lqr-task", type=int, default=256, help="lqr fits per task (seed probe)")
    ap.add_argument("--ens-naive", type=int, default=4, help="(horizon, origin) naive trainings")
    ap.add_argument(
        "--ens-batch", type=int, default=0, help="origins per ensemble call (0 = the pipeline's)"
    )
    ap.add_argument("--epochs", type=int, default=0, help="ensemble epochs (0 = seed's 1500)")
    ap.add_argument("--timings", default="studies/seed/logs/timings.json")
    ap.add_argument("--workers", type=int, default=2, help="workers of that seed run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write", action="store_true", help="update benchmarks/README.md")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        config, panel, groups = build(tmp)
        results = [bench_ar_qr(config, groups["ar_qr"], args, rng)]
        results.append(bench_lqr(config, groups["lqr"], args, rng))
        results.append(bench_ensemble(config, panel, groups["ensemble_nn"], args, rng))
    tpath = ROOT / args.timings
    timings = json.loads(tpath.read_text()) if tpath.exists() else {}
    elapsed, load1 = time.perf_counter() - t0, os.getloadavg()
    table = summarize(results, timings, args.workers, args.timings)
    lq = results[1]
    notes = [
        "Method: naive study CPU = mean naive CPU s per fit on a uniform random sample of the "
        "study's fits x the number of fits in the study (± one standard error of that mean x "
        "the count); ours = our CPU s per fit on the fits timed (random, ar_qr: all of them), "
        "run in the pipeline's task sizes (ar_qr 1024 and lqr 256 fits per call, as the seed "
        f"run's probe chose; ensemble_nn {results[2]['ours_batch']} origins per call, the "
        "adapter's batch_fits) x the same count. For ensemble_nn a "
        "fit in this table is a naive training, one (horizon, origin); ours trains the sampled "
        "origins, plus random others up to one task's worth, for all 4 horizons at once, so "
        "its time per origin is divided by 4. Speed-up = "
        "naive / ours, both measured in this one run, single-threaded.",
        "",
        "Agreement on the sample:",
        "",
    ]
    notes += [f"- {r['model']}: {r['agree']}." for r in results]
    sk = lq["sklearn_s"]
    notes.append(
        f"- lqr with scikit-learn's L1 QuantileRegressor (highs) instead of L-BFGS: "
        f"{np.nanmean(sk):.3g} CPU s / fit on {np.isfinite(sk).sum()} fits "
        f"(= {np.nanmean(sk) / (lq['ours_cpu'] / lq['ours_fits']):,.0f}x ours); a different "
        f"estimator (L1, sparse), max |forecast difference| from ours {lq['sklearn_fgap']:.2g}."
    )
    notes.append(
        f"- Ours on the naive sample alone (small batches: ar_qr {results[0]['naive_fits']}, "
        f"lqr {lq['naive_fits']} fits): ar_qr {results[0]['ours_sample_cpu'] / results[0]['naive_fits']:.3g}"
        f", lqr {lq['ours_sample_cpu'] / lq['naive_fits']:.3g} CPU s / fit."
    )
    out = (
        f"{table}\n\n" + "\n".join(notes) + f"\n\nRun: {elapsed:.0f} s wall; load average "
        f"{load0[0]:.2f} at start, {load1[0]:.2f} at end (2 cores)."
    )
    print(out)
    if args.write:
        cmd = ".venv/bin/python benchmarks/bench_baseline.py " + " ".join(sys.argv[1:])
        doc = __doc__.split("\n\n", 2)[2].strip()
        write_section(f"{SECTION}\n\nCommand: `{cmd.strip()}`\n\n{doc}\n\n{out}\n")


if __name__ == "__main__":
    main()
