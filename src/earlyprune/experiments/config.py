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
        # One spelling per model, so "lenet-5" and "lenet5" are one run (one key) wherever a config comes from.
        from .. import models

        try:
            self.model = models.spec(self.model).name
        except ValueError:
            pass  # unknown: refused, with the known names, when the run starts
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


# --- checking one setting's value (sweep files give them as TOML values, unchecked by argparse) ---------

#: integer settings and their smallest allowed value
_INTEGERS = {"epochs": 0, "batch_size": 1, "seed": 0, "iterations": 1, "prune_every": 1, "score_batches": 1,
             "train_subset": 1}
#: real-number settings (finite): (lower bound, whether the bound itself is allowed)
_REALS = {"lr": (0.0, False), "momentum": (0.0, True), "weight_decay": (0.0, True), "width": (0.0, False)}
_BOOLEANS = ("structured", "augment")
_OPTIONAL = ("iterations", "init", "train_subset")  # None: the default behaviour


def setting_choices(name: str) -> list[str] | None:
    """The values a name-valued setting accepts (canonical names only), or None for other settings."""
    if name == "dataset":
        from ..data import DATASETS

        return list(DATASETS)
    if name == "model":
        from .. import models

        return models.names()
    if name == "method":
        from ..pruning import methods

        return [DENSE, *methods()]
    if name in ("optimizer", "lr_schedule"):
        from ..train import LR_SCHEDULES, OPTIMIZERS

        return list(OPTIMIZERS if name == "optimizer" else LR_SCHEDULES)
    if name == "scope":
        return ["global", "layer"]
    if name == "rule":
        from ..selection import RULES

        return list(RULES)
    if name == "init":
        from ..models import SCHEMES

        return list(SCHEMES)
    return None


def check_setting(name: str, value: Any) -> Any:
    """``value`` checked as the value of setting ``name``, and made canonical where the runner accepts
    several spellings (a model alias such as ``"lenet-5"`` becomes ``"lenet5"``, a dataset name is
    lower-cased); raises :class:`PruningError` saying what is expected otherwise."""
    import math
    import numbers

    if value is None and name in _OPTIONAL:
        return value
    if name in _INTEGERS:
        low = _INTEGERS[name]
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            raise PruningError(f"{name} must be an integer >= {low}, got {value!r}")
        return value
    if name == "sparsity":
        check_sparsity(value)
        return value
    if name in _REALS:
        low, inclusive = _REALS[name]
        ok = (not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
              and (value >= low if inclusive else value > low))
        if not ok:
            raise PruningError(f"{name} must be a number {'>=' if inclusive else '>'} {low:g}, got {value!r}")
        return value
    if name in _BOOLEANS:
        if not isinstance(value, bool):
            raise PruningError(f"{name} must be true or false, got {value!r}")
        return value
    if name == "when":
        if not (value in ("init", "early") or _epoch_spec(value) is not None):
            raise PruningError(f"when must be 'init', 'early' or 'epoch:N' (N >= 1), got {value!r}")
        return value
    choices = setting_choices(name)
    if choices is None:
        raise PruningError(f"unknown setting {name!r}")
    if name == "model" and isinstance(value, str):
        from .. import models

        try:
            return models.spec(value).name
        except ValueError:
            pass
        from ..models import ALIASES

        raise PruningError(f"unknown model {value!r}; valid: {', '.join(choices)} (aliases: {', '.join(ALIASES)})")
    if name == "dataset" and isinstance(value, str) and value.lower() in choices:
        return value.lower()
    if value not in choices:
        raise PruningError(f"unknown {name} {value!r}; valid: {', '.join(choices)}")
    return value
