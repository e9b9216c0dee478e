"""Tasks: what the loss is, what metric is reported, and how targets relate to outputs.

* ``classification``: cross-entropy of logits ``(N, C)`` against class indices ``(N,)``; accuracy, higher
  is better (the default);
* ``regression``: mean squared error against targets of the outputs' shape; RMSE (main) and R², lower is
  better;
* ``language_modelling``: next-token cross-entropy of ``(batch, seq, vocab)`` against ``(batch, seq)``;
  perplexity (main) and token accuracy, lower is better.

``earlyprune.tasks.get(name)`` gives a task by name; a :class:`Task` object is accepted wherever a name
is (``ep.prune(model, "snip", 0.9, data=..., task="regression")``). A task is also the loss function the
criteria score with (``task(outputs, targets)``), and it checks that its loss can apply: cross-entropy on
a model with one output per example, regression targets of another shape than the outputs, or
next-token outputs without a sequence dimension are errors, never a silent zero loss.

Reinforcement learning is a hook (:class:`TransitionTask`, see :mod:`.reinforcement`); its loss needs an
agent's target network, so it has no name here: :class:`earlyprune.rl.DQNLoss` is DQN's.
"""

from __future__ import annotations

from typing import Any, Callable

from ..errors import PruningError
from .base import Meter, Task
from .classification import CLASSIFICATION, Classification
from .language_modelling import LANGUAGE_MODELLING, LanguageModelling
from .regression import REGRESSION, Regression
from .reinforcement import TransitionTask

_TASKS: dict[str, Task] = {t.name: t for t in (CLASSIFICATION, REGRESSION, LANGUAGE_MODELLING)}
_ALIASES = {"language_modeling": "language_modelling", "lm": "language_modelling"}

DEFAULT = "classification"


def names() -> list[str]:
    """The names :func:`get` knows."""
    return list(_TASKS)


def get(task: "str | Task | None" = None) -> Task:
    """The task named ``task`` (a :class:`Task` is returned as it is; None is classification)."""
    if task is None:
        return CLASSIFICATION
    if isinstance(task, Task):
        return task
    if isinstance(task, str):
        key = _ALIASES.get(task.lower(), task.lower())
        if key in _TASKS:
            return _TASKS[key]
        if key in ("reinforcement_learning", "rl"):
            raise PruningError(
                "reinforcement learning has no task by name (its loss needs the agent's target network): pass "
                "a TransitionTask object as task=, e.g. earlyprune.rl.DQNLoss(target_network), or subclass "
                "earlyprune.tasks.TransitionTask and implement batch_loss from a batch of transitions"
            )
    raise PruningError(f"unknown task {task!r}; known tasks: {', '.join(_TASKS)}, or a earlyprune.tasks.Task")


def scoring_loss(task: "str | Task | None", loss_fn: Callable[..., Any] | None) -> Callable[..., Any]:
    """The loss criteria score with: ``loss_fn`` when given (it overrides the task's), else the task."""
    resolved = get(task)  # an unknown task is refused even when loss_fn overrides its loss
    return loss_fn if loss_fn is not None else resolved


__all__ = [
    "Task", "Meter", "Classification", "Regression", "LanguageModelling", "TransitionTask",
    "CLASSIFICATION", "REGRESSION", "LANGUAGE_MODELLING", "DEFAULT", "get", "names", "scoring_loss",
]
