"""Command line: ``earlyprune run|sweep|report|demo`` (``--help`` on each)."""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from pathlib import Path
from typing import Sequence

_GROUPS = {"data": "data", "network": "model", "training": "training", "pruning": "pruning"}


class _RunHelp(argparse.HelpFormatter):
    """Help of ``earlyprune run``: each flag's help, the choices of a name setting (listed when the help is
    shown, from the registries), and its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        declaration = getattr(action, "declaration", None)
        if declaration is not None:
            choices = declaration.choices()
            if choices is not None:
                text += f"; one of: {', '.join(choices)}"
            default = declaration.default
            if default is None:
                return text + f" (default: {declaration.metadata['none']})"
            if isinstance(default, tuple):
                return text + f" (default: {' '.join(map(str, default))})"
            return text + " (default: %(default)s)"
        if "default" not in text and action.default not in (None, [], argparse.SUPPRESS) \
                and action.nargs != 0:  # not for a flag without a value (store_true), nor an empty list
            text += " (default: %(default)s)"
        return text


def _flag_value(kind: type):
    """argparse type of a flag: the number as typed, else the text itself, which the setting's check then
    refuses with the same message as a sweep file's bad value (``--lr fast`` as ``lr = "fast"``)."""

    def convert(text: str):
        try:
            return kind(text)
        except ValueError:
            return text

    convert.__name__ = kind.__name__
    return convert


class _Given(argparse.Action):
    """Store a flag's value and note that it was given (``--sparsity 0.9`` beside ``--budget`` is refused,
    though 0.9 is the default)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.given = {*getattr(namespace, "given", ()), self.dest}


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per declared setting of :class:`RunConfig` (``--batch-size`` for ``batch_size``), with its
    help and default; ``--option NAME=VALUE`` for the criterion's options."""
    from .experiments.config import RunConfig

    groups = {"": parser, **{part: parser.add_argument_group(f"{title} settings") for part, title in _GROUPS.items()}}
    for declaration in RunConfig.settings():
        group = groups[declaration.part]
        flag = "--" + declaration.name.replace("_", "-")
        if declaration.kind is dict:  # the criterion's options
            action = group.add_argument(
                "--option", dest="option", action="append", default=[], metavar="NAME=VALUE",
                help="an option of the method, repeatable (e.g. --option temperature=100 for grasp, "
                     "--option last_epoch=6 for activation_density; VALUE: a number, true, false, null or text); "
                     "earlyprune.experiments.config.method_option_defaults(METHOD) lists them (default: none, so "
                     "every option keeps the method's default)")
            continue
        if declaration.kind is bool:
            action = group.add_argument(flag, dest=declaration.name, action=argparse.BooleanOptionalAction,
                                        default=declaration.default, help=declaration.help)
        elif declaration.kind is tuple:
            action = group.add_argument(flag, dest=declaration.name, nargs="+", type=_flag_value(float),
                                        default=declaration.default, metavar="X", help=declaration.help)
        else:
            action = group.add_argument(flag, dest=declaration.name, type=_flag_value(declaration.kind),
                                        default=declaration.default, help=declaration.help, action=_Given)
        action.declaration = declaration  # type: ignore[attr-defined]


def _config_from(args: argparse.Namespace):
    from .errors import PruningError
    from .experiments.config import RunConfig, parse_option, setting_names

    options = {}
    for text in args.option:
        name, value = parse_option(text)
        if name in options:
            raise PruningError(f"--option {name} given twice")
        options[name] = value
    return RunConfig.from_dict({**{name: getattr(args, name) for name in setting_names()}, "options": options})


def _refuse_flags_that_do_not_apply(config, given: set[str] = frozenset()) -> None:
    """A flag the chosen method ignores is an error on the command line, not a silent no-op. ``given``: the
    settings whose flags were typed."""
    from .errors import PruningError
    from .experiments.config import DENSE

    pruning = config.pruning
    if pruning.budget is not None and "sparsity" in given:
        raise PruningError(f"--budget {pruning.budget} and --sparsity both say how much to prune: give one")
    density = pruning.method == "activation_density"
    if pruning.prune_every != 1 and not density:
        raise PruningError("--prune-every applies to --method activation_density only")
    if pruning.method == DENSE and (pruning.structured or pruning.when != "init"):
        raise PruningError("--structured and --when do not apply to --method dense (nothing is pruned)")
    if density and pruning.when != "init":
        raise PruningError("--when does not apply to activation_density, which resizes every --prune-every epochs "
                           "from the start of training")
    if pruning.structured and (pruning.scope != "global" or pruning.rule != "topk" or pruning.iterations):
        raise PruningError("--scope, --rule and --iterations apply to unstructured pruning only: with --structured "
                           "channels are ranked globally and the kept count is exact")


