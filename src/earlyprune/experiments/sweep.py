"""``earlyprune sweep CONFIG``: a grid of runs from a TOML file, resumable, optionally in parallel.

The config::

    results = "results/mnist-lenet5"      # results directory (the CLI's --results overrides it)

    [recipe]                              # settings shared by every cell (any `earlyprune run` setting)
    epochs = 20
    batch_size = 100

    [grid]                                # one list per axis; the cells are the product
    datasets = ["mnist"]
    models = ["lenet5"]
    methods = ["dense", "snip", "grasp"]  # "dense" runs once per dataset x model x seed
    sparsities = [0.9, 0.99]
    seeds = [0, 1, 2]
    when = ["init"]                       # optional: "init", "early", "epoch:N"
    structured = [false]                  # optional

Each cell is identified by the hash of its settings: finished cells are skipped, so a sweep stopped at
any moment (SIGKILL included) resumes where it stopped, and nothing is stored twice.
"""

from __future__ import annotations

import itertools
import os
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import fields
from pathlib import Path
from typing import Any

from ..errors import PruningError
from .config import DENSE, RunConfig
from .store import ResultsStore

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_AXES = {"datasets": "dataset", "models": "model", "methods": "method", "sparsities": "sparsity", "seeds": "seed",
         "when": "when", "structured": "structured"}


class ConfigError(PruningError):
    """A sweep config that cannot be used; the message names the file, line and key."""


def load_sweep(path: str | Path) -> tuple[list[RunConfig], str | None]:
    """The cells of the sweep file ``path`` (in order, duplicates removed) and its results directory."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    unknown = sorted(set(data) - {"results", "recipe", "grid"})
    if unknown:
        raise ConfigError(_where(path, text, unknown[0], f"unknown section or key {unknown[0]!r}; "
                                 "expected 'results', [recipe] and [grid]"))
    recipe = data.get("recipe", {})
    grid = data.get("grid", {})
    valid = {f.name for f in fields(RunConfig)}
    for key in recipe:
        if key not in valid:
            raise ConfigError(_where(path, text, key, f"[recipe] has unknown setting {key!r}; valid: "
                                     f"{', '.join(sorted(valid))}"))
    for key, values in grid.items():
        if key not in _AXES:
            raise ConfigError(_where(path, text, key, f"[grid] has unknown axis {key!r}; valid: {', '.join(_AXES)}"))
        if not isinstance(values, list) or not values:
            raise ConfigError(_where(path, text, key, f"[grid] {key} must be a non-empty list"))
    for axis in ("datasets", "models", "methods"):
        if axis not in grid:
            raise ConfigError(f"{path}: [grid] needs {axis!r}")
    _check_names(path, text, grid)
    axes = [(_AXES[k], v) for k, v in grid.items()]
    cells: list[RunConfig] = []
    seen: set[str] = set()
    for combo in itertools.product(*[values for _, values in axes]):
        settings = {**recipe, **{name: value for (name, _), value in zip(axes, combo)}}
        if settings.get("method") == DENSE:
            settings.update(sparsity=0.0, when="init", structured=False)
        try:
            cell = RunConfig.from_dict(settings)
        except (PruningError, TypeError) as exc:
            raise ConfigError(f"{path}: a cell is invalid ({settings}): {exc}") from exc
        if cell.key() not in seen:
            seen.add(cell.key())
            cells.append(cell)
    return cells, data.get("results")


def _check_names(path: Path, text: str, grid: dict[str, Any]) -> None:
    from .. import models
    from ..data import DATASETS
    from ..pruning import methods

    choices = {"datasets": list(DATASETS), "models": models.names(), "methods": [DENSE, *methods()]}
    for axis, valid in choices.items():
        for value in grid.get(axis, []):
            if value not in valid:
                raise ConfigError(_where(path, text, axis, f"unknown {axis[:-1]} {value!r}; valid: {', '.join(valid)}"))


def _where(path: Path, text: str, key: str, message: str) -> str:
    for number, line in enumerate(text.splitlines(), 1):
        if re.match(rf"\s*(\[)?\s*{re.escape(key)}\s*(=|\])", line):
            return f"{path}:{number}: {message}"
    return f"{path}: {message}"


def _run_cell(config: RunConfig, results_dir: str, data_dir: str | None, threads: int,
              device: str | None = None) -> tuple[str, float | None]:
    from .run import run_experiment

    record = run_experiment(config, data_dir=data_dir, progress=False, threads=threads, device=device)
    with ResultsStore(results_dir) as store:
        store.add(record)
    return config.key(), record.get("final_accuracy")


def run_sweep(config_path: str | Path, results_dir: str | None = None, jobs: int = 1, dry_run: bool = False,
              data_dir: str | None = None, device: str | None = None) -> int:
    """Run every cell of the sweep not yet in the store; returns a process exit code.

    ``device`` is passed to every cell (see :func:`.run.run_experiment`); with ``jobs > 1`` on one GPU the
    workers share it."""
    cells, configured = load_sweep(config_path)
    results = results_dir or configured
    if not results:
        raise ConfigError(f"{config_path}: no results directory: set `results = ...` or pass --results")
    with ResultsStore(results) as store:
        done = store.keys()
    pending = [c for c in cells if c.key() not in done]
    print(f"{len(cells)} cells, {len(cells) - len(pending)} done, {len(pending)} to run -> {results}")
    if dry_run:
        for cell in pending:
            print(f"  {cell.key()}  {cell.dataset} {cell.model} {cell.method} s={cell.sparsity} seed={cell.seed} "
                  f"when={cell.when}{' structured' if cell.structured else ''}")
        return 0
    threads = max(1, (os.cpu_count() or 1) // max(1, jobs))
    started = time.perf_counter()
    if jobs <= 1:
        for index, cell in enumerate(pending, 1):
            key, accuracy = _run_cell(cell, results, data_dir, threads, device)
            _progress(index, len(pending), cell, accuracy, started)
        return 0
    import multiprocessing

    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_run_cell, c, results, data_dir, threads, device): c for c in pending}
        for index, future in enumerate(as_completed(futures), 1):
            _, accuracy = future.result()
            _progress(index, len(pending), futures[future], accuracy, started)
    return 0


def _progress(index: int, total: int, cell: RunConfig, accuracy: float | None, started: float) -> None:
    acc = f"{accuracy:.2%}" if accuracy is not None else "-"
    print(f"[{index}/{total}] {cell.model} {cell.method} s={cell.sparsity} seed={cell.seed}: {acc} "
          f"({time.perf_counter() - started:.0f}s)", flush=True)
