"""The settings of one experiment (a "run"), each declared once.

A :class:`RunConfig` is made of parts: ``data`` (:class:`DataConfig`), ``network`` (:class:`NetworkConfig`),
``training`` (:class:`earlyprune.train.TrainConfig` itself) and ``pruning`` (:class:`PruningConfig`), plus the
``seed``, which seeds everything (model, data order, scoring batches, criterion).

Every setting is a dataclass field whose ``metadata`` declares it (see :func:`setting`): its help text, its
bounds, its choices (computed lazily from the registries), whether None is allowed. From these declarations
come the flags of ``earlyprune run``, the checks of sweep-file values (:func:`check_setting`) and the checks
each part makes when it is built, so a bad value gets the same message wherever it comes from.

Users see flat names: ``--epochs``, ``[recipe] epochs = 20``, ``record["epochs"]``,
``RunConfig(epochs=20)``, ``RunConfig.from_dict(flat)``, ``config.as_dict()`` and read-only
``config.epochs`` (the same as ``config.training.epochs``).

A run is identified by a hash of the settings that change its result (not by where it writes), so a sweep
never runs the same cell twice. Settings added after the first release enter that hash only when they
differ from their default, so stored runs keep their keys (see :meth:`RunConfig.key`).
"""

from __future__ import annotations

import hashlib
import json
import numbers
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from ..errors import PruningError
from ..selection import check_sparsity
from ..settings import Declaration, check_declared, declarations, setting
from ..train import TrainConfig

#: ``method`` value for the unpruned reference.
DENSE = "dense"

#: Methods whose size is an outcome, not a setting: their ``sparsity`` setting is ignored.
NO_TARGET_SPARSITY = (DENSE, "activation_density")


def target_sparsity(record: Mapping[str, Any]) -> float | None:
    """The sparsity a run (its record or flat settings) was asked for; None where the size is not a setting:
    the dense reference, activation density (it finds its own size) and a run pruned to a cost budget
    (the budget decides how many channels go; its ``sparsity`` field holds the unused default)."""
    if record["method"] in NO_TARGET_SPARSITY or record.get("budget"):
        return None
    return float(record["sparsity"])

#: The settings the run key hashed before settings were declared in parts (the flat ``RunConfig`` of 23
#: fields): always hashed, with their values, so that stored runs keep their keys. Any other setting is
#: hashed only when it differs from its default.
LEGACY_KEY_SETTINGS = (
    "dataset", "model", "method", "sparsity", "epochs", "batch_size", "lr", "optimizer", "momentum",
    "weight_decay", "lr_schedule", "seed", "scope", "iterations", "rule", "when", "structured", "prune_every",
    "width", "init", "augment", "score_batches", "train_subset",
)


# --- special checks -----------------------------------------------------------------------------------------

def _epoch_spec(when: Any) -> int | None:
    if isinstance(when, str) and when.startswith("epoch:"):
        try:
            value = int(when.split(":", 1)[1])
        except ValueError:
            return None
        return value if value >= 1 else None
    return None


def _check_when(name: str, value: Any) -> Any:
    if not (value in ("init", "early") or _epoch_spec(value) is not None):
        raise PruningError(f"{name} must be 'init', 'early' or 'epoch:N' (N >= 1), got {value!r}")
    return value


def _check_sparsity(name: str, value: Any) -> Any:
    check_sparsity(value, name)
    return value  # as given: the key hashes the value as it was written


def parse_budget(text: str) -> tuple[str, float]:
    """``"flops=0.25"`` -> ``("flops", 0.25)``: a structured run's cost budget, one ``KIND=NUMBER`` with KIND
    one of :data:`earlyprune.structured.budget.BUDGET_KINDS`, checked by that module's rules (a fraction in
    (0, 1] for flops and channels; a count or a fraction <= 1 for params; MiB > 0 for memory_mb)."""
    from ..structured.budget import BUDGET_KINDS, check_budget

    kind, sep, raw = text.partition("=") if isinstance(text, str) else ("", "", "")
    kind = kind.strip().lower()
    try:
        value = float(raw)
    except ValueError:
        value = None
    if not sep or kind not in BUDGET_KINDS or value is None:
        known = ", ".join(f"{k}=..." for k in BUDGET_KINDS)
        raise PruningError(f"budget must be one KIND=NUMBER, KIND one of {known} (e.g. flops=0.25), got {text!r}")
    check_budget({kind: value, **({"batch_size": 1} if kind == "memory_mb" else {})})
    return kind, value


