"""One report from several results stores: the shards of a job array, sweeps run on several machines.

``earlyprune report`` accepts stores (a folder holding ``results.sqlite``, or the file itself) and folders of
stores (every ``results.sqlite`` beneath, e.g. ``RESULTS/shard-K-of-N/``). Their runs are merged by run key,
so a run stored in several of them counts once. Copies of one run normally agree: a run is deterministic
for its settings, and only circumstances differ (when and where it ran, how long it took). Copies whose
results differ (an edited model, another library version under the same key) are conflicts: one is kept,
the same one whatever the order of the stores (the one that finished first, ties broken by content),
and each conflict is reported on stderr. The merged runs keep the order in which they were first found,
store by store, so a report's rows may come in another order than one sweep's; their values are the same.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from .store import STORE_NAME, ResultsStore

#: Record fields that tell the circumstances of a run, not its result: copies may differ in them.
CIRCUMSTANCES = frozenset({
    "finished_at", "train_seconds", "scoring_seconds", "peak_memory_mb", "earlyprune_version", "torch_version",
    "python_version", "device", "processes", "hostname", "threads", "cpu_allocator", "energy_joules",
    "energy_source",
})


def find_stores(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    """The store folders named by ``paths`` (each a store folder, a ``results.sqlite`` file, or a folder of
    stores, searched recursively), in sorted order per path, each once."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    found: list[Path] = []
    for given in map(Path, paths):
        if given.is_file() and given.name == STORE_NAME:
            stores = [given.parent]
        elif given.is_dir():
            stores = sorted(p.parent for p in given.rglob(STORE_NAME) if p.is_file())
        elif given.exists():
            raise FileNotFoundError(f"{given} is not a results store: give a results folder, its {STORE_NAME}, "
                                    "or a folder of them")
        else:
            raise FileNotFoundError(f"no results store in {given}: it does not exist")
        if not stores:
            raise FileNotFoundError(f"no results store in {given} (expected {given / STORE_NAME}, or folders "
                                    f"holding one, such as the shard-K-of-N folders of a sharded sweep)")
        found += [s for s in stores if s not in found]
    return found


def result_view(record: dict[str, Any]) -> dict[str, Any]:
    """What two copies of one run must share: the record without its circumstances (and its curve
    without the seconds of each epoch)."""
    view = {k: v for k, v in record.items() if k not in CIRCUMSTANCES}
    if isinstance(view.get("curve"), list):
        view["curve"] = [{k: v for k, v in point.items() if k != "seconds"} if isinstance(point, dict) else point
                         for point in view["curve"]]
    return view


@dataclass
class Merged:
    """The merged runs, one per key, and what merging found."""

    records: list[dict[str, Any]]
    stores: list[Path]
    duplicates: int = 0  # copies dropped that agreed with the one kept
    conflicts: list[tuple[str, list[Path]]] = field(default_factory=list)  # key, the stores that disagree


def _rank(record: dict[str, Any]) -> tuple[str, str]:
    return (str(record.get("finished_at") or ""), json.dumps(record, sort_keys=True, default=str))


def merge_records(sources: Iterable[tuple[Path, dict[str, Any]]]) -> Merged:
    """Merge ``(store, record)`` pairs by run key (see the module's docstring); records keep the order in
    which their key first appears."""
    copies: dict[str, list[tuple[Path, dict[str, Any]]]] = {}
    stores: list[Path] = []
    for store, record in sources:
        copies.setdefault(record["key"], []).append((store, record))
        if store not in stores:
            stores.append(store)
    merged = Merged(records=[], stores=stores)
    for key, found in copies.items():
        kept = min(found, key=lambda item: _rank(item[1]))[1]
        merged.records.append(kept)
        views = {json.dumps(result_view(r), sort_keys=True, default=str) for _, r in found}
        if len(views) > 1:
            merged.conflicts.append((key, sorted({s for s, _ in found})))
        else:
            merged.duplicates += len(found) - 1
    return merged


def read_stores(paths: str | Path | Sequence[str | Path]) -> Merged:
    """The runs of every store named by ``paths`` (:func:`find_stores`), merged by run key; each conflict
    is reported on stderr (the run kept is the one that finished first)."""
    sources: list[tuple[Path, dict[str, Any]]] = []
    stores = find_stores(paths)
    for store_dir in stores:
        with ResultsStore(store_dir, create=False) as store:
            sources += [(store_dir, record) for record in store.records()]
    merged = merge_records(sources)
    merged.stores = stores  # those without a finished run too (a shard may hold none)
    for key, where in merged.conflicts:
        print(f"report: warning: run {key} has different results in {', '.join(map(str, where))}; kept the "
              "one that finished first", file=sys.stderr)
    return merged
