"""Command line: ``earlyprune run|sweep|report|demo`` (``--help`` on each)."""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from dataclasses import fields
from pathlib import Path
from typing import Sequence


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    from .experiments.config import RunConfig

    defaults = RunConfig()
    add = parser.add_argument
    add("--dataset", default=defaults.dataset, help="mnist, fashion-mnist, cifar10, cifar100, mnist-sample")
    add("--model", default=defaults.model, help="e.g. lenet300, lenet5, vgg16, resnet20, resnet18")
    add("--method", default=defaults.method, help="a method of `earlyprune.methods()`, or 'dense'")
    add("--sparsity", type=float, default=defaults.sparsity, help="fraction of weights (or channels) removed")
    add("--epochs", type=int, default=defaults.epochs)
    add("--batch-size", type=int, default=defaults.batch_size)
    add("--lr", type=float, default=defaults.lr)
    add("--optimizer", default=defaults.optimizer, choices=["sgd", "adam", "adamw"])
    add("--momentum", type=float, default=defaults.momentum)
    add("--weight-decay", type=float, default=defaults.weight_decay)
    add("--lr-schedule", default=defaults.lr_schedule, choices=["step", "cosine", "onecycle", "constant"])
    add("--seed", type=int, default=defaults.seed)
    add("--scope", default=defaults.scope, choices=["global", "layer"])
    add("--iterations", type=int, default=None, help="pruning rounds (exponential schedule; SynFlow: 100)")
    add("--rule", default=defaults.rule, choices=["topk", "official"], help="selection rule (see DESIGN)")
    add("--when", default=defaults.when, help="init, early (EarlyCroP trigger) or epoch:N")
    add("--structured", action="store_true", help="remove whole channels physically")
    add("--prune-every", type=int, default=defaults.prune_every, help="activation_density: epochs between resizes")
    add("--width", type=float, default=defaults.width, help="width multiplier of the model")
    add("--init", default=None, help="kaiming, variance_scaling or default (the paper's by default)")
    add("--no-augment", dest="augment", action="store_false", help="no random crop/flip on CIFAR")
    add("--score-batches", type=int, default=defaults.score_batches, help="training batches to score on")
    add("--train-subset", type=int, default=None, help="train on the first N examples only")


def _config_from(args: argparse.Namespace):
    from .experiments.config import RunConfig

    names = {f.name for f in fields(RunConfig)}
    return RunConfig(**{k: v for k, v in vars(args).items() if k in names})


def _refuse_flags_that_do_not_apply(config) -> None:
    """A flag the chosen method ignores is an error on the command line, not a silent no-op."""
    from .errors import PruningError
    from .experiments.config import DENSE

    density = config.method == "activation_density"
    if config.prune_every != 1 and not density:
        raise PruningError("--prune-every applies to --method activation_density only")
    if config.method == DENSE and (config.structured or config.when != "init"):
        raise PruningError("--structured and --when do not apply to --method dense (nothing is pruned)")
    if density and config.when != "init":
        raise PruningError("--when does not apply to activation_density, which resizes every --prune-every epochs "
                           "from the start of training")


def cmd_run(args: argparse.Namespace) -> int:
    from .experiments.records import append_record
    from .experiments.run import run_experiment

    config = _config_from(args)
    _refuse_flags_that_do_not_apply(config)
    from .distributed import rank

    if args.skip_existing:
        if not args.store:
            raise SystemExit("--skip-existing looks the run up in the results store: add --store DIR")
        from .experiments.store import ResultsStore

        with ResultsStore(args.store) as store:
            if config.key() in store.keys():
                print(f"run {config.key()} is already in {args.store}: skipped")
                return 0
    record = run_experiment(config, data_dir=args.data_dir, cache_dir=args.cache_dir, threads=args.threads,
                            device=args.device)
    if rank() != 0:
        return 0  # under torchrun only rank 0 writes results
    out = Path(args.out)
    append_record(out, record)
    if args.store:
        from .experiments.store import ResultsStore

        with ResultsStore(args.store) as store:
            store.add(record)
    keys = ["method", "sparsity", "achieved_sparsity", "final_accuracy", "best_accuracy", "nonzero_params",
            "effective_flops", "scoring_seconds", "train_seconds"]
    print(json.dumps({k: record.get(k) for k in keys}, indent=1))
    print(f"record appended to {out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .experiments.demo import run_demo

    run_demo(out_dir=Path(args.out), epochs=args.epochs, threads=args.threads)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .experiments.sweep import run_sweep

    return run_sweep(args.config, results_dir=args.results, jobs=args.jobs, dry_run=args.dry_run,
                     data_dir=args.data_dir, device=args.device)


def cmd_report(args: argparse.Namespace) -> int:
    from .experiments.report import write_report

    write_report(args.results_dir, out_dir=args.out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="earlyprune", description="Prune neural networks before and early in training."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="prune, train and evaluate one model; append a JSON-lines record")
    _add_run_arguments(run)
    run.add_argument("--data-dir", default=None, help="where datasets live (default: $EARLYPRUNE_DATA)")
    run.add_argument("--cache-dir", default=None, help="where decoded arrays are cached")
    run.add_argument("--out", default="results/runs.jsonl", help="JSON-lines file the record is appended to")
    run.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    run.add_argument("--store", default=None, help="also add the record to the results store in this directory")
    run.add_argument("--skip-existing", action="store_true",
                     help="do nothing if a run with the same settings is already in --store (resuming a script)")
    run.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA when available; default)")
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser("demo", help="compare every method on the embedded MNIST sample (about a minute on 2 cores)")
    demo.add_argument("--out", default="demo", help="folder for the table and the plot")
    demo.add_argument("--epochs", type=int, default=3)
    demo.add_argument("--threads", type=int, default=None)
    demo.set_defaults(func=cmd_demo)

    sweep = sub.add_parser("sweep", help="run a grid of experiments from a TOML file, resumable")
    sweep.add_argument("config", help="TOML file naming the grid and the recipe")
    sweep.add_argument("--results", default=None, help="results directory (default: from the config)")
    sweep.add_argument("--jobs", type=int, default=1, help="parallel worker processes")
    sweep.add_argument("--dry-run", action="store_true", help="list the cells that would run")
    sweep.add_argument("--data-dir", default=None)
    sweep.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA when available; default)")
    sweep.set_defaults(func=cmd_sweep)

    rep = sub.add_parser("report", help="tables and plots of a results directory")
    rep.add_argument("results_dir")
    rep.add_argument("--out", default=None, help="where report.md and the PNGs go (default: results_dir)")
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


if __name__ == "__main__":
    sys.exit(main())