def _check_budget(name: str, value: Any) -> Any:
    """One spelling per budget ("FLOPS=.250" is "flops=0.25"), so that equal budgets are one run (one key)."""
    kind, number = parse_budget(value)
    return f"{kind}={int(number) if number.is_integer() else repr(number)}"


def _canonical_model(value: Any) -> Any:
    """One spelling per model, so "lenet-5" and "lenet5" are one run (one key) wherever a config comes from."""
    from .. import models

    try:
        return models.spec(value).name if isinstance(value, str) else value
    except ValueError:
        return value  # unknown: refused, with the known names, by check_setting or when the run starts


def _datasets() -> list[str]:
    from ..data import DATASETS

    return list(DATASETS)


def _models() -> list[str]:
    from .. import models

    return models.names(None)


def _model_aliases() -> str:
    from ..models import ALIASES

    return f" (aliases: {', '.join(ALIASES)})"


def _methods() -> list[str]:
    from ..pruning import methods

    return [DENSE, *methods()]


def _inits() -> tuple[str, ...]:
    from ..models import SCHEMES

    return SCHEMES


def _rules() -> tuple[str, ...]:
    from ..selection import RULES

    return RULES


def _presets() -> tuple[str, ...]:
    from ..presets import PRESETS

    return PRESETS


def _collapse_policies() -> tuple[str, ...]:
    from ..selection import COLLAPSE_POLICIES

    return COLLAPSE_POLICIES


def _ablations() -> tuple[str, ...]:
    from ..ablations import ABLATIONS

    return ("none", *ABLATIONS)


#: ``score_mode`` values and the ``train`` flag of ``earlyprune.prune`` each one means.
SCORE_MODES = {"criterion": None, "train": True, "eval": False}


# --- the parts ----------------------------------------------------------------------------------------------

@dataclass
class DataConfig:
    """What the model is trained on."""

    dataset: str = setting("mnist", "dataset", choices=_datasets, registry=True, fold_case=True)
    train_subset: int | None = setting(None, "train on the first N training examples only (stratification is "
                                       "the dataset's order)", min=1, none="all of them")
    augment: bool = setting(True, "random crop and flip on CIFAR")
    batch_size: int = setting(100, "training batch size (also of the scoring batches)", min=1)
    steps_per_epoch: int | None = setting(None, "reinforcement learning (--dataset cartpole): environment steps "
                                          "per epoch", min=1, none="1000")

    def __post_init__(self) -> None:
        check_declared(self)


@dataclass
class NetworkConfig:
    """The model that is pruned and trained."""

    model: str = setting("lenet5", "model (a name or an alias)", choices=_models, registry=True,
                         canonical=_canonical_model, note=_model_aliases)
    width: float = setting(1.0, "width multiplier of the model", above=0)
    init: str | None = setting(None, "weight initialisation", choices=_inits, none="the model's paper's")

    def __post_init__(self) -> None:
        check_declared(self)


