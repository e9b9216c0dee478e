"""Where the cells of a sweep run: in the sweep process, in local worker processes, or as Ray tasks.

An executor takes cells from an iterator one at a time, only when it has room to start one, runs them, and
yields what happens: :class:`Started` when a cell starts and :class:`Finished` when it ends, with its record
or its error. Cells not yet handed out stay with the sweep process (the driver), so a driver that dies
leaves nothing queued anywhere, and the driver alone writes the results store: workers, local or on other
machines, only compute and send their record back. A cell whose worker dies (killed, out of memory, a
crash in C code, a lost node) is a :class:`Finished` with an error, like a cell that raises: the sweep
records it as failed and runs it again on the next invocation.

- :class:`SerialExecutor` runs the cells one after the other in the sweep process (``--jobs 1``).
- :class:`ProcessPoolExecutor` runs ``jobs`` worker processes on this machine, each one cell at a time;
  they end as soon as the sweep process dies, however it dies (SIGKILL included).
- :class:`RayExecutor` runs each cell as a Ray task asking for the cell's :class:`Resources`, on an
  existing cluster (``address``) or on a Ray instance it starts on this machine. A task is never retried by
  Ray itself (``max_retries=0``): a failure is the sweep's to record. When the driver dies, Ray ends the
  tasks it owns. Workers import :mod:`earlyprune`: on one machine the same virtual environment does; on a
  cluster, a shared environment or a Ray ``runtime_env`` (see docs/cluster.md).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Union

from ..errors import PruningError
from .config import RunConfig


class ExecutorError(PruningError):
    """An executor that cannot be used as asked (unknown name, Ray not installed, bad resources)."""


#: The executors ``earlyprune sweep --executor`` knows.
EXECUTORS = ("local", "ray")

RAY_INSTALL_HINT = "pip install 'earlyprune[ray]'"


@dataclass(frozen=True)
class Resources:
    """What one cell asks for: CPUs (also its torch threads) and GPUs. ``num_cpus`` None: one CPU (one
    thread). Fractions of a GPU let several cells share one on Ray."""

    num_cpus: float | None = None
    num_gpus: float = 0.0

    def __post_init__(self) -> None:
        if self.num_cpus is not None and not (_is_number(self.num_cpus) and self.num_cpus > 0):
            raise ExecutorError(f"num_cpus must be a number > 0, got {self.num_cpus!r}")
        if not (_is_number(self.num_gpus) and self.num_gpus >= 0):
            raise ExecutorError(f"num_gpus must be a number >= 0, got {self.num_gpus!r}")

    def threads(self, default: int) -> int:
        """The torch threads of a cell: its CPUs (at least one), ``default`` when it asks for none."""
        return default if self.num_cpus is None else max(1, int(self.num_cpus))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class CellJob:
    """What a worker needs to run any cell of the sweep, besides the cell."""

    data_dir: str | None = None
    threads: int = 1
    device: str | None = None
    tensorboard: str | None = None  # a folder: each cell logs for TensorBoard into tensorboard/<its key>


@dataclass(frozen=True)
class Started:
    """A cell was handed to a worker (for a Ray task: submitted to the cluster, which has room for it)."""

    cell: RunConfig


@dataclass(frozen=True)
class Finished:
    """A cell ended: ``record`` when it finished, else ``error`` (one line) and the ``traceback``, if any."""

    cell: RunConfig
    record: dict[str, Any] | None = None
    error: str | None = None
    traceback: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


Event = Union[Started, Finished]


def run_cell(cell: RunConfig, job: CellJob) -> dict[str, Any]:
    """Run one cell and return its record (what every executor's workers call)."""
    from . import run

    return run.run_experiment(cell, data_dir=job.data_dir, progress=False, threads=job.threads, device=job.device,
                              tensorboard=job.tensorboard)


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _attempt(cell: RunConfig, job: CellJob) -> Finished:
    try:
        return Finished(cell, record=run_cell(cell, job))
    except Exception as exc:  # noqa: BLE001 - one cell's failure must not stop the others
        return Finished(cell, error=error_text(exc), traceback=traceback.format_exc())


class Executor(ABC):
    """Runs cells and reports :class:`Started`/:class:`Finished` events, in the order they happen."""

    name: str = ""

    @abstractmethod
    def run(self, cells: Iterable[RunConfig]) -> Iterator[Event]:
        """Run ``cells``, taking the next one only when there is room to start it, and yield the events.
        Every cell taken gets exactly one :class:`Finished`. Closing the iterator early stops the workers."""


def local_executor(job: CellJob, jobs: int = 1) -> Executor:
    """The local executor: serial in the sweep process for ``jobs <= 1``, else a pool of ``jobs`` workers."""
    return SerialExecutor(job) if jobs <= 1 else ProcessPoolExecutor(job, jobs)


class SerialExecutor(Executor):
    """One cell after the other, in the sweep process itself."""

    name = "local"

    def __init__(self, job: CellJob) -> None:
        self.job = job

    def run(self, cells: Iterable[RunConfig]) -> Iterator[Event]:
        for cell in cells:
            yield Started(cell)
            yield _attempt(cell, self.job)


# --- local worker processes: one cell at a time each, ending with the sweep process -------------------------


class ProcessPoolExecutor(Executor):
    """``jobs`` worker processes (spawned) on this machine. A worker that dies has its cell reported as
    failed and is replaced by a new one for the next cell (so each death costs one cell, never more)."""

    name = "local"

    def __init__(self, job: CellJob, jobs: int) -> None:
        self.job = job
        self.jobs = max(1, jobs)

    def run(self, cells: Iterable[RunConfig]) -> Iterator[Event]:
        import multiprocessing
        from multiprocessing.connection import wait

        ctx = multiprocessing.get_context("spawn")
        source = iter(cells)
        workers: list[_Worker] = []

        def start(worker: _Worker) -> Started | None:
            cell = next(source, None)
            worker.give(cell)
            return None if cell is None else Started(cell)

        try:
            for _ in range(self.jobs):
                cell = next(source, None)
                if cell is None:
                    break
                workers.append(_Worker(ctx, self.job))
                workers[-1].give(cell)
                yield Started(cell)
            while any(w.cell is not None for w in workers):
                busy = [w for w in workers if w.cell is not None]
                wait([w.conn for w in busy] + [w.process.sentinel for w in busy])
                for worker in busy:
                    message = None
                    if worker.conn.poll():
                        try:
                            message = worker.conn.recv()
                        except (EOFError, OSError):
                            message = None
                    elif worker.process.is_alive():
                        continue  # still running its cell
                    cell = worker.cell
                    assert cell is not None
                    if message is not None:
                        status, value, trace = message
                        yield (Finished(cell, record=value) if status == "ok"
                               else Finished(cell, error=value, traceback=trace))
                        event = start(worker)
                        if event is not None:
                            yield event
                        continue
                    # the worker died in the middle of its cell (killed, out of memory, a crash in C code)
                    worker.process.join(5)
                    yield Finished(cell, error=f"the worker process died while running the cell (exit code "
                                               f"{worker.process.exitcode})")
                    worker.cell = None
                    worker.stop()
                    workers.remove(worker)
                    cell = next(source, None)
                    if cell is not None:
                        replacement = _Worker(ctx, self.job)
                        workers.append(replacement)
                        replacement.give(cell)
                        yield Started(cell)
            for worker in workers:
                worker.process.join(30)
        finally:
            for worker in workers:
                worker.stop()


class _Worker:
    """A worker process and its end of the pipe. It holds at most the one cell it runs: the cells not yet
    started stay with the sweep process, so nothing is left to run if that dies."""

    def __init__(self, ctx: Any, job: CellJob) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, os.getpid(), job), daemon=True,
                                   name="earlyprune-sweep-worker")
        self.process.start()
        child.close()
        self.cell: RunConfig | None = None

    def give(self, cell: RunConfig | None) -> None:
        self.cell = cell
        try:
            self.conn.send(cell)  # None: no more cells, exit
        except OSError:  # it died meanwhile: seen as a death by the caller's next wait
            pass

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.terminate()
        self.process.join(5)
        if self.process.is_alive():  # pragma: no cover - terminate is not refused by our workers
            self.process.kill()
            self.process.join()
        self.conn.close()


