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
    presets = ["paper", "official"]       # optional: each method as its paper, or as its official code
    ablations = ["none", "shuffle"]       # optional: Frankle et al.'s sanity checks (shuffle, reinit, invert)
    budgets = ["flops=0.25", "flops=0.5"] # optional, structured only: a cost instead of sparsities

    [options]                             # optional: the criterion's options, for every cell but dense
    temperature = 100                     # (each must be an option of every method of the grid)

    [resources]                           # optional: what each cell asks for (flags override)
    num_cpus = 1                          # CPUs per cell, also its torch threads
    num_gpus = 0                          # GPUs per cell (--executor ray; fractions share a GPU)

Each cell is identified by the hash of its settings: finished cells are skipped, so a sweep stopped at
any moment (SIGKILL included) resumes where it stopped, and nothing is stored twice.

Every value is checked when the file is read (errors name the line and the key), and the datasets of the
cells to run are located before anything runs. A cell that fails is reported and recorded as failed in
the store, the others still run, and the sweep ends with a non-zero exit code; failed cells run again
on the next invocation. With ``--jobs N`` the workers end as soon as the sweep process dies, however it
dies (SIGKILL included). Where the cells run (this process, local workers, a Ray cluster) is the
executor's business (:mod:`.executors`); this process alone writes the store. ``--shard K/N`` runs one of
N disjoint slices of the grid, for job arrays (:mod:`.shards`).
"""

from __future__ import annotations

import itertools
import json
import re
import sys
from pathlib import Path
from typing import Any

from ..errors import PruningError
from .config import DENSE, RunConfig, check_options, check_setting, setting_names
from .executors import CellJob, Started, load_resources, make_executor
from .shards import Shard, parse_shard
from ..atomic import StorageError
from .store import STORE_NAME, ClaimQueue, ResultsStore
from .sweep_progress import SweepProgress

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_AXES = {"datasets": "dataset", "models": "model", "methods": "method", "sparsities": "sparsity", "seeds": "seed",
         "when": "when", "structured": "structured", "presets": "preset", "ablations": "ablation", "budgets": "budget"}


class ConfigError(PruningError):
    """A sweep config that cannot be used; the message names the file, line and key."""


def load_sweep(path: str | Path, num_cpus: float | None = None) -> tuple[list[RunConfig], str | None]:
    """The cells of the sweep file ``path`` (in order, duplicates removed) and its results directory (a
    relative ``results`` is relative to the sweep file's folder, not to the current directory).

    Each cell's torch thread count is part of its settings (and key): ``[recipe] threads``, else
    ``num_cpus`` (the ``--num-cpus`` flag), else ``[resources] num_cpus``, else 1, so that ``--jobs`` never
    changes a cell's result or key.

    Every value of ``[recipe]`` and ``[grid]`` is checked (type, range, known names); a bad one raises
    :class:`ConfigError` naming the file, the line and the key. Model aliases (``lenet-5``) and dataset
    names in any case are accepted, as ``earlyprune run`` accepts them, and stored in canonical form."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a directory, not a sweep file: give the TOML file (e.g. {path / 'sweep.toml'})")
    text = path.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    unknown = sorted(set(data) - {"results", "recipe", "grid", "options", "resources"})
    if unknown:
        raise ConfigError(_where(path, text, unknown[0], f"unknown section or key {unknown[0]!r}; "
                                 "expected 'results', [recipe], [grid], [options] and [resources]"))
    results = data.get("results")
    if results is not None and (not isinstance(results, str) or not results.strip()):
        raise ConfigError(_where(path, text, "results", f"results must be a directory name (a string), "
                                 f"got {results!r}", section=""))
    for section in ("recipe", "grid", "options"):
        if not isinstance(data.get(section, {}), dict):
            raise ConfigError(_where(path, text, section, f"{section} must be a table: [{section}] with "
                                     "`key = value` lines under it", section=""))
    recipe = dict(data.get("recipe", {}))
    grid = dict(data.get("grid", {}))
    options = dict(data.get("options", {}))
    valid = setting_names()
    for key, value in recipe.items():
        if key not in valid:
            hint = "; the criterion's options go in an [options] table" if key == "options" else ""
            raise ConfigError(_where(path, text, key, f"[recipe] has unknown setting {key!r}; valid: "
                                     f"{', '.join(sorted(valid))}{hint}", section="recipe"))
        try:
            recipe[key] = check_setting(key, value)
        except PruningError as exc:
            raise ConfigError(_where(path, text, key, f"[recipe] {exc}", section="recipe")) from exc
    for key, values in grid.items():
        if key not in _AXES:
            raise ConfigError(_where(path, text, key, f"[grid] has unknown axis {key!r}; valid: {', '.join(_AXES)}",
                                     section="grid"))
        if not isinstance(values, list) or not values:
            raise ConfigError(_where(path, text, key, f"[grid] {key} must be a non-empty list", section="grid"))
    for axis in ("datasets", "models", "methods"):
        if axis not in grid:
            raise ConfigError(f"{path}: [grid] needs {axis!r}")
    for key, values in grid.items():
        checked = []
        for value in values:
            try:
                checked.append(check_setting(_AXES[key], value))
            except PruningError as exc:
                message = str(exc) if str(exc).startswith("unknown ") else f"[grid] {key}: {exc}"
                raise ConfigError(_where(path, text, key, message, section="grid")) from exc
        grid[key] = list(dict.fromkeys(checked))  # "lenet-5" and "lenet5" are one model
    _check_options(path, text, options, [m for m in grid["methods"] if m != DENSE])
    threads = load_resources(path, num_cpus=num_cpus).threads(1)
    axes = [(_AXES[k], v) for k, v in grid.items()]
    cells: list[RunConfig] = []
    seen: set[str] = set()
    for combo in itertools.product(*[values for _, values in axes]):
        settings = {"threads": threads, **recipe, **{name: value for (name, _), value in zip(axes, combo)}}
        if settings.get("method") == DENSE:
            # options: none; dense is one run whatever the pruning axes (preset, ablation) say
            settings.update(sparsity=0.0, when="init", structured=False, preset="paper", ablation="none",
                            budget=None)
        else:
            settings["options"] = dict(options)
        try:
            cell = RunConfig.from_dict(settings)
        except (PruningError, TypeError) as exc:
            raise ConfigError(f"{path}: a cell is invalid ({settings}): {exc}") from exc
        if cell.key() not in seen:
            seen.add(cell.key())
            cells.append(cell)
    if results is not None and not Path(results).expanduser().is_absolute():
        results = str(path.parent / Path(results).expanduser())
    return cells, results