@dataclass
class PruningConfig:
    """How, when and how much the model is pruned."""

    method: str = setting("snip", "pruning method (see earlyprune.methods()), or 'dense' for the unpruned "
                          "reference", choices=_methods, registry=True)
    sparsity: float = setting(0.9, "fraction of weights (or channels) removed, in [0, 1)", check=_check_sparsity)
    scope: str = setting("global", "rank all weights together (global) or prune each layer (layer)",
                         choices=("global", "layer"))
    iterations: int | None = setting(None, "pruning rounds on an exponential schedule", min=1,
                                     none="the method's own: one shot; SynFlow 100")
    rule: str = setting("topk", "selection rule: topk keeps exactly round((1-s)N); official is the SynFlow repository's <= threshold; grasp, earlycrop, prospr the counts of those codes (docs/methods.md)", choices=_rules)
    preset: str = setting("paper", "paper: each method as its paper defines it; official: exactly as its official "
                          "code does it (docs/methods.md lists the differences)", choices=_presets)
    ablation: str = setting("none", "a sanity check of Frankle et al. (ICLR 2021) after pruning at init: shuffle "
                            "each layer's mask, reinit the kept weights, or invert the scores", choices=_ablations)
    score_mode: str = setting("criterion", "the mode the criterion scores in: its own (criterion), train or eval",
                              choices=tuple(SCORE_MODES))
    when: str = setting("init", "when to prune: init, early (EarlyCroP's trigger) or epoch:N", check=_check_when)
    structured: bool = setting(False, "remove whole channels physically")
    budget: str | None = setting(None, "with --structured, prune to a cost instead of a channel fraction: "
                                 "flops=F (a fraction of the dense FLOPs), params=N (a count, or a fraction <= 1), "
                                 "memory_mb=M (a training-memory estimate at --batch-size) or channels=C (that "
                                 "fraction of channels at the least FLOPs); replaces --sparsity",
                                 check=_check_budget, none="prune --sparsity of the channels")
    on_collapse: str = setting("guard", "a layer pruned to nothing: guard (an error when the pruned network's "
                               "output no longer depends on its input, or most layers are empty), raise (an "
                               "error for any), warn, allow (to reproduce a baseline that collapses) or keep_min "
                               "(each layer keeps a weight)",
                               choices=_collapse_policies)
    prune_every: int = setting(1, "activation_density: epochs between resizes", min=1)
    score_batches: int = setting(1, "batches of the training set the criterion scores on (SNIP's paper: one)",
                                 min=1)
    #: the criterion's options (``method_options(method)``), e.g. ``{"temperature": 100}`` for GraSP
    options: dict[str, Any] = setting(help="criterion options", default_factory=dict)

    def __post_init__(self) -> None:
        check_declared(self)
        self.options = check_options(self.method, self.options)
        self._check_sanity_settings()

    def _check_sanity_settings(self) -> None:
        """preset, ablation and score_mode apply to the criteria; an ablation to unstructured pruning at init
        (where Frankle et al. run them): elsewhere they would be ignored, so they are refused."""
        criterion = self.method != DENSE and self.method.lower() != "activation_density"
        if self.method.lower() == "activation_density" and self.options:
            from ..activation_density import run_settings

            run_settings(self.options, epochs=2)  # the ranges (last_epoch, stop_below, ...), checked now
        if not criterion and (self.preset != "paper" or self.ablation != "none" or self.score_mode != "criterion"):
            raise PruningError(f"preset, ablation and score_mode apply to the pruning criteria, not to method "
                               f"{self.method!r}")
        if self.ablation != "none" and (self.structured or self.when != "init"):
            raise PruningError("ablation applies to unstructured pruning at initialisation (when='init', not "
                               "structured), as Frankle et al. run their sanity checks")
        if self.budget is not None:
            if not criterion:
                raise PruningError(f"budget applies to the pruning criteria, not to method {self.method!r}")
            if not self.structured:
                raise PruningError("budget applies to structured pruning only (add --structured / structured = "
                                   "true): it chooses which channels to remove")
            default = declarations(PruningConfig)["sparsity"].default
            if self.sparsity != default:
                raise PruningError(f"give a budget or a sparsity, not both: a budget ({self.budget}) decides how "
                                   f"many channels are removed, so sparsity must stay at its default ({default})")

    def channel_budget(self, batch_size: int) -> dict[str, Any] | None:
        """The ``budget=`` of :func:`earlyprune.prune_channels` (None without one); a memory budget is at
        ``batch_size``, the run's."""
        if self.budget is None:
            return None
        kind, value = parse_budget(self.budget)
        return {kind: value, **({"batch_size": batch_size} if kind == "memory_mb" else {})}

    @property
    def prune_epoch(self) -> int | None:
        """N for ``when='epoch:N'``."""
        return _epoch_spec(self.when)


