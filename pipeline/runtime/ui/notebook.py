"""The progress bar inside a Jupyter notebook: one output updated in place.

A kernel's stderr is not a TTY, so the terminal's rich bar stays off there, and rich's live
display in Jupyter needs ipywidgets. IPython's own display machinery (`display_id`, present in
every kernel) needs nothing more: an HTML <progress> bar with a text line for plain frontends.
"""

from __future__ import annotations

import html
import sys
import threading
import time
from typing import Any

_MIN_INTERVAL_S = 0.25  # redraws at most this often (each one is a message to the frontend)
# Models training side by side draw from their own threads; the kernel's message socket is
# not thread-safe (two bars sent at once reached the notebook as one output of both halves).
_DRAWING = threading.Lock()


def in_notebook() -> bool:
    """True inside a Jupyter kernel (IPython's ZMQ shell: notebooks, JupyterLab, VS Code)."""
    ipython = sys.modules.get("IPython")  # never imported here: a kernel has it loaded
    shell = ipython.get_ipython() if ipython is not None else None
    return type(shell).__name__ == "ZMQInteractiveShell"


class _Bar:
    """What the notebook shows: a <progress> element, or the same facts as one text line."""

    def __init__(self, model: str, done: int, total: int, rate: float, failed: int) -> None:
        self.model, self.done, self.total = model, done, total
        self.rate, self.failed = rate, failed

    def _facts(self) -> str:
        eta = (self.total - self.done) / self.rate if self.rate > 0 else float("nan")
        return (
            f"{self.done}/{self.total} fits, {self.rate:.1f} fits/s, failed {self.failed}, "
            f"ETA {eta:.0f} s"
        )

    def __repr__(self) -> str:
        return f"{self.model}: {self._facts()}"

    def _repr_html_(self) -> str:
        return (
            f"<b>{html.escape(self.model)}</b> "
            f'<progress value="{self.done}" max="{max(self.total, 1)}"></progress> '
            f"{html.escape(self._facts())}"
        )


class NotebookBar:
    """A model's train progress as one notebook output, redrawn in place."""

    def __init__(self, model: str, total: int) -> None:
        from IPython.display import display

        self.model, self.total = model, total
        self.last = 0.0
        with _DRAWING:
            self.handle: Any = display(_Bar(model, 0, total, 0.0, 0), display_id=True)

    def update(self, done: int, rate: float, failed: int, final: bool = False) -> None:
        now = time.monotonic()
        if final or done >= self.total or now - self.last >= _MIN_INTERVAL_S:
            self.last = now
            with _DRAWING:
                self.handle.update(_Bar(self.model, done, self.total, rate, failed))