def _check_options(path: Path, text: str, options: dict[str, Any], methods: list[str]) -> None:
    """Each option of ``[options]`` must be one of every method's (dense apart): the first that is not is
    a :class:`ConfigError` at its line, naming the method and the options it has."""
    if options and not methods:
        first = next(iter(options))
        raise ConfigError(_where(path, text, first, "[options] apply to no cell: every method of the grid is "
                                 "'dense'", section="options"))
    for name, value in options.items():
        for method in methods:
            try:
                check_options(method, {name: value})
            except PruningError as exc:
                raise ConfigError(_where(path, text, name, f"[options] {exc}", section="options")) from exc


_SECTION = re.compile(r"""\s*\[\[?\s*([A-Za-z0-9_.\-"' ]+?)\s*\]\]?\s*(#.*)?$""")


def _where(path: Path, text: str, key: str, message: str, section: str | None = None) -> str:
    """``message`` prefixed with ``path:LINE:``, LINE being where ``key`` is set: in ``[section]`` when
    ``section`` is given (``""``: the top level, before any section header; a header named ``key``
    counts there), anywhere otherwise; ``path:`` alone if no such line is found."""
    key_line = re.compile(rf"""\s*(\w+\.)?(["']?){re.escape(key)}\2\s*=""")
    for scoped in ((section, None) if section is not None else (None,)):
        current = ""
        for number, line in enumerate(text.splitlines(), 1):
            header = _SECTION.match(line)
            if header:
                current = header.group(1).strip().strip("\"'")
                if current == key and scoped in (None, ""):
                    return f"{path}:{number}: {message}"
                continue
            if (scoped is None or current == scoped) and key_line.match(line):
                return f"{path}:{number}: {message}"
    return f"{path}: {message}"


