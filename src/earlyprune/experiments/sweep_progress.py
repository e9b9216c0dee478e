"""What a running sweep shows: cells done / running / failed and an estimate of the time left (ETA).

Whatever the executor, the sweep process sees each cell start and end (:mod:`.executors`) and tells this
class. Each cell that ends gets one line (on stdout when it finished, on stderr when it failed) ending with
the sweep's state, ``| 5/24 done, 2 running, 1 failed, ETA 1m40s``. On a terminal a status line under them
is redrawn in place at every event; elsewhere (a log file, a batch job) only plain lines are written.

The ETA is the time per ended cell so far (wall time, so parallel cells count once) times the cells left:
it assumes the cells left are like those that ended.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

from .config import RunConfig


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class SweepProgress:
    """The progress of ``total`` cells. ``tty`` None: whether ``out`` is a terminal."""

    def __init__(self, total: int, out: TextIO | None = None, err: TextIO | None = None, tty: bool | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.total = total
        self.out = out if out is not None else sys.stdout
        self.err = err if err is not None else sys.stderr
        self.tty = _isatty(self.out) if tty is None else tty
        self.clock = clock
        self.started_at = clock()
        self.done = 0
        self.failed = 0
        self.running = 0
        self._status_shown = False

    @property
    def ended(self) -> int:
        return self.done + self.failed

    def eta(self) -> float | None:
        """Seconds left, estimated from the cells ended so far; None before the first ends."""
        if not self.ended:
            return None
        return (self.clock() - self.started_at) / self.ended * (self.total - self.ended)

    def status(self) -> str:
        """``5/24 done, 2 running, 1 failed, ETA 1m40s``."""
        eta = self.eta()
        text = f"{self.done}/{self.total} done, {self.running} running, {self.failed} failed"
        if self.ended < self.total:
            text += ", ETA " + ("-" if eta is None else format_duration(eta))
        return text

    def cell_started(self, cell: RunConfig) -> None:
        self.running += 1
        self._redraw()

    def cell_finished(self, cell: RunConfig, result: str) -> None:
        """Cell ``cell`` finished with ``result`` (its metric as text)."""
        self.running = max(0, self.running - 1)
        self.done += 1
        self._line(self.out, f"[{self.ended}/{self.total}] {cell.network.model} {cell.pruning.method} "
                             f"s={cell.pruning.sparsity} seed={cell.seed}: {result} "
                             f"({self.clock() - self.started_at:.0f}s)")

    def cell_failed(self, cell: RunConfig, description: str, error: str) -> None:
        self.running = max(0, self.running - 1)
        self.failed += 1
        self._line(self.err, f"[{self.ended}/{self.total}] cell {cell.key()} FAILED ({description}): {error}")

    def close(self) -> None:
        """Clear the terminal's status line (plain output has none)."""
        if self._status_shown:
            self.out.write("\r\033[K")
            self.out.flush()
            self._status_shown = False

    def _line(self, stream: TextIO, text: str) -> None:
        if self.tty:
            self.close()
            print(text, file=stream, flush=True)
            self._redraw()
        else:
            print(f"{text} | {self.status()}", file=stream, flush=True)

    def _redraw(self) -> None:
        if self.tty:
            self.out.write(f"\r\033[K{self.status()}")
            self.out.flush()
            self._status_shown = True


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