def cmd_run(args: argparse.Namespace) -> int:
    from .experiments.records import check_output_file, keep_record
    from .experiments.run import resolve_device, run_experiment, with_threads

    config = with_threads(_config_from(args))  # the thread count is part of the key (see docs/reliability.md)
    _refuse_flags_that_do_not_apply(config, getattr(args, "given", set()))
    from .distributed import rank

    out = check_output_file(args.out)  # before training: a directory or an unwritable folder is refused now
    resolve_device(args.device)
    if args.store:
        from .experiments.store import ResultsStore

        with ResultsStore(args.store) as store:  # refused now if it is not a results store
            stored = config.key() in store.keys()
    if args.skip_existing:
        if not args.store:
            raise SystemExit("--skip-existing looks the run up in the results store: add --store DIR")
        if _already_recorded(config.key(), out, args.store, stored):
            print(f"run {config.key()} is already in {args.store}: skipped")
            return 0
    record = run_experiment(config, data_dir=args.data_dir, cache_dir=args.cache_dir, device=args.device,
                            tensorboard=args.tensorboard)
    if rank() != 0:
        return 0  # under torchrun only rank 0 writes results
    written, failed = keep_record(record, out, args.store)
    keys = ["method", "sparsity", *(["budget"] if config.pruning.budget else []), "achieved_sparsity", "task",
            "final_accuracy", "best_accuracy", "metric_name", "final_metric", "best_metric", "nonzero_params",
            "effective_flops", "scoring_seconds", "train_seconds"]
    print(json.dumps({k: record.get(k) for k in keys}, indent=1))
    if not failed:
        print(f"record appended to {out}")
        return 0
    for problem in failed:
        print(f"earlyprune run: error: could not write the record: {problem}", file=sys.stderr)
    if written:
        print(f"earlyprune run: the finished run's record is kept in {', '.join(written)}", file=sys.stderr)
    else:
        print("earlyprune run: nowhere to write the record; here it is:\n"
              + json.dumps(record, sort_keys=True, default=str), file=sys.stderr)
    return 1


def _already_recorded(key: str, out: Path, store_dir: str, in_store: bool) -> bool:
    """Whether run ``key`` is in the store or in ``out``; one found in only one of them is copied into the
    other first (a run killed between writing the two is then complete, never run twice)."""
    from .experiments.records import append_record, read_records
    from .experiments.store import ResultsStore

    in_out = None
    if out.exists():
        in_out = next((r for r in read_records(out) if r.get("key") == key), None)
    if in_store and in_out is None:
        with ResultsStore(store_dir) as store:
            record = next(r for r in store.records() if r.get("key") == key)
        append_record(out, record)
    elif in_out is not None and not in_store:
        with ResultsStore(store_dir) as store:
            store.add(in_out)
    return in_store or in_out is not None


def cmd_demo(args: argparse.Namespace) -> int:
    from .experiments.demo import run_demo

    run_demo(out_dir=Path(args.out), epochs=args.epochs, threads=args.threads)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .experiments.sweep import run_sweep

    return run_sweep(args.config, results_dir=args.results, jobs=args.jobs, dry_run=args.dry_run,
                     data_dir=args.data_dir, device=args.device, executor=args.executor, address=args.address,
                     num_cpus=args.num_cpus, num_gpus=args.num_gpus, shard=args.shard, tensorboard=args.tensorboard)


