"""Train's start (issue 18 item 7): the panel read as the columns train uses with COUNTRY as
the file's own dictionary, the plan named by the columns its groups read, and a kept plan
checked by the zip's CRC-32 of every array it reads (no sha256 besides). Each is the same plan
as before, and damage to a kept plan is still found before any of its keys is used."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import test_plan_cache
from conftest import SMALL_STUDY, make_config
from test_tasks import PANEL

from pipeline.data.prepared import PanelColumns, load_panel_columns
from pipeline.io import write_parquet
from pipeline.models.plugins.registry import adapter_for
from pipeline.runtime.fits import plan_cache, shared_plan
from pipeline.runtime.fits.fit_groups import build_groups, plan_columns
from pipeline.runtime.fits.fit_windows import country_grid
from pipeline.schema import COUNTRY, PANEL_FILE, TIME

ROOT = Path(__file__).resolve().parents[1]


plans = test_plan_cache.plans  # the plan cache in tmp_path (a fixture)
_same = test_plan_cache._same  # two plans' groups equal, keys included


def _written(frame: pd.DataFrame, out: Path) -> Path:
    write_parquet(out / PANEL_FILE, frame)  # as prepare writes it
    return out


def test_train_reads_its_columns_and_plans_what_the_whole_panel_plans(tmp_path: Path) -> None:
    config = make_config(copy.deepcopy(SMALL_STUDY))
    out = _written(PANEL, tmp_path)
    whole = load_panel_columns(out)
    for model in ("ar_qr", "rw", "ensemble_nn"):  # per-country, and pooled
        adapter = adapter_for(config, model)
        read = plan_columns(config, adapter)
        some = load_panel_columns(out, [*read, "y_raw", "not_a_column"])
        assert some.columns == [COUNTRY, TIME, *read, "y_raw"]
        assert pa.types.is_dictionary(some.table.schema.field(COUNTRY).type)
        _same(build_groups(some, config, adapter), build_groups(PANEL, config, adapter))
        digests = {
            shared_plan.panel_digest(p, [COUNTRY, TIME, *read]) for p in (some, whole, PANEL)
        }
        assert len(digests) == 1
        grid = country_grid(some, ["y_raw"])
        assert grid[2].tobytes() == country_grid(PANEL, ["y_raw"])[2].tobytes()


def test_country_codes_from_the_files_dictionary_are_the_rows_distinct_values(
    tmp_path: Path,
) -> None:
    """A dictionary may hold values no row has, and each chunk its own dictionary."""
    rows = ["DE", "AT", "DE", "FR", "AT", "DE"]
    chunks = [
        pa.DictionaryArray.from_arrays(pa.array([2, 0, 2], pa.int32()), ["AT", "XX", "DE"]),
        pa.DictionaryArray.from_arrays(pa.array([1, 0, 2], pa.int32()), ["AT", "FR", "DE"]),
    ]
    table = pa.table({COUNTRY: pa.chunked_array(chunks)})
    names, codes = PanelColumns(table).codes(COUNTRY)
    want_names, want_codes = np.unique(np.array(rows), return_inverse=True)
    assert names == want_names.tolist() == ["AT", "DE", "FR"]
    assert codes.dtype == np.int64 and codes.tolist() == want_codes.tolist()
    plain = PanelColumns(pa.table({COUNTRY: pa.array(rows, pa.large_string())}))
    assert plain.codes(COUNTRY)[0] == names and plain.codes(COUNTRY)[1].tolist() == codes.tolist()
    # a file whose COUNTRY was written as a dictionary (a pandas category) with an unused value
    frame = pd.DataFrame({COUNTRY: pd.Categorical(rows, categories=["ZZ", "FR", "DE", "AT"])})
    pq.write_table(pa.Table.from_pandas(frame), tmp_path / "p.parquet")
    with pq.ParquetFile(tmp_path / "p.parquet", read_dictionary=[COUNTRY]) as file:
        names_read, codes_read = PanelColumns(file.read()).codes(COUNTRY)
    assert names_read == names and codes_read.tolist() == codes.tolist()


def test_the_plan_is_named_by_the_columns_its_groups_read(plans: Path) -> None:
    """A column the groups do not read (the actuals, another model's features) leaves the
    plan's name, so a kept plan is reused; one they read names another plan."""
    config = make_config(copy.deepcopy(SMALL_STUDY))
    adapter = adapter_for(config, "rw")
    read = plan_columns(config, adapter)
    unread = next(c for c in PANEL.columns if c not in {COUNTRY, TIME, *read})
    shared_plan.fit_groups(PANEL, config, adapter)
    assert len(list(plans.glob("*.npz"))) == 1
    other = PANEL.assign(**{unread: PANEL[unread] + 0.5})
    _same(shared_plan.fit_groups(other, config, adapter), build_groups(other, config, adapter))
    assert len(list(plans.glob("*.npz"))) == 1  # the same plan, loaded
    changed = PANEL.assign(**{read[0]: PANEL[read[0]].where(PANEL.index != 30, -1.0)})
    _same(shared_plan.fit_groups(changed, config, adapter), build_groups(changed, config, adapter))
    assert len(list(plans.glob("*.npz"))) == 2


def _members(path: Path) -> dict[str, tuple[int, int]]:
    """Each array's (start, size) of its bytes (the .npy header and data) in a stored zip."""
    import zipfile

    found = {}
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            assert info.compress_type == zipfile.ZIP_STORED
            with open(path, "rb") as handle:
                handle.seek(info.header_offset + 26)
                n, m = (int.from_bytes(handle.read(2), "little") for _ in range(2))
            found[info.filename] = (info.header_offset + 30 + n + m, info.file_size)
    return found


@pytest.mark.parametrize("where", ["header", "data"])
def test_damage_to_any_array_of_a_kept_plan_is_found_and_the_plan_rebuilt(
    plans: Path, where: str
) -> None:
    config = make_config(copy.deepcopy(SMALL_STUDY))
    adapter = adapter_for(config, "ar_qr")
    built = build_groups(PANEL, config, adapter)
    shared_plan.fit_groups(PANEL, config, adapter)
    (entry,) = plans.glob("*.npz")
    intact = entry.read_bytes()
    members = _members(entry)
    assert {"0_country.npy", "0_origin.npy", "0_keys.npy", "0_lead.npy"} <= set(members)
    assert not any("checksum" in m for m in members)  # format 4: the CRC-32s alone
    for member, (start, size) in members.items():
        at = start + (20 if where == "header" else size - 5)  # in the dict, or the last bytes
        raw = bytearray(intact)
        raw[at] ^= 0x01
        entry.write_bytes(bytes(raw))
        part = member.endswith(("_country.npy", "_origin.npy", "_keys.npy"))
        # the parts are what train, probe and assemble read; the basis what the next plan reads
        assert (plan_cache.load(entry.stem) is None) == part, member
        if entry.exists():
            assert plan_cache.load_entry(entry.stem) is None, member
        assert not entry.exists(), member  # removed: the next stage builds it again
        _same(shared_plan.fit_groups(PANEL, config, adapter), built)  # built and kept again
        _same(shared_plan.fit_groups(PANEL, config, adapter), built)  # and loaded
        assert entry.exists()


def test_parts_that_do_not_match_are_not_used(plans: Path) -> None:
    keys = np.frombuffer(bytes(range(64)), dtype="S32")
    plan_cache.save("ok", [(np.arange(2), np.arange(2), keys)])
    (loaded,) = plan_cache.load("ok") or []
    assert loaded[2].tobytes() == keys.tobytes()
    # well-formed entries whose parts disagree (not written by save): refused, removed
    for country, keys_of in ((np.arange(3), np.uint8), (np.arange(2), np.float64)):
        np.savez(
            plans / "bad.npz",
            **{"0_country": country, "0_origin": np.arange(2)},
            **{"0_keys": np.zeros((2, 32), keys_of)},
        )
        assert plan_cache.load("bad") is None and not (plans / "bad.npz").exists()


def test_the_panel_and_the_plan_are_read_without_pyarrow_compute(tmp_path: Path) -> None:
    """pyarrow.compute costs ~0.06 CPU-s to import: the plan does not need it (the table's
    gathers may)."""
    out = _written(PANEL, tmp_path / "study")
    script = f"""
import sys
from pathlib import Path
from pipeline.data.prepared import load_panel_columns
from pipeline.runtime.fits.fit_groups import plan_columns
from pipeline.runtime.fits.shared_plan import panel_digest
from pipeline.runtime.fits.fit_windows import country_grid
from pipeline.schema import COUNTRY, TIME
panel = load_panel_columns(Path({str(out)!r}), ["y", "y_lead1"])
panel_digest(panel, [COUNTRY, TIME, "y", "y_lead1"])
country_grid(panel, ["y", "y_lead1"])
assert "pyarrow.compute" not in sys.modules, "pyarrow.compute imported"
assert "pandas" not in sys.modules, "pandas imported"
"""
    subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=True)