#: the parts of a RunConfig: attribute -> class
PARTS: dict[str, type] = {"data": DataConfig, "network": NetworkConfig, "training": TrainConfig,
                          "pruning": PruningConfig}


# --- criterion options --------------------------------------------------------------------------------------

def method_option_defaults(method: str) -> dict[str, Any]:
    """The options ``method`` accepts with their defaults: none for ``dense``; the pruner's settings for
    ``activation_density`` (which has no criterion: ``activation_density.RUN_OPTIONS``); raises
    :class:`PruningError` for an unknown method."""
    if method == DENSE:
        return {}
    if isinstance(method, str) and method.lower() == "activation_density":
        from ..activation_density import RUN_OPTIONS

        return dict(RUN_OPTIONS)
    from ..pruning import method_options

    return method_options(method)


def check_options(method: str, options: Any) -> dict[str, Any]:
    """``options`` checked against the options of ``method`` (names, and the type of their defaults)."""
    if not isinstance(options, Mapping):
        raise PruningError(f"options must be a table of NAME = VALUE, got {options!r}")
    options = dict(options)
    if not options:
        return options
    valid = method_option_defaults(method)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        names = ", ".join(map(repr, unknown))
        if not valid:
            raise PruningError(f"method {method!r} takes no options, got {names}")
        raise PruningError(f"unknown option {names} for method {method!r}; valid options: {', '.join(valid)}")
    for name, value in options.items():
        default = valid[name]
        if isinstance(default, bool):
            ok, what = isinstance(value, bool), "true or false"
        elif isinstance(default, numbers.Integral):
            ok, what = isinstance(value, numbers.Integral) and not isinstance(value, bool), "an integer"
        elif isinstance(default, numbers.Real):
            ok, what = isinstance(value, numbers.Real) and not isinstance(value, bool), "a number"
        else:
            ok, what = True, ""
        if not ok:
            raise PruningError(f"option {name} of method {method!r} must be {what}, got {value!r}")
    return options


def parse_option(text: str) -> tuple[str, Any]:
    """``"NAME=VALUE"`` -> ``(NAME, VALUE)``, VALUE read as a JSON literal (``100``, ``0.5``, ``true``,
    ``null``, ``"text"``, ``[1, 28, 28]``) and as a plain string otherwise."""
    name, sep, raw = text.partition("=")
    name = name.strip()
    if not sep or not name.isidentifier():
        raise PruningError(f"an option is NAME=VALUE (e.g. temperature=100), got {text!r}")
    raw = raw.strip()
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return name, value


# --- the run ------------------------------------------------------------------------------------------------

_SEED = setting(0, "seeds the model's initialisation, the data order, the scoring batches and the criterion",
                min=0)


