"""``earlyprune sweep CONFIG --shard K/N``: the K-th of N disjoint slices of a sweep's grid, for job arrays.

A cell belongs to shard ``hash(run key) mod N``. The run key is the hash of the settings that change the
cell's result (:meth:`.config.RunConfig.key`), so a cell stays in its shard when the TOML's axes or values
are reordered or other cells are added, and the N shards together hold every cell exactly once. The price
of that stability is balance: with few cells the shards can be uneven (a shard may even be empty).

Each shard writes its own store, in ``RESULTS/shard-K-of-N/``, so the tasks of a job array never share a
SQLite file (which network file systems do not lock reliably); ``earlyprune report RESULTS`` merges them
(:mod:`.merge`).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, TypeVar

from ..errors import PruningError

T = TypeVar("T")


class ShardError(PruningError):
    """A ``--shard`` value that is not ``K/N`` with ``0 <= K < N``."""


def shard_of(key: str, count: int) -> int:
    """The shard (0 .. ``count`` - 1) of the cell whose run key is ``key``: the first 8 bytes of the key's
    SHA-256, as an integer, modulo ``count``. Depends on nothing but the key."""
    if count < 1:
        raise ShardError(f"the number of shards must be at least 1, got {count}")
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % count


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based, as ``SLURM_ARRAY_TASK_ID`` with ``--array=0-N-1``)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ShardError(f"shard {self.index}/{self.count}: K/N needs N >= 1 and 0 <= K < N (shards are "
                             f"numbered from 0, as with sbatch --array=0-{max(self.count, 1) - 1})")

    def holds(self, key: str) -> bool:
        """Whether the cell with run key ``key`` is in this shard."""
        return shard_of(key, self.count) == self.index

    def select(self, cells: Iterable[T]) -> list[T]:
        """The cells (anything with a ``key()`` method, e.g. :class:`.config.RunConfig`) of this shard, in
        their order."""
        return [cell for cell in cells if self.holds(cell.key())]  # type: ignore[attr-defined]

    @property
    def name(self) -> str:
        """``shard-K-of-N``: the folder of this shard's store under the sweep's results directory."""
        return f"shard-{self.index}-of-{self.count}"

    def results_dir(self, results: str | Path) -> Path:
        """Where this shard's store goes: ``RESULTS/shard-K-of-N``."""
        return Path(results) / self.name

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


_SHARD = re.compile(r"\s*(-?\d+)\s*/\s*(-?\d+)\s*")


def parse_shard(text: str) -> Shard:
    """``"K/N"`` -> :class:`Shard`; anything else is a :class:`ShardError` saying what is expected."""
    match = _SHARD.fullmatch(text or "")
    if not match:
        raise ShardError(f"--shard must be K/N (the K-th of N shards, K from 0 to N-1, e.g. 3/8 or "
                         f"$SLURM_ARRAY_TASK_ID/8), got {text!r}")
    return Shard(int(match.group(1)), int(match.group(2)))