def cmd_report(args: argparse.Namespace) -> int:
    from .experiments.report import write_report

    sources = args.results_dir[0] if len(args.results_dir) == 1 else args.results_dir
    write_report(sources, out_dir=args.out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="earlyprune", description="Prune neural networks before and early in training."
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"earlyprune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="prune, train and evaluate one model; append a JSON-lines record",
                         formatter_class=_RunHelp)
    _add_run_arguments(run)
    run.add_argument("--data-dir", default=None, help="where datasets live (default: $EARLYPRUNE_DATA)")
    run.add_argument("--cache-dir", default=None,
                     help="where decoded arrays are cached (default: $EARLYPRUNE_CACHE, else ~/.cache/earlyprune)")
    run.add_argument("--out", default="results/runs.jsonl", help="JSON-lines file the record is appended to")
    run.add_argument("--store", default=None, help="also add the record to the results store in this directory")
    run.add_argument("--skip-existing", action="store_true",
                     help="do nothing if a run with the same settings is already in --store (resuming a script)")
    run.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto: CUDA when available")
    run.add_argument("--tensorboard", default=None, metavar="DIR",
                     help="also log the run for TensorBoard into DIR/<run key>: per-epoch losses, metrics, learning "
                          "rate, parameter count and sparsity, and the prunes (pip install 'earlyprune[tensorboard]')")
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser("demo", help="compare every method on the embedded MNIST sample (about a minute on 2 cores)")
    demo.add_argument("--out", default="demo", help="folder for the table and the plot (default: demo)")
    demo.add_argument("--epochs", type=int, default=3, help="training epochs of each method (default: 3)")
    demo.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's own)")
    demo.set_defaults(func=cmd_demo)

    sweep = sub.add_parser("sweep", help="run a grid of experiments from a TOML file, resumable")
    sweep.add_argument("config", help="TOML file naming the grid and the recipe")
    sweep.add_argument("--results", default=None, help="results directory (default: from the config)")
    sweep.add_argument("--jobs", type=int, default=1, help="parallel worker processes (default: 1)")
    sweep.add_argument("--dry-run", action="store_true", help="list the cells that would run")
    sweep.add_argument("--data-dir", default=None, help="where datasets live (default: $EARLYPRUNE_DATA)")
    sweep.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA when available; default)")
    sweep.add_argument("--executor", default="local", choices=("local", "ray"),
                       help="where the cells run: local processes, or Ray tasks (pip install 'earlyprune[ray]'); "
                            "this process alone writes the store either way (docs/cluster.md) (default: local)")
    sweep.add_argument("--address", default=None, metavar="HOST:PORT",
                       help="the Ray cluster to use (ray start --head's address, or auto); default: $RAY_ADDRESS, "
                            "else a Ray instance started on this machine")
    sweep.add_argument("--num-cpus", type=float, default=None,
                       help="CPUs (and torch threads) per cell (default: [resources] num_cpus, else 1; [recipe] "
                            "threads wins; the thread count is part of each cell's key, --jobs never changes it)")
    sweep.add_argument("--num-gpus", type=float, default=None,
                       help="GPUs per Ray task, fractions allowed (default: [resources] num_gpus, else 0)")
    sweep.add_argument("--shard", default=None, metavar="K/N",
                       help="run only the K-th (from 0) of N disjoint slices of the grid, into RESULTS/shard-K-of-N "
                            "(job arrays: --shard $SLURM_ARRAY_TASK_ID/N); earlyprune report RESULTS merges them")
    sweep.add_argument("--tensorboard", default=None, metavar="DIR",
                       help="log every cell for TensorBoard into DIR/<run key> (pip install 'earlyprune[tensorboard]')")
    sweep.set_defaults(func=cmd_sweep)

    rep = sub.add_parser("report", help="tables and plots of a results directory")
    rep.add_argument("results_dir", nargs="+",
                     help="a results directory written by earlyprune sweep, a folder of them (the shard-K-of-N "
                          "folders of --shard), or several: their runs are merged by run key")
    rep.add_argument("--out", default=None, help="where report.md and the PNGs go (default: results_dir; "
                                                 "needed for several)")
    rep.set_defaults(func=cmd_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, sqlite3.DatabaseError) as exc:
        # Bad input (PruningError, DataFormatError, unknown names are ValueErrors), missing data, a corrupt
        # results store: say what is wrong, without a traceback.
        print(f"earlyprune {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading: not an error of ours
        sys.stderr.close()
        return 0
    except OSError as exc:
        # A full disk (StorageError: ENOSPC and the path), a directory given for a file, no permission.
        message = exc.strerror or str(exc)
        if exc.filename and str(exc.filename) not in message:
            message += f": {exc.filename}"
        print(f"earlyprune {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