def check_datasets(names: list[str], data_dir: str | None = None) -> None:
    """Raise the data registry's :class:`~earlyprune.data.DatasetNotFoundError` (it lists where it looked
    and where to get the data) for the first dataset of ``names`` that cannot be located. Only looks for
    the files: nothing is read."""
    from ..data import registry
    from ..data.cache import default_cache_dir

    cache = default_cache_dir()
    for name in dict.fromkeys(names):
        spec = registry.DATASETS[name.lower()]
        if not spec.folders:  # shipped with the package
            continue
        found = any(registry._reader_for(spec, root / folder if folder else root, cache) is not None
                    for root in registry._search_roots(data_dir) for folder in (*spec.folders, ""))
        if not found:
            # the registry's own search, which finds nothing either and raises its message
            registry._locate_and_read(spec, data_dir, cache)


def _stopped_by_storage(error: StorageError, event: Any, results: str, left: list[RunConfig]) -> int:
    """A sweep stopped by a full disk (or another storage failure): keep the finished record that could
    not be stored (a fallback file), say what happened and which cells remain; exit code 1."""
    from .records import keep_record

    print(f"earlyprune sweep: stopped: {error}", file=sys.stderr, flush=True)
    record = getattr(event, "record", None)
    cell = getattr(event, "cell", None)
    if cell is not None and cell.key() not in {c.key() for c in left}:
        left = [cell, *left]  # its record or its failure could not be stored: it runs again
    if record is not None:
        written, _ = keep_record(record, Path(results) / "unsaved.jsonl")
        where = ", ".join(written) or "nowhere (no room anywhere): " + json.dumps(record, default=str)
        print(f"earlyprune sweep: the record of cell {record.get('key')} is kept in {where}", file=sys.stderr)
    print(f"earlyprune sweep: {len(left)} cell(s) remain; free some space and run the sweep again:",
          file=sys.stderr)
    for cell in left:
        print(f"  {cell.key()}  {_describe(cell)}", file=sys.stderr)
    sys.stderr.flush()
    return 1


def _result_text(record: dict[str, Any]) -> str:
    """A finished cell's result as its progress line shows it: the accuracy, else the task's metric."""
    accuracy = record.get("final_accuracy")
    if accuracy is not None or record.get("final_metric") is None:
        return f"{accuracy:.2%}" if accuracy is not None else "-"
    return f"{record.get('metric_name', 'metric')} {record['final_metric']:.4g}"


def _describe(cell: RunConfig) -> str:
    pruning = cell.pruning
    options = "".join(f" {name}={value}" for name, value in pruning.options.items())
    return (f"{cell.data.dataset} {cell.network.model} {pruning.method} s={pruning.sparsity} seed={cell.seed} "
            f"when={pruning.when}{' structured' if pruning.structured else ''}{options}")


