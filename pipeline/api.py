"""The Python API: `pipeline.backtest(...)` runs a study as `qpipe run` does and returns it.

Same composition (the project's ./conf, else the packaged one; or a `write-config` file), the
same validation, caching, resume, output-dir lock and progress as the command line, because it
is the same code (`pipeline.runner.run_study`). What the command line turns into exit code 2
and one line is raised as a `QpipeError` (ConfigError, DataError, OutputError, OutputDirBusy)
with that line as its message; exit code 1 (some fits failed) is `RunFailed`.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import ConfigError, OutputError, RunFailed

if TYPE_CHECKING:
    import pandas as pd

# where a `data=` DataFrame is written (under the run's output dir), so that `prepare` reads and
# fingerprints it like any panel file and a rerun with the same frame reuses every fit
PANEL_INPUT = Path("input") / "panel.parquet"


@dataclass(frozen=True)
class Result:
    """A finished backtest: the forecast table (the seed's schema, with ACTUAL), the dict of
    metrics.json, and the output dir holding every file of the run."""

    forecasts: pd.DataFrame
    metrics: dict[str, Any]
    output_dir: Path

    @classmethod
    def read(cls, output_dir: Path) -> Result:
        """The result a finished run left in `output_dir` (forecasts/all.parquet, metrics.json)."""
        import pandas as pd

        from pipeline.schema import conform_forecasts

        forecasts = conform_forecasts(pd.read_parquet(output_dir / "forecasts" / "all.parquet"))
        metrics = json.loads((output_dir / "metrics.json").read_text(encoding="utf-8"))
        return cls(forecasts=forecasts, metrics=metrics, output_dir=output_dir)


def backtest(
    overrides: Sequence[str] | None = None,
    *,
    config: str | Path | None = None,
    data: pd.DataFrame | None = None,
) -> Result:
    """Run the study that `qpipe run [--config FILE] overrides...` runs; return its result.

    overrides: Hydra overrides (["experiment=quick", "runtime.output_dir=studies/a"]).
    config: a complete config file (as `qpipe write-config` writes it) instead of conf/.
    data: a panel DataFrame (TIME, COUNTRY, value columns) instead of data.source/data.path;
    validated as a file would be.
    """
    from pipeline.runtime.store.run_lock import forget_held, last_held_output_dir

    forget_held()  # a full disk names this call's output dir, not an earlier call's
    try:
        return _backtest(overrides, config, data)
    except (OSError, sqlite3.OperationalError) as error:
        from pipeline.io import write_failure_message

        message = write_failure_message(error, last_held_output_dir())
        if message is None:
            raise
        raise OutputError(message) from None


def _backtest(
    overrides: Sequence[str] | None, config: str | Path | None, data: pd.DataFrame | None
) -> Result:
    from pipeline.config import validate
    from pipeline.config.compose import compose_dict, compose_file
    from pipeline.runner import run_study

    not_a_list = isinstance(overrides, str) or not isinstance(overrides, (Sequence, type(None)))
    if not_a_list or not all(isinstance(o, str) for o in overrides or ()):
        raise ConfigError("overrides", "a list of strings such as ['experiment=quick']", overrides)
    overrides = list(overrides or ())
    plain = compose_file(Path(config), overrides) if config is not None else compose_dict(overrides)
    panel = None
    if data is not None:
        panel = _checked_panel(data, plain["data"])
        output_dir = Path(plain["runtime"]["output_dir"]).resolve()
        plain["data"].update(source="panel", path=str(output_dir / PANEL_INPUT))
    study = validate(plain)
    with _script_not_rerun_by_spawn(_models_from_script(study)):
        code = run_study(study, panel=panel)
    output_dir = study.output_dir.resolve()
    if code != 0:
        raise RunFailed(
            f"some fits failed (forecasts/missing.parquet lists them; the log is under "
            f"{output_dir / 'logs'})",
            Result.read(output_dir),
        )
    return Result.read(output_dir)


def _models_from_script(study: Any) -> bool:
    """Whether a user model lives in the running script itself (`_target_: __main__.X`)."""
    models = study.models
    return any(models.get(n).target.startswith("__main__.") for n in models.user_models())


@contextlib.contextmanager
def _script_not_rerun_by_spawn(models_in_script: bool = False) -> Iterator[None]:
    """While the study runs, processes it spawns (the driver's child, Dask's workers) do not
    run the caller's script again.

    Python's `spawn` start method runs the parent's `__main__` script anew in every child
    (as `__mp_main__`), so a script that calls `backtest` at top level, as a notebook cell
    does, without `if __name__ == "__main__":`, would start the study again in each child: a
    lock error per child and no forecasts. Those children need nothing from the script (they
    run pipeline functions and user models by import path), so the script's `__main__` is
    given a spec named `__main__`, which spawn's preparation skips (as for `python -m`). A
    notebook or `python -c` has no script file and is left as it is, and so is a script that
    defines a model itself (`_target_: __main__.X`): the children need its import, so such a
    script must keep the guard, as multiprocessing asks of any script.
    """
    from importlib.machinery import ModuleSpec

    main = sys.modules.get("__main__")
    if (
        models_in_script
        or main is None
        or getattr(main, "__spec__", None) is not None
        or not hasattr(main, "__file__")
    ):
        yield
        return
    main.__spec__ = ModuleSpec("__main__", None)
    try:
        yield
    finally:
        main.__spec__ = None


def _checked_panel(data: object, settings: dict[str, Any]) -> pd.DataFrame:
    """The DataFrame checked as a panel file is (the same messages), before anything runs."""
    import pandas as pd

    from pipeline.data.errors import DataError
    from pipeline.data.tidy import check_tidy

    if not isinstance(data, pd.DataFrame):
        raise DataError(
            f"data= must be a pandas DataFrame with TIME, COUNTRY and value columns; "
            f"got {type(data).__name__}"
        )
    in_index = [n for n in ("TIME", "COUNTRY") if n in (data.index.names or ())]
    if in_index and not all(n in data.columns for n in in_index):
        raise DataError(
            f"the data= DataFrame holds {in_index} in its index, not as columns; pass "
            "data.reset_index()"
        )
    return check_tidy(
        data,
        settings["target"],
        settings.get("features") or [],
        "the data= DataFrame",
        settings.get("non_numeric", "error"),
        settings.get("max_abs_value"),
    )