def _worker_main(conn: Any, parent_pid: int, job: CellJob) -> None:
    """A worker: run the cells the sweep process sends, one at a time, until it sends None or dies; send
    each cell's record (or its error) back."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the sweep process stops its workers itself
    _end_with_parent(parent_pid)
    while True:
        try:
            cell = conn.recv()  # EOFError as soon as the sweep process is gone
        except (EOFError, OSError, KeyboardInterrupt):
            os._exit(1)
        if cell is None:
            return
        outcome = _attempt(cell, job)
        answer = ("ok", outcome.record, None) if outcome.ok else ("failed", outcome.error, outcome.traceback)
        if os.getppid() != parent_pid:
            os._exit(1)
        try:
            conn.send(answer)
        except (OSError, EOFError):
            os._exit(1)


def _end_with_parent(parent_pid: int) -> None:
    """Make this process end as soon as the process ``parent_pid`` that started it dies, even in the
    middle of a cell: on Linux the kernel kills it (PR_SET_PDEATHSIG); everywhere a watchdog thread
    waits on the parent's death (multiprocessing's parent sentinel, else polling the parent pid)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            pr_set_pdeathsig = 1
            libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - no prctl: the watchdog below remains
            pass
    if os.getppid() != parent_pid:  # it died before prctl took effect
        os._exit(1)

    def watch() -> None:
        import multiprocessing

        parent = multiprocessing.parent_process()
        while True:
            if parent is not None:
                parent.join(1.0)  # returns at once when the parent is gone
            else:  # pragma: no cover
                time.sleep(1.0)
            if os.getppid() != parent_pid or (parent is not None and not parent.is_alive()):
                os._exit(1)

    threading.Thread(target=watch, name="earlyprune-parent-watch", daemon=True).start()