def run_sweep(config_path: str | Path, results_dir: str | None = None, jobs: int = 1, dry_run: bool = False,
              data_dir: str | None = None, device: str | None = None, executor: str = "local",
              address: str | None = None, num_cpus: float | None = None, num_gpus: float | None = None,
              shard: str | Shard | None = None, tensorboard: str | None = None) -> int:
    """Run every cell of the sweep not yet in the store; returns a process exit code: 0 when every cell
    is finished, 1 when some failed (each is reported on stderr and recorded in the store as failed, so
    the next invocation runs it again).

    ``executor`` is where the cells run (:mod:`.executors`): ``"local"`` (this process, or ``jobs`` worker
    processes) or ``"ray"`` (Ray tasks on the cluster at ``address``, or on a Ray instance started here).
    Either way this process alone writes the store. ``num_cpus``/``num_gpus`` override the sweep file's
    ``[resources]``: what each cell asks for (its CPUs are also its torch threads). ``shard`` (``"K/N"``)
    runs only the K-th of N disjoint slices of the grid (:mod:`.shards`), with its own store in
    ``RESULTS/shard-K-of-N``.

    ``device`` is passed to every cell (see :func:`.run.run_experiment`); with ``jobs > 1`` on one GPU the
    workers share it. ``tensorboard`` (a folder) has every cell log for TensorBoard into
    ``tensorboard/<its key>`` (:mod:`earlyprune.tensorboard_log`; made absolute here, so that workers started
    elsewhere write to the same folder)."""
    if tensorboard is not None:
        from ..tensorboard_log import summary_writer_class

        summary_writer_class()  # the package is missing: say so before any cell runs
        tensorboard = str(Path(tensorboard).expanduser().absolute())
    cells, configured = load_sweep(config_path, num_cpus=num_cpus)
    results = results_dir or configured
    if not results:
        raise ConfigError(f"{config_path}: no results directory: set `results = ...` or pass --results")
    resources = load_resources(config_path, num_cpus=num_cpus, num_gpus=num_gpus)
    if shard is not None:
        shard = parse_shard(shard) if isinstance(shard, str) else shard
        grid_size = len(cells)
        cells = shard.select(cells)
        results = shard.results_dir(results)
        print(f"shard {shard}: {len(cells)} of the grid's {grid_size} cells")
    # each cell's thread count is one of its settings (load_sweep), so --jobs changes no cell's key
    job = CellJob(data_dir=data_dir, threads=resources.threads(1), device=device, tensorboard=tensorboard)
    runner = make_executor(executor, job, jobs=jobs, resources=resources, address=address)
    done, failed_before = set(), {}
    if not dry_run or (Path(results) / STORE_NAME).exists():  # a dry run creates no store
        with ResultsStore(results) as store:
            done = store.keys()
            failed_before = store.failures()
    pending = [c for c in cells if c.key() not in done]
    check_datasets([c.data.dataset for c in pending], data_dir)
    retried = sum(c.key() in failed_before for c in pending)
    print(f"{len(cells)} cells, {len(cells) - len(pending)} done, {len(pending)} to run -> {results}"
          + (f" ({retried} failed before and run again)" if retried else ""))
    if dry_run:
        for cell in pending:
            again = " (failed before)" if cell.key() in failed_before else ""
            print(f"  {cell.key()}  {_describe(cell)}{again}")
        return 0
    if not pending:
        return 0
    progress = SweepProgress(len(pending))
    failures = 0
    ended: set[str] = set()
    event = None
    # each cell is claimed in the store just before it starts: concurrent sweeps compute it once
    with ClaimQueue(results, pending, key=RunConfig.key) as queue:
        try:
            for event in runner.run(queue):
                cell = event.cell
                if isinstance(event, Started):
                    progress.cell_started(cell)
                    continue
                ended.add(cell.key())
                if event.ok:
                    assert event.record is not None
                    with ResultsStore(results) as store:
                        store.add(event.record)
                    progress.cell_finished(cell, _result_text(event.record))
                else:
                    failures += 1
                    progress.cell_failed(cell, _describe(cell), str(event.error))
                    with ResultsStore(results) as store:
                        store.add_failure(cell.key(), cell.as_dict(), str(event.error), event.traceback)
                    if str(event.error).startswith(StorageError.__name__):
                        raise StorageError(str(event.error))
        except StorageError as error:  # the disk is full: stop cleanly, keep what can be kept, say what is left
            progress.close()
            return _stopped_by_storage(error, event, results, [c for c in pending if c.key() not in ended])
        finally:
            progress.close()
    if queue.taken_elsewhere:
        print(f"{len(queue.taken_elsewhere)} cell(s) were finished or are being run by another sweep on {results}")
    if failures:
        print(f"earlyprune sweep: {failures} of {len(pending)} cells failed (recorded in {results}; they run "
              "again on the next `earlyprune sweep`)", file=sys.stderr, flush=True)
        return 1
    return 0