def test_groups_share_the_studys_grid_and_read_what_a_copy_of_their_columns_gives() -> None:
    """A per-country group keeps the study's one grid and the columns it reads (a copy per
    group cost ~230 MB at 10M fits): its windows and task parts are those of the copy."""
    import dataclasses

    config = make_config(copy.deepcopy(SMALL_STUDY))
    for model in ("ar_qr", "rw"):
        groups = build_groups(PANEL, config, adapter_for(config, model))
        grids = {id(g.data.grid) for g in groups}
        assert len(grids) == 1 and all(g.data.columns is not None for g in groups[1:])
        for g in groups:
            copied = dataclasses.replace(g.data, grid=g.data.values(), columns=None)
            for index in (np.arange(len(g)), np.arange(len(g))[::3][::-1]):
                for mine, theirs in (
                    (g.data.take(index), copied.take(index)),
                    (g.data.part(index), copied.part(index)),
                ):
                    assert mine.keys() == theirs.keys()
                    for k in mine:
                        a, b = np.asarray(mine[k]), np.asarray(theirs[k])
                        assert a.dtype == b.dtype and a.shape == b.shape, (model, k)
                        assert a.tobytes() == b.tobytes(), (model, k)


def test_a_panel_without_a_column_train_reads_says_which(tmp_path: Path) -> None:
    out = _written(PANEL.drop(columns=[COUNTRY, "y_lead1"]), tmp_path)
    panel = load_panel_columns(out, ["y", "y_lead1"])
    with pytest.raises(ValueError, match=r"lacks columns \['COUNTRY', 'y_lead1'\]"):
        country_grid(panel, ["y", "y_lead1"])
