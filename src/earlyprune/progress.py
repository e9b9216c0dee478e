"""Progress of long loops (training steps, pruning rounds): a bar on a terminal, plain lines elsewhere.

On a terminal :func:`progress` gives a tqdm bar. Off a terminal (``nohup``, CI, a cluster job's log file),
where a bar would print nothing readable until the end, it gives :class:`LineProgress`: one plain line at
every 10% of the loop, with the elapsed time and an ETA, e.g.::

    snip 0.98: 40% (600/1500) epoch 4, loss 0.412; elapsed 1m02s, ETA 1m33s

and, for training, one line per epoch with its metrics as soon as it ends. ``enabled=False`` gives
nothing; ``True`` a bar even off a terminal. Short loops stay quiet: a loop given ``min_seconds`` shows
nothing until it has run that long (pruning rounds use it, so only a slow SynFlow or iterative schedule
reports its rounds).

:func:`default` sets what ``enabled=None`` means inside a block (``earlyprune run``'s ``progress``
setting; sweeps and the demo run with progress off), for the loops deep inside the library.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import time
from typing import Any, Iterable, Iterator, TextIO

#: Pruning rounds report progress only once they have run this long (a quick prune stays silent).
ROUNDS_QUIET_SECONDS = 5.0

_DEFAULT: contextvars.ContextVar[bool | None] = contextvars.ContextVar("earlyprune_progress", default=None)


@contextlib.contextmanager
def default(enabled: bool | None) -> Iterator[None]:
    """Inside the block, loops given ``enabled=None`` show progress as ``enabled`` says (None: by terminal)."""
    token = _DEFAULT.set(enabled)
    try:
        yield
    finally:
        _DEFAULT.reset(token)


def duration(seconds: float) -> str:
    """``75.2`` -> ``"1m15s"``, ``3725`` -> ``"1h02m"``, ``4.2`` -> ``"4.2s"``."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    seconds = round(seconds)
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class LineProgress:
    """Plain progress lines for a loop of ``total`` steps: at every ``every`` (10%) of it, once
    ``min_seconds`` have passed, with elapsed time and ETA; :meth:`write` adds a line of its own."""

    def __init__(self, total: int, description: str, stream: TextIO | None = None, every: float = 0.1,
                 min_seconds: float = 0.0, clock=time.perf_counter):
        self.total, self.description = max(0, int(total)), description
        self.stream = stream if stream is not None else sys.stderr
        self.every, self.min_seconds, self.clock = every, min_seconds, clock
        self.done = 0
        self.started = clock()
        self._reported = 0  # the last multiple of `every` reached
        self._postfix = ""

    def update(self, n: int = 1) -> None:
        self.done += n
        if not self.total:
            return
        reached = int(min(self.done, self.total) / self.total / self.every + 1e-9)
        if reached <= self._reported:
            return
        self._reported = reached
        elapsed = self.clock() - self.started
        if elapsed < self.min_seconds:
            return
        eta = elapsed / self.done * max(0, self.total - self.done)
        extra = f" {self._postfix};" if self._postfix else ""
        self.write(f"{self.description}: {100 * self.done / self.total:.0f}% ({self.done}/{self.total}){extra} "
                   f"elapsed {duration(elapsed)}, ETA {duration(eta)}")

    def set_postfix(self, refresh: bool = False, **values: Any) -> None:
        """Extra values shown on the next line (as tqdm's ``set_postfix``)."""
        self._postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def write(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def close(self) -> None:
        pass


class _Bar:
    """tqdm with :meth:`write` printing above the bar."""

    def __init__(self, total: int, description: str, min_seconds: float):
        from tqdm.auto import tqdm

        self._tqdm = tqdm
        self.bar = tqdm(total=total or None, desc=description, leave=False, dynamic_ncols=True, delay=min_seconds)

    def update(self, n: int = 1) -> None:
        self.bar.update(n)

    def set_postfix(self, refresh: bool = False, **values: Any) -> None:
        self.bar.set_postfix(refresh=refresh, **values)

    def write(self, line: str) -> None:
        self._tqdm.write(line, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()


def progress(enabled: bool | None, total: int, description: str, min_seconds: float = 0.0,
             stream: TextIO | None = None) -> LineProgress | _Bar | None:
    """A progress reporter for ``total`` steps: None when ``enabled`` is False (or None under
    ``default(False)``), a bar on a terminal (or when True), plain lines otherwise."""
    if enabled is None:
        enabled = _DEFAULT.get()
    if enabled is False:
        return None
    stream = stream if stream is not None else sys.stderr
    if enabled or _isatty(stream):
        return _Bar(total, description, min_seconds)
    return LineProgress(total, description, stream=stream, min_seconds=min_seconds)


def epoch_summary(record: Any, epochs: int, description: str = "") -> str:
    """One epoch of :func:`earlyprune.train.train` as a log line: ``snip 0.98: epoch 3/20: train loss 0.412,
    accuracy 0.9120; test loss 0.301, accuracy 0.9233; lr 0.1; 12.3s``."""
    name = record.metric_name
    parts = [f"train loss {record.train_loss:.4g}"]
    if record.train_metric is not None:
        parts[-1] += f", {name} {record.train_metric:.4f}"
    if record.test_loss is not None:
        parts.append(f"test loss {record.test_loss:.4g}" + (f", {name} {record.test_metric:.4f}"
                                                            if record.test_metric is not None else ""))
    parts += [f"lr {record.lr:.3g}", duration(record.seconds)]
    prefix = f"{description}: " if description else ""
    return f"{prefix}epoch {record.epoch}/{epochs}: " + "; ".join(parts)


def rounds(items: Iterable[Any], description: str, min_seconds: float | None = None) -> Iterator[Any]:
    """Iterate ``items`` (pruning rounds), reporting progress once the loop has run ``min_seconds``
    (default :data:`ROUNDS_QUIET_SECONDS`)."""
    items = list(items)
    min_seconds = ROUNDS_QUIET_SECONDS if min_seconds is None else min_seconds
    reporter = progress(None, len(items), description, min_seconds=min_seconds) if len(items) > 1 else None
    try:
        for item in items:
            yield item
            if reporter is not None:
                reporter.update(1)
    finally:
        if reporter is not None:
            reporter.close()


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
