"""Declared settings: a dataclass field whose ``metadata`` says what the setting is (help, bounds, choices,
whether None is allowed), and the one check every declared value goes through.

:class:`earlyprune.train.TrainConfig` and the parts of :class:`earlyprune.experiments.config.RunConfig`
declare their fields this way; the CLI flags, the sweep-file checks and each part's own checks are
generated from these declarations, so a bad value gets the same message wherever it comes from.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import PruningError


def setting(default: Any = dataclasses.MISSING, help: str = "", **declaration: Any) -> Any:
    """A dataclass field declaring one setting. ``declaration`` keys (all optional):

    - ``min`` / ``above``: the smallest allowed number, inclusive / exclusive (ints and reals; for a tuple
      of numbers, each element);
    - ``choices``: the allowed names, a sequence or a function returning one (called only when needed);
    - ``registry=True``: the name is looked up in a registry when the run starts, which refuses an unknown
      one with its own message; :func:`check_setting` (sweep files) checks it up front;
    - ``fold_case=True``: a name in another case is accepted and lower-cased (by :func:`check_setting`);
    - ``canonical``: a function giving the canonical spelling of a value (model aliases);
    - ``check``: a function ``(name, value) -> value`` replacing the checks by type and bounds;
    - ``none``: None is allowed, and this text says what it means (shown in ``--help``);
    - ``note``: a function returning text added to the "unknown NAME" message.

    The type is the field's annotation. ``earlyprune.train.TrainConfig`` declares its fields with the same
    metadata keys (a plain dict, so that it needs nothing from here); ``setting=False`` marks a field that
    is no setting (``progress``).
    """
    metadata = {"help": help, **declaration}
    factory = metadata.pop("default_factory", dataclasses.MISSING)
    return field(default=default, default_factory=factory, metadata=metadata)


@dataclass(frozen=True)
class Declaration:
    """One declared setting: where it lives and how its values are checked."""

    name: str
    part: str  # the RunConfig attribute holding it ("data", "network", "training", "pruning"; "" for seed)
    kind: type  # bool, int, float, str, tuple (of numbers) or dict (options)
    default: Any
    metadata: Mapping[str, Any]

    @property
    def help(self) -> str:
        return self.metadata.get("help", "")

    @property
    def optional(self) -> bool:
        return "none" in self.metadata

    def choices(self) -> list[str] | None:
        choices = self.metadata.get("choices")
        if callable(choices):
            choices = choices()
        return None if choices is None else list(choices)

    def check(self, value: Any, *, names: bool = True) -> Any:
        """``value`` checked (and made canonical), or :class:`PruningError` saying what is expected.
        ``names=False`` leaves registry names (dataset, model, method) to the registry at run time."""
        meta = self.metadata
        if value is None and self.optional:
            return None
        if "check" in meta:
            return meta["check"](self.name, value)
        if "canonical" in meta:
            value = meta["canonical"](value)
        if self.kind is bool:
            if not isinstance(value, bool):
                raise PruningError(f"{self.name} must be true or false, got {value!r}")
            return value
        if self.kind in (int, float):
            if not _number_ok(value, self.kind, meta):
                raise PruningError(f"{self.name} must be {_number_text(self.kind, meta)}, got {value!r}")
            return value
        if self.kind is tuple:
            if (not isinstance(value, (list, tuple)) or not value
                    or not all(_number_ok(v, float, meta) for v in value)):
                raise PruningError(f"{self.name} must be a list of {_number_text(float, meta, plural=True)}, "
                                   f"got {value!r}")
            return tuple(value)
        if self.kind is str:
            if not names and meta.get("registry"):
                return value
            choices = self.choices()
            if choices is None:
                if not isinstance(value, str):
                    raise PruningError(f"{self.name} must be a string, got {value!r}")
                return value
            if meta.get("fold_case") and isinstance(value, str) and value.lower() in choices:
                return value.lower()
            if value not in choices:
                note = meta["note"]() if "note" in meta else ""
                raise PruningError(f"unknown {self.name} {value!r}; valid: {', '.join(choices)}{note}")
            return value
        return value  # options (a dict): PruningConfig checks them against the method


def _number_ok(value: Any, kind: type, meta: Mapping[str, Any]) -> bool:
    wanted = numbers.Integral if kind is int else numbers.Real
    if isinstance(value, bool) or not isinstance(value, wanted):
        return False
    if kind is not int and not math.isfinite(value):
        return False
    if "min" in meta and value < meta["min"]:
        return False
    return not ("above" in meta and value <= meta["above"])


def _number_text(kind: type, meta: Mapping[str, Any], plural: bool = False) -> str:
    text = ("integers" if plural else "an integer") if kind is int else ("numbers" if plural else "a number")
    if "min" in meta:
        text += f" >= {meta['min']:g}"
    if "above" in meta:
        text += f" > {meta['above']:g}"
    return text


def _kind(annotation: Any) -> type:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = args[0]
    origin = typing.get_origin(annotation) or annotation
    if origin in (bool, int, float, str, tuple, dict):
        return origin
    raise TypeError(f"a setting of type {annotation!r} cannot be declared")  # pragma: no cover


@functools.lru_cache(maxsize=None)
def declarations(cls: type, part: str = "") -> dict[str, Declaration]:
    """The declared settings of dataclass ``cls`` by name: its fields with a ``help`` in their metadata
    (fields marked ``setting=False`` left out)."""
    hints = typing.get_type_hints(cls)
    found = {}
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata or f.metadata.get("setting", True) is False:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        found[f.name] = Declaration(f.name, part, _kind(hints[f.name]), default, f.metadata)
    return found


def check_declared(obj: Any) -> None:
    """Check (and make canonical) every declared setting of the dataclass instance ``obj`` in place.
    Registry names are left to the registry, which refuses an unknown name when the run starts."""
    for declaration in declarations(type(obj)).values():
        value = getattr(obj, declaration.name)
        checked = declaration.check(value, names=False)
        if checked is not value:
            object.__setattr__(obj, declaration.name, checked)
