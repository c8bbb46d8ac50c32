"""`python -m pipeline verify`: check every fit-cache shard's checksums (one per block of
entries), on demand.

A run trusts a stage whose inputs are unchanged without reading the cache
(pipeline/runtime/store/incremental.py) and checks the checksum of every shard whose contents it
uses; this command reads every shard of every model and heals what is damaged (the same
quarantine as a run: good entries rewritten, the shard moved to `models/<model>/damaged/`, its
fits refit by the next run).
"""

from __future__ import annotations

from pathlib import Path

from pipeline.runtime.store.fit_cache import SHARDS_DIR, FitCache


def verify_cache(cache_dir: Path) -> tuple[list[str], int]:
    """One line per model, and the number of damaged entries found (0: all good)."""
    lines, damaged = [], 0
    models = sorted(p.parent.name for p in Path(cache_dir).glob(f"*/{SHARDS_DIR}"))
    for model in models:
        report = FitCache(cache_dir, model).check()
        damaged += report.damaged
        status = (
            f"{len(report.damaged_shards)} damaged shards moved aside, "
            f"{report.damaged} fits to refit"
            if report.damaged_shards
            else "ok"
        )
        lines.append(f"{model}: {report.fits} fits checked, {status}")
    if not models:
        lines.append(f"no fit cache under {cache_dir}")
    return lines, damaged
