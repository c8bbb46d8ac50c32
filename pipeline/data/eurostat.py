"""Eurostat HICP data: the tidy CSV layout, Eurostat's bulk TSV layout, and the public API.

Bulk TSV (what the dissemination API returns with format=TSV) looks like

    freq,unit,coicop,geo\\TIME_PERIOD\t2024-12 \t2024-11
    M,RCH_A,CP00,AT\t2.0 \t1.9
    M,RCH_A,CP00,EL\t2.9 d\t:

with `:` for missing values and flags (`d`, `p`, `e`, ...) after the number. It becomes the
tidy layout: TIME, COUNTRY and one column per coicop named `{dataset}_{coicop}`.
"""

from __future__ import annotations

import gzip
import io
import re
import zlib
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from pipeline.config import DataConfig
from pipeline.data.errors import DataError
from pipeline.data.files import (
    NO_LIMITS,
    ReadLimits,
    check_source,
    open_guarded,
    read_csv_text,
    read_prefix,
)
from pipeline.data.tidy import parse_months
from pipeline.io import atomic_path

API_URL = "https://ec.europa.eu/eurostat/api/dissemination/sdmx/2.1/data/{dataset}/?format=TSV&compressed=true"
# The successor dataset keeps the layout; monthly rates of change have unit RCH_A (annual).
KNOWN_DATASETS = ("prc_hicp_manr", "prc_hicp_minr")
_VALUE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)?\s*([a-z ]*)$")


def load_eurostat(data: DataConfig, root: Path, limits: ReadLimits = NO_LIMITS) -> pd.DataFrame:
    """Read data.path (tidy CSV or bulk TSV); without a path, the cached or downloaded dataset."""
    if data.path is not None:
        path = Path(data.path) if Path(data.path).is_absolute() else root / data.path
        check_source(path, limits)
        if not path.exists():
            raise DataError(
                f"Eurostat file {path} does not exist; set data.path to the file "
                "(e.g. data/eurostat/hicp_manr.csv.gz, shipped in the repo) or data.path=null to download"
            )
        return read_eurostat_file(path, data.dataset, limits)
    return read_eurostat_file(download(data.dataset, root / data.raw_dir), data.dataset, limits)


def read_eurostat_file(
    path: Path, dataset: str = "prc_hicp_manr", limits: ReadLimits = NO_LIMITS
) -> pd.DataFrame:
    check_source(path, limits)
    if _is_bulk_tsv(path):
        return read_eurostat_tsv(path, dataset, limits)
    return read_csv_text(path, limits)


def read_eurostat_tsv(
    path: Path, dataset: str = "prc_hicp_manr", limits: ReadLimits = NO_LIMITS
) -> pd.DataFrame:
    """Parse a bulk TSV (plain or gzipped) into the tidy layout. Only `unit` RCH_A rows for rates.

    Read line by line through the guarded stream: a bad value stops the read at its line.
    """
    check_source(path, limits)
    try:
        with open_guarded(path, limits) as stream:
            records = _tsv_records(io.TextIOWrapper(stream, encoding="utf-8"), path, dataset)
    except (EOFError, gzip.BadGzipFile, zlib.error, UnicodeDecodeError) as error:
        raise DataError(
            f"{path} is truncated, corrupt or not UTF-8 text ({error}); copy or download it again"
        ) from None
    if not records:
        raise DataError(f"{path}: no monthly rows found")
    long = pd.DataFrame.from_records(records, columns=["TIME", "COUNTRY", "column", "value"])
    long["TIME"] = parse_months(long["TIME"], str(path))
    tidy = long.pivot_table(
        index=["TIME", "COUNTRY"], columns="column", values="value", aggfunc="first", dropna=False
    )
    tidy.columns.name = None
    return tidy.reset_index()


def _tsv_records(
    lines: Iterable[str], path: Path, dataset: str
) -> list[tuple[str, str, str, float]]:
    numbered = ((n, line) for n, line in enumerate(lines, start=1) if line.strip())
    first = next(numbered, None)
    if first is None:
        raise DataError(f"{path} is empty")
    header = first[1].rstrip("\r\n").split("\t")
    dims = header[0].split(",")
    if not dims or "\\" not in dims[-1]:
        raise DataError(
            f"{path} is not a Eurostat bulk TSV: the first header cell should look like "
            f"'freq,unit,coicop,geo\\TIME_PERIOD'; got {header[0]!r}"
        )
    dims[-1] = dims[-1].split("\\")[0]
    if "geo" not in dims:
        raise DataError(f"{path}: no 'geo' dimension in the header {header[0]!r}")
    periods = [cell.strip() for cell in header[1:]]
    records = []
    for number, line in numbered:
        cells = line.rstrip("\r\n").split("\t")
        keys = dict(zip(dims, cells[0].split(","), strict=False))
        if keys.get("freq", "M") != "M":
            continue
        if "unit" in keys and keys["unit"] not in ("RCH_A", "I05", "I15", "RCH_M"):
            continue
        coicop = keys.get("coicop", "CP00")
        unit = keys.get("unit", "RCH_A")
        column = f"{dataset}_{coicop}" if unit == "RCH_A" else f"{dataset}_{coicop}_{unit}"
        for period, cell in zip(periods, cells[1:], strict=False):
            records.append((period, keys["geo"], column, _parse_value(cell, path, number)))
    return records


def download(dataset: str, raw_dir: Path, timeout: float = 60.0) -> Path:
    """Download a dataset's bulk TSV once and cache it under `raw_dir`; reuse the cache after."""
    if dataset not in KNOWN_DATASETS:
        raise DataError(f"data.dataset must be one of {list(KNOWN_DATASETS)}; got {dataset!r}")
    target = raw_dir / f"{dataset}.tsv.gz"
    if target.exists():
        return target
    import urllib.error  # here, not at the top: only a download needs http and ssl (20 ms)
    import urllib.request

    url = API_URL.format(dataset=dataset)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            payload = response.read()
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        raise DataError(
            f"cannot download {dataset} from Eurostat ({error}); this machine looks offline. "
            f"Download {url} elsewhere and save it as {target}, or set data.path to a local file "
            "(e.g. data/eurostat/hicp_manr.csv.gz, shipped in the repo)"
        ) from None
    with atomic_path(target) as tmp:
        tmp.write_bytes(payload)
    return target


def _parse_value(cell: str, path: Path, line: int) -> float:
    cell = cell.strip()
    if cell.startswith(":") or cell == "":
        return float("nan")
    match = _VALUE.match(cell)
    if match is None or match.group(1) is None:
        raise DataError(
            f"{path}:{line}: cannot read value {cell!r} (expected a number, ':' or a number with a flag)"
        )
    return float(match.group(1))


def _is_bulk_tsv(path: Path) -> bool:
    """Sniff the first line of a bounded prefix (a device or a huge file is never read whole)."""
    head = read_prefix(path).decode("utf-8", errors="replace")
    first = head.split("\n", 1)[0]
    return "\\TIME_PERIOD" in first or "\\time" in first.lower()