# --- Ray --------------------------------------------------------------------------------------------------


def import_ray() -> Any:
    """The ``ray`` module, or an :class:`ExecutorError` saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ExecutorError(f"--executor ray needs Ray, which is not installed: {RAY_INSTALL_HINT}") from exc
    return ray


def _ray_cell(cell: RunConfig, job: CellJob) -> tuple[str, Any, str | None]:
    """The Ray task: one cell, its record or its error (a cell that raises is not a Ray failure)."""
    outcome = _attempt(cell, job)
    return ("ok", outcome.record, None) if outcome.ok else ("failed", outcome.error, outcome.traceback)


class RayExecutor(Executor):
    """Each cell a Ray task asking for ``resources`` (one CPU when it says nothing), at most as many in
    flight as the cluster has room for (re-read as cells end, so nodes that join are used).

    ``address``: an existing cluster (``HOST:PORT`` of ``ray start --head``, or ``auto``); None: the
    cluster of ``RAY_ADDRESS`` if set, else a Ray instance started on this machine for the sweep and shut
    down after it. A Ray already initialised in this process (``ray.init`` by the caller) is used as it is
    and left running."""

    name = "ray"

    def __init__(self, job: CellJob, resources: Resources = Resources(), address: str | None = None,
                 init_options: dict[str, Any] | None = None) -> None:
        self.job = job
        self.resources = resources
        self.address = address
        self.init_options = dict(init_options or {})
        self.ray = import_ray()

    def _slots(self) -> int:
        """How many cells the cluster can run at once (at least one: an autoscaler may add nodes)."""
        total = self.ray.cluster_resources()
        room = [total.get("CPU", 0.0) / (self.resources.num_cpus or 1.0)]
        if self.resources.num_gpus:
            room.append(total.get("GPU", 0.0) / self.resources.num_gpus)
        return max(1, int(min(room) + 1e-9))

    def run(self, cells: Iterable[RunConfig]) -> Iterator[Event]:
        ray = self.ray
        started_here = not ray.is_initialized()
        if started_here:
            ray.init(address=self.address, **self.init_options)
        task = ray.remote(_ray_cell).options(num_cpus=self.resources.num_cpus or 1,
                                             num_gpus=self.resources.num_gpus, max_retries=0,
                                             retry_exceptions=False, name="earlyprune-cell")
        source = iter(cells)
        in_flight: dict[Any, RunConfig] = {}
        exhausted = False
        try:
            while True:
                while not exhausted and len(in_flight) < self._slots():
                    cell = next(source, None)
                    if cell is None:
                        exhausted = True
                        break
                    in_flight[task.remote(cell, self.job)] = cell
                    yield Started(cell)
                if not in_flight:
                    return
                ready, _ = ray.wait(list(in_flight), num_returns=1)
                for ref in ready:
                    cell = in_flight.pop(ref)
                    try:
                        status, value, trace = ray.get(ref)
                    except ray.exceptions.RayError as exc:  # the worker or its node died, the task was lost
                        yield Finished(cell, error=f"the Ray task running the cell was lost "
                                                   f"({type(exc).__name__}: {_first_line(exc)})")
                        continue
                    yield (Finished(cell, record=value) if status == "ok"
                           else Finished(cell, error=value, traceback=trace))
        finally:
            for ref in in_flight:  # the sweep stopped early (Ctrl-C, an error): stop its tasks
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - best effort; Ray ends them with the driver anyway
                    pass
            if started_here:
                ray.shutdown()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no details"


def make_executor(name: str, job: CellJob, jobs: int = 1, resources: Resources = Resources(),
                  address: str | None = None) -> Executor:
    """The executor called ``name`` (``local`` or ``ray``), with an error saying what is wrong otherwise."""
    if name == "local":
        if address is not None:
            raise ExecutorError("--address is the Ray cluster's: it needs --executor ray")
        if resources.num_gpus:
            raise ExecutorError("num_gpus is for --executor ray; the local executor uses --device")
        return local_executor(job, jobs)
    if name == "ray":
        if jobs > 1:
            raise ExecutorError("--jobs is the local executor's; with --executor ray the cluster's resources "
                                "and each cell's num_cpus/num_gpus decide how many cells run at once")
        return RayExecutor(job, resources, address)
    raise ExecutorError(f"unknown executor {name!r}; valid: {', '.join(EXECUTORS)}")


_RESOURCE_KEYS = ("num_cpus", "num_gpus")


def load_resources(path: Any, num_cpus: float | None = None, num_gpus: float | None = None) -> Resources:
    """The ``[resources]`` table of the sweep file ``path`` (``num_cpus``, ``num_gpus``: what each cell
    asks for), with ``num_cpus``/``num_gpus`` (the flags) taking precedence when given. A bad value is a
    :class:`.sweep.ConfigError` naming its line."""
    from pathlib import Path

    from .sweep import ConfigError, _where, tomllib

    path = Path(path)
    text = path.read_text(encoding="utf-8")
    table = tomllib.loads(text).get("resources", {})  # load_sweep has read the file: it is valid TOML
    if not isinstance(table, dict):
        raise ConfigError(_where(path, text, "resources", "resources must be a table: [resources] with "
                                 "`num_cpus = ...` and `num_gpus = ...` under it", section=""))
    for key in table:
        if key not in _RESOURCE_KEYS:
            raise ConfigError(_where(path, text, key, f"[resources] has unknown key {key!r}; valid: "
                                     f"{', '.join(_RESOURCE_KEYS)}", section="resources"))
    values = {key: table[key] for key in _RESOURCE_KEYS if key in table}
    for key, value in values.items():
        try:
            Resources(**{key: value})
        except ExecutorError as exc:
            raise ConfigError(_where(path, text, key, f"[resources] {exc}", section="resources")) from exc
    if num_cpus is not None:
        values["num_cpus"] = num_cpus
    if num_gpus is not None:
        values["num_gpus"] = num_gpus
    return Resources(**values)
