"""What train's tasks carry per fit, and what moving them costs the driver and scheduler.

For the rw study of N countries (N x 912 fits; prepared into OUT when it is not), train's tasks
of <= 65,536 fits: prints each payload and result entry's bytes per fit (arrays, and pickle
protocol 5's stream for the rest, as the client sends them; a shard's npz members apart),
then holds a LocalCluster of 2 workers (its scheduler in this process) where the tasks'
results are computed once and kept, and times R rounds of the data movement alone: the
payloads made and relayed through the scheduler to a no-op task, the results gathered direct
from the workers, decoded (worker.shard_arrays) and their shards written
(FitCache.write_encoded) into SCRATCH. Per round: this process's CPU seconds (main thread,
client IO loop, scheduler), its main thread's, and the wall.

Runs on any tree since the shard format 3 (run it with that tree on PYTHONPATH, alternating
trees: the numbers are CPU seconds of one process).

Usage: python benchmarks/bench_task_bytes.py N OUT SCRATCH [R]
(issue 18, "Results and payloads of fewer bytes": 1100, R 5)
"""

from __future__ import annotations

import inspect
import io
import json
import os
import pickle
import shutil
import statistics
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("DASK_DISTRIBUTED__CLIENT__DIRECT_TO_WORKERS", "True")


def _bytes(value: Any) -> int:
    """Bytes on the wire: an array's own, anything else pickle protocol 5's (buffers apart)."""
    if isinstance(value, np.ndarray):
        return value.nbytes
    buffers: list[pickle.PickleBuffer] = []
    head = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    return len(head) + sum(b.raw().nbytes for b in buffers)


def _per_fit(entries: dict[str, Any], fits: int, prefix: str = "") -> dict[str, float]:
    """Bytes per fit of each entry (nested dicts and a shard's npz members opened up)."""
    out: dict[str, float] = {}
    for name, value in entries.items():
        if name == "npz":
            with zipfile.ZipFile(io.BytesIO(value)) as npz:
                for info in npz.infolist():
                    out[f"{prefix}npz:{info.filename}"] = info.file_size / fits
        elif isinstance(value, dict) and name not in ("params", "layout"):
            out.update(_per_fit(value, fits, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = _bytes(value) / fits
    return {k: round(v, 2) for k, v in out.items() if v >= 0.01}


def noop(payload: dict[str, Any]) -> int:
    return 0


def main() -> None:
    import bench_scale as bs
    from distributed import Client, LocalCluster, wait

    from pipeline.config import validate
    from pipeline.config.compose import compose_dict
    from pipeline.data.prepared import load_panel_columns
    from pipeline.models.plugins.registry import adapter_for
    from pipeline.runtime.execute.worker import run_task, shard_arrays
    from pipeline.runtime.fits.shared_plan import fit_groups
    from pipeline.runtime.fits.tasks import CountryText, make_tasks, task_payload
    from pipeline.runtime.store.fit_cache import FitCache
    from pipeline.runtime.store.shard_format import BLOCK

    n, out, scratch = int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    repeats = int(sys.argv[4]) if len(sys.argv) > 4 else 5
    config = validate(compose_dict(bs.rw_overrides(n, out)))
    if not (out / "prepared").exists():
        from pipeline.stages.prepare import prepare

        prepare(config, Path.cwd())
    adapter = adapter_for(config, "rw")
    groups = fit_groups(load_panel_columns(out), config, adapter)
    tasks = make_tasks(groups, [np.arange(len(g)) for g in groups], 65536)
    fits = sum(t.index.size for t in tasks)
    keyless = "keys" in inspect.signature(task_payload).parameters  # format 4's trees

    def payloads() -> list[dict[str, Any]]:
        countries: dict[int, CountryText] = {}
        made = []
        for t in tasks:
            g = groups[t.group]
            countries.setdefault(t.group, CountryText(g))
            kw = {"keys": False} if keyless else {}
            p = task_payload(
                g, t.index, params={}, quantiles=config.data.quantiles, seed=config.seed,
                extra=adapter.payload, compact=True, countries=countries[t.group], **kw,
            )  # fmt: skip
            p["shard_block"] = BLOCK
            made.append(p)
        return made

    first = tasks[0].index.size
    payload = payloads()[0]
    result = run_task(payload)
    print(json.dumps({"task_fits": first, "payload": _per_fit(payload, first)}))
    print(json.dumps({"task_fits": first, "result": _per_fit(result, first)}))
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        held = [client.submit(run_task, p, pure=False) for p in payloads()]
        wait(held)
        sizes = [_bytes(p) for p in payloads()]

        def one_round(rep: int) -> int:
            cache = FitCache(scratch / f"c{rep}", "rw")
            sent = [client.submit(noop, p, pure=False) for p in payloads()]
            wait(sent)
            for t, res in zip(tasks, client.gather(held, direct=True), strict=True):
                r = shard_arrays(res)
                g = groups[t.group]
                keys = g.key_bytes()[t.index[np.asarray(r["index"], dtype=np.int64)]]
                shard = r["shard"]
                if keyless:
                    cache.write_encoded(keys, shard, "x")
                else:  # format 3: the worker's checksums, made over the payload's keys
                    cache.write_encoded(keys, shard["names"], shard["npz"], shard["sums"], "x")
            for f in sent:
                f.release()
            disk = sum(p.stat().st_size for p in cache.root.rglob("*") if p.is_file())
            shutil.rmtree(scratch / f"c{rep}")
            return disk

        one_round(-1)  # warm: the workers' imports, the connections
        cpu, main_cpu, wall = [], [], []
        disk = 0
        for rep in range(repeats):
            t0, m0, w0 = time.process_time(), time.thread_time(), time.perf_counter()
            disk = one_round(rep)
            cpu.append(time.process_time() - t0)
            main_cpu.append(time.thread_time() - m0)
            wall.append(time.perf_counter() - w0)
        got = client.gather(held, direct=True)
        result_b = sum(_bytes(r) for r in got)
    print(
        json.dumps(
            {
                "fits": fits,
                "tasks": len(tasks),
                "payload_B_per_fit": round(sum(sizes) / fits, 1),
                "result_B_per_fit": round(result_b / fits, 1),
                "cache_B_per_fit": round(disk / fits, 1),
                "cpu_s": [round(c, 3) for c in cpu],
                "main_thread_cpu_s": [round(c, 3) for c in main_cpu],
                "wall_s": [round(w, 2) for w in wall],
                "median_cpu_s": round(statistics.median(cpu), 3),
                "median_main_thread_cpu_s": round(statistics.median(main_cpu), 3),
                "load": round(os.getloadavg()[0], 2),
            }
        )
    )


if __name__ == "__main__":  # the LocalCluster's workers spawn: they import this module
    main()
