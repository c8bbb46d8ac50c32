"""Every quantity docs/results_notes.md quotes, printed from a finished study's tables, so that
the hand-written notes can be checked against a new `make study` in one read.

    .venv/bin/python benchmarks/results_notes_numbers.py studies/seed_calibrated

Pooled figures are printed two ways (weighted by each cell's N, and the plain mean of the
horizon x quantile cells), because the notes predate a stated convention; the calibration
sensitivity table is benchmarks/calibration_sensitivity.py's and is not repeated here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

HOLM = {"P_UC": "P_UC_HOLM", "P_CC": "P_CC_HOLM", "P_DQ": "P_DQ_HOLM"}


def pooled(table: pd.DataFrame, column: str) -> pd.Series:
    """`column` per model, each cell weighted by its N."""
    weighted = table.assign(W=table[column] * table["N"]).groupby("MODEL")
    return weighted["W"].sum() / weighted["N"].sum()


def report(study: Path) -> list[str]:
    t = {
        p.stem: (lambda f: f[f["PERIOD"] == "all"])(pd.read_parquet(p))
        for p in sorted((study / "reports/tables").glob("*.parquet"))
    }
    pin, out = t["pinball"], []
    weighted, plain = pooled(pin, "PINBALL"), pin.groupby("MODEL")["PINBALL"].mean()
    out.append("pooled pinball (N-weighted | cell mean); _cal against its raw model (N-weighted)")
    for m in weighted.index:
        raw = m.removesuffix("_cal")
        ratio = f"  cal/raw {weighted[m] / weighted[raw]:.4f}" if m != raw else ""
        out.append(f"  {m:16s} {weighted[m]:.3f} | {plain[m]:.3f}{ratio}")
    by_h = pin.groupby(["HORIZON", "MODEL"])["PINBALL"].mean().unstack()
    for h in by_h.index:
        order = by_h.loc[h].sort_values()
        out.append(f"h={h}: " + ", ".join(f"{m} {v:.3f}" for m, v in order.items()))
    out.append("central 80% interval coverage over horizons:")
    for m, g in t["interval"].groupby("MODEL"):
        out.append(f"  {m:16s} {g['COVERAGE'].min():.0%} .. {g['COVERAGE'].max():.0%}")
    tests = t["coverage_tests"]
    cal = tests[tests["MODEL"].str.endswith("_cal")]
    for q in (0.1, 0.9):
        hits = cal[cal["QUANTILE"] == q]["HIT_RATE"]
        out.append(f"_cal hit rates at q{q}: {hits.min():.2f} .. {hits.max():.2f}")
    above = 1 - tests[(tests["MODEL"] == "qrf") & (tests["QUANTILE"] == 0.9)]["HIT_RATE"].mean()
    out.append(f"qrf: outcomes above q0.9, mean over horizons: {above:.0%}")
    out.append("coverage-test rejections at 5% (raw / after Holm) per model:")
    for m, g in tests.groupby("MODEL"):
        counts = [
            f"{c} {int((g[c] < 0.05).sum())}/{int((g[h] < 0.05).sum()) if h in g else '-'}"
            for c, h in HOLM.items()
        ]
        out.append(f"  {m:16s} " + "  ".join(counts) + f"  of {len(g)}")
    dm = t["dm"]
    out.append(f"DM vs the benchmark: {int((dm['P_VALUE'] < 0.05).sum())} of {len(dm)} raw")
    if "P_HOLM" in dm:
        held = dm[dm["P_HOLM"] < 0.05].sort_values(["HORIZON", "MODEL"])
        out.append(f"  {len(held)} after Holm:")
        for r in held.itertuples():
            side = "better" if r.MEAN_DIFF < 0 else "worse"
            out.append(
                f"    h={r.HORIZON} {r.MODEL} {side} (p={r.P_VALUE:.4f}, Holm {r.P_HOLM:.4f})"
            )
        lost = dm[(dm["P_VALUE"] < 0.05) & (dm["P_HOLM"] >= 0.05)].sort_values(["HORIZON", "MODEL"])
        out.append(
            "  raw only: " + ", ".join(f"{r.MODEL} h={r.HORIZON}" for r in lost.itertuples())
        )
    for h, g in t["mcs"].groupby("HORIZON"):
        out.append(f"MCS h={h}: " + ", ".join(sorted(g[g["IN_MCS"]]["MODEL"])))
    dec = t["pinball_decomposition"]
    out.append("decomposition: miscalibration, discrimination (N-weighted | cell mean)")
    mis, dis = pooled(dec, "MISCALIBRATION"), pooled(dec, "DISCRIMINATION")
    mis_p = dec.groupby("MODEL")["MISCALIBRATION"].mean()
    dis_p = dec.groupby("MODEL")["DISCRIMINATION"].mean()
    for m in mis.index:
        out.append(f"  {m:16s} {mis[m]:.3f} | {mis_p[m]:.3f}   {dis[m]:.3f} | {dis_p[m]:.3f}")
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2 or not (Path(sys.argv[1]) / "reports/tables").is_dir():
        print(
            "usage: results_notes_numbers.py STUDY_OUTPUT_DIR (with reports/tables/)",
            file=sys.stderr,
        )
        sys.exit(2)
    print("\n".join(report(Path(sys.argv[1]))))