@dataclass(init=False)
class RunConfig:
    """Everything that defines one run. Defaults are the SNIP paper's MNIST recipe (20 epochs here).

    Build it from flat settings, ``RunConfig(model="lenet300", epochs=1, options={"temperature": 100})``
    or :meth:`from_dict`, or from parts, ``RunConfig(training=TrainConfig(epochs=1), seed=1)``. Flat
    settings are read-only attributes (``config.epochs`` is ``config.training.epochs``).
    """

    data: DataConfig
    network: NetworkConfig
    training: TrainConfig
    pruning: PruningConfig
    seed: int = _SEED

    def __init__(self, data: DataConfig | None = None, network: NetworkConfig | None = None,
                 training: TrainConfig | None = None, pruning: PruningConfig | None = None, seed: int = 0,
                 **settings: Any) -> None:
        given = {"data": data, "network": network, "training": training, "pruning": pruning}
        owner = _owners()
        unknown = sorted(set(settings) - set(owner))
        if unknown:
            raise TypeError(f"unknown setting(s) {unknown}; valid settings: {', '.join(sorted(owner))}")
        for part, cls in PARTS.items():
            flat = {name: value for name, value in settings.items() if owner[name] == part}
            if given[part] is None:
                given[part] = cls(**flat)
            elif flat:
                raise TypeError(f"{', '.join(flat)} given both flat and in {part}=")
            elif not isinstance(given[part], cls):
                raise TypeError(f"{part} must be a {cls.__name__}, got {given[part]!r}")
            setattr(self, part, given[part])
        self.seed = declarations(RunConfig)["seed"].check(seed)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "RunConfig":
        """A config from flat settings (a record's settings, a sweep cell), unknown names refused."""
        unknown = sorted(set(values) - set(_owners()))
        if unknown:
            raise PruningError(f"unknown setting(s) {unknown}; valid settings: {', '.join(sorted(_owners()))}")
        return cls(**values)

    @staticmethod
    def settings() -> Iterator[Declaration]:
        """Every declared setting, part by part (``seed`` first), ``options`` included."""
        yield declarations(RunConfig)["seed"]
        for part, cls in PARTS.items():
            yield from declarations(cls, part).values()

    @property
    def prune_epoch(self) -> int | None:
        """N for ``when='epoch:N'``."""
        return self.pruning.prune_epoch

    def as_dict(self) -> dict[str, Any]:
        """The flat settings: ``{"dataset": ..., "epochs": ..., "options": {...}, ...}``."""
        flat = {d.name: getattr(getattr(self, d.part) if d.part else self, d.name) for d in self.settings()}
        flat["options"] = dict(flat["options"])
        return flat

    def replace(self, **settings: Any) -> "RunConfig":
        """A copy with some flat settings changed."""
        return RunConfig.from_dict({**self.as_dict(), **settings})

    def key_settings(self) -> dict[str, Any]:
        """What the key hashes: the legacy settings as they are, any other setting that is not at its
        default, and the options that are not at the method's default."""
        flat = self.as_dict()
        hashed = {name: flat.pop(name) for name in LEGACY_KEY_SETTINGS}
        options = flat.pop("options")
        defaults = _defaults()
        hashed.update({name: value for name, value in flat.items() if value != defaults[name]})
        if options:
            option_defaults = method_option_defaults(self.pruning.method)
            changed = {name: value for name, value in options.items() if value != option_defaults[name]}
            if changed:
                hashed["options"] = changed
        return hashed

    def key(self) -> str:
        """A short stable hash of the settings that change the result (the cell id of sweeps and the
        results store). A setting added later enters it only when it is not at its default, so that runs
        stored before it existed keep their keys."""
        blob = json.dumps(self.key_settings(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _owners() -> dict[str, str]:
    """flat setting name -> the part holding it (``"seed"`` is the RunConfig's own)."""
    return {d.name: d.part or "seed" for d in RunConfig.settings()}


def _defaults() -> dict[str, Any]:
    return {d.name: d.default for d in RunConfig.settings()}


def _flat_property(part: str, name: str, doc: str) -> property:
    return property(lambda self: getattr(getattr(self, part), name), doc=f"{doc} (``{part}.{name}``, read-only)")


for _part, _cls in PARTS.items():
    for _declaration in declarations(_cls, _part).values():
        setattr(RunConfig, _declaration.name, _flat_property(_part, _declaration.name, _declaration.help))


def setting_names() -> list[str]:
    """The flat names of the settings a sweep's ``[recipe]`` or a flag may set (options apart)."""
    return [d.name for d in RunConfig.settings() if d.kind is not dict]


# --- checking one setting's value (sweep files give them as TOML values, unchecked by argparse) ---------

def check_setting(name: str, value: Any) -> Any:
    """``value`` checked as the value of setting ``name``, and made canonical where the runner accepts
    several spellings (a model alias such as ``"lenet-5"`` becomes ``"lenet5"``, a dataset name is
    lower-cased); raises :class:`PruningError` saying what is expected otherwise. Registry names are
    checked here too (the known ones are listed)."""
    found = {d.name: d for d in RunConfig.settings() if d.kind is not dict}
    if name not in found:
        raise PruningError(f"unknown setting {name!r}")
    return found[name].check(value)
