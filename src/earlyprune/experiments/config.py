"""The settings of one experiment (a "run"): declared once, shared by the CLI, the runner and sweeps.

A run is identified by a hash of the settings that change its result (not by where it writes), so a
sweep never runs the same cell twice.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from typing import Any

from ..errors import PruningError
from ..selection import check_sparsity

#: ``method`` value for the unpruned reference.
DENSE = "dense"


@dataclass
class RunConfig:
    """Everything that defines one run. Defaults are the SNIP paper's MNIST recipe (20 epochs here)."""

    dataset: str = "mnist"
    model: str = "lenet5"
    method: str = "snip"
    sparsity: float = 0.9
    epochs: int = 20
    batch_size: int = 100
    lr: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_schedule: str = "step"
    seed: int = 0
    scope: str = "global"
    iterations: int | None = None
    rule: str = "topk"
    when: str = "init"  # "init", "early" (EarlyCroP's trigger) or "epoch:N"
    structured: bool = False
    prune_every: int = 1  # activation_density: epochs between resizes
    width: float = 1.0
    init: str | None = None
    augment: bool = True
    score_batches: int = 1  # batches of the training set the criterion scores on (SNIP's paper: one)
    train_subset: int | None = None  # first N training examples (stratification is the dataset's order)

    def __post_init__(self) -> None:
        if self.method != DENSE:
            check_sparsity(self.sparsity)
        if self.epochs < 0 or self.batch_size < 1:
            raise PruningError("epochs must be >= 0 and batch_size >= 1")
        if not (self.when in ("init", "early") or _epoch_spec(self.when) is not None):
            raise PruningError(f"when must be 'init', 'early' or 'epoch:N', got {self.when!r}")
        if self.width <= 0:
            raise PruningError(f"width must be > 0, got {self.width}")

    @property
    def prune_epoch(self) -> int | None:
        """N for ``when='epoch:N'``."""
        return _epoch_spec(self.when)

    def key(self) -> str:
        """A short stable hash of the settings (the cell id of sweeps and the results store)."""
        blob = json.dumps(asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise PruningError(f"unknown setting(s) {unknown}; valid settings: {', '.join(sorted(known))}")
        return cls(**values)


def _epoch_spec(when: str) -> int | None:
    if isinstance(when, str) and when.startswith("epoch:"):
        try:
            value = int(when.split(":", 1)[1])
        except ValueError:
            return None
        return value if value >= 1 else None
    return None
