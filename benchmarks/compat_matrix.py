"""Compatibility matrix: which torchvision and timm models every method prunes, unstructured and structured.

For each model (random weights, ``num_classes=10``) and each method, a deep copy of the model is pruned with
``ep.prune(copy, method, 0.9, data=[batch])`` (unstructured) and ``ep.prune_channels(copy, method, 0.5,
data=[batch])`` (structured, for the methods with a structured form), on one random batch of shape
``(4, 3, size, size)`` with random targets. Each cell is one of

* **works**: the call returned and a forward pass on a new batch gives finite ``(4, 10)`` logits; recorded are
  the sparsity measured over the prunable weights (counted zeros, compared with ``masks.info``), the layers
  named in ``masks.info["collapsed"]``, the collapse warnings, for structured pruning the parameters before
  and after and ``info["left_whole"]``;
* **refused**: a :class:`earlyprune.PruningError` (the message says why);
* **fails**: any other exception (its type and first line; the innermost frames go in the notes);
* **timeout**: the cell ran past ``--timeout`` seconds (``signal.alarm``, checked between Python calls).

The result is written as a markdown table (one row per model, one column per method and structure) with a
legend, the run's date, machine, command and versions, and the raw notes, to ``--out``.

This script is NOT part of the test suite, CI or the package's dependencies. It needs torchvision and timm,
which on the project's machines import only beside torch 2.14.1, so it runs in a separate virtual
environment outside the repository::

    python3 -m venv /work/compat-venv
    /work/compat-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 timm
    /work/compat-venv/bin/pip install --no-deps -e /work/main
    /work/compat-venv/bin/pip install numpy 'torch-pruning>=1.4' tqdm matplotlib
    /work/compat-venv/bin/python benchmarks/compat_matrix.py --out docs/compatibility.md

Usage: python benchmarks/compat_matrix.py [--models tv:resnet18 timm:convnext_atto ...] [--methods snip crop ...]
       [--structured-methods random crop ...] [--size 64] [--timeout 120] [--threads 2] [--out docs/compatibility.md]
       [--json results.json]
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch

import earlyprune as ep
from earlyprune.prunable import prunable_parameters

#: ``source:name``; torchvision builders take ``weights=None``, timm's ``pretrained=False`` (nothing is
#: downloaded). The ViTs are built for the ``--size`` input (torchvision ``image_size``, timm ``img_size``).
DEFAULT_MODELS = [
    "tv:resnet18", "tv:mobilenet_v2", "tv:efficientnet_b0", "tv:vgg11_bn", "tv:densenet121", "tv:vit_b_16",
    "timm:convnext_atto", "timm:resnet18", "timm:vit_tiny_patch16_224", "timm:mobilenetv3_small_100",
    "timm:efficientnet_b0",
]
UNSTRUCTURED = ["random", "magnitude", "snip", "grasp", "synflow", "prospr", "crop"]
STRUCTURED = ["random", "magnitude", "snip", "crop"]
#: Per-method options of the unstructured call (SynFlow's 100 default rounds cut to 3 to keep the run short).
OPTIONS = {"synflow": {"iterations": 3}}
UNSTRUCTURED_SPARSITY = 0.9
STRUCTURED_SPARSITY = 0.5
NUM_CLASSES = 10
BATCH = 4
VIT_NAMES = ("vit_", "deit_")


class CellTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise CellTimeout


def build(spec: str, size: int) -> torch.nn.Module:
    source, _, name = spec.partition(":")
    if source == "tv":
        import torchvision

        kwargs = {"weights": None, "num_classes": NUM_CLASSES}
        if name.startswith(VIT_NAMES):
            kwargs["image_size"] = size
        return torchvision.models.get_model(name, **kwargs)
    if source == "timm":
        import timm

        kwargs = {"pretrained": False, "num_classes": NUM_CLASSES}
        if name.startswith(VIT_NAMES):
            kwargs["img_size"] = size
        return timm.create_model(name, **kwargs)
    raise SystemExit(f"model {spec!r}: write tv:NAME (torchvision) or timm:NAME")


def batch(size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(BATCH, 3, size, size, generator=g), torch.randint(0, NUM_CLASSES, (BATCH,), generator=g)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "(no message)"


def trace_tail(exc: BaseException, frames: int = 4) -> list[str]:
    """The innermost ``frames`` frames, as ``file:line in function: code``, shortened to the package path."""
    out = []
    for fr in traceback.extract_tb(exc.__traceback__)[-frames:]:
        path = fr.filename
        for marker in ("site-packages/", "/src/"):
            if marker in path:
                path = path.split(marker, 1)[1]
                break
        out.append(f"{path}:{fr.lineno} in {fr.name}: {(fr.line or '').strip()}")
    return out


def check_forward(model: torch.nn.Module, inputs: torch.Tensor) -> str | None:
    """None when the model maps ``inputs`` to finite (4, 10) logits, else what is wrong."""
    model.eval()
    with torch.no_grad():
        out = model(inputs)
    if not isinstance(out, torch.Tensor):
        return f"forward returned {type(out).__name__}"
    if tuple(out.shape) != (BATCH, NUM_CLASSES):
        return f"forward gave shape {tuple(out.shape)}"
    if not torch.isfinite(out).all():
        return "forward gave non-finite logits"
    return None


def zero_channel_scores(model: torch.nn.Module, method: str, data) -> bool | None:
    """Whether every channel score ``method`` gives ``model`` on ``data`` is 0 (``ep.prune`` refuses all-zero
    scores; this tells whether a structured cell that "works" selected channels arbitrarily). None when the
    scores cannot be taken (internal API of earlyprune.structured)."""
    try:
        from earlyprune.criteria import resolve
        from earlyprune.structured.groups import build_groups
        from earlyprune.structured.importance import channel_importance
        from earlyprune.tasks import scoring_loss

        work = copy.deepcopy(model)
        plan = build_groups(work, data[0][:1], ignored_layers=[])
        scores = channel_importance(work, resolve(method), [data], plan.groups,
                                    loss_fn=scoring_loss("classification", None), seed=0, train=None)
        values = scores.values() if isinstance(scores, dict) else scores
        return all(float(torch.as_tensor(v).abs().max()) == 0.0 for v in values)
    except Exception:  # noqa: BLE001 - a diagnostic only
        return None


def zero_at_init(model: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """Prunable weights that are already 0 before pruning (zero-initialised layers): ``{name: (zeros, numel)}``."""
    return {n: (int((p == 0).sum()), p.numel()) for n, p in prunable_parameters(model, warn=False).items()
            if int((p == 0).sum())}


def run_cell(model: torch.nn.Module, method: str, structured: bool, data, probe, timeout: int) -> dict:
    cell: dict = {"method": method, "structured": structured}
    work = copy.deepcopy(model)
    started = time.perf_counter()
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(timeout)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if structured:
                result = ep.prune_channels(work, method, STRUCTURED_SPARSITY, data=[data])
                pruned = result.model
            else:
                # "warn": the matrix reports each collapse (its c=N column) rather than stopping at it
                masks = ep.prune(work, method, UNSTRUCTURED_SPARSITY, data=[data], on_collapse="warn",
                                 **OPTIONS.get(method, {}))
                pruned = work
            problem = check_forward(pruned, probe)
        signal.alarm(0)
    except CellTimeout:
        cell.update(status="timeout", detail=f"over {timeout} s")
        return cell
    except ep.PruningError as e:
        signal.alarm(0)
        cell.update(status="refused", error=type(e).__name__, detail=first_line(e), trace=trace_tail(e))
        return cell
    except Exception as e:  # noqa: BLE001 - every other exception is what the matrix records
        signal.alarm(0)
        cell.update(status="fails", error=type(e).__name__, detail=first_line(e), trace=trace_tail(e))
        return cell
    finally:
        signal.alarm(0)
        cell["seconds"] = round(time.perf_counter() - started, 2)
    messages = [str(w.message) for w in caught]
    cell["collapse_warnings"] = sum("layer collapse" in m for m in messages)
    cell["other_warnings"] = sorted({m.splitlines()[0][:200] for m in messages if "layer collapse" not in m})
    if structured:
        cell.update(params_before=result.params_before, params_after=result.params_after,
                    left_whole=dict(result.info.get("left_whole") or {}))
        if method != "random":
            cell["zero_scores"] = zero_channel_scores(model, method, data)
    else:
        params = prunable_parameters(work, warn=False)
        total = sum(p.numel() for p in params.values())
        zeros = sum(int((p == 0).sum()) for p in params.values())
        cell.update(sparsity=zeros / total if total else float("nan"),
                    sparsity_info=masks.info["sparsity_achieved"], collapsed=list(masks.info["collapsed"]))
    cell["status"] = "fails" if problem else "works"
    if problem:
        cell.update(error="forward", detail=f"pruning returned but {problem}")
    return cell


def short(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def cell_text(cell: dict, note: int | None) -> str:
    status = cell["status"]
    ref = f" [{note}]" if note is not None else ""
    if status == "works":
        if cell["structured"]:
            text = f"✓ {short(cell['params_before'])}→{short(cell['params_after'])}"
            if cell["left_whole"]:
                text += f", whole {len(cell['left_whole'])}"
        else:
            text = f"✓ {cell['sparsity']:.3f}"
            if cell["collapsed"]:
                text += f", c={len(cell['collapsed'])}"
        return text + ref
    return {"refused": "refused", "fails": "**FAILS**", "timeout": "timeout"}[status] + ref


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for name in ("torch", "torchvision", "timm", "torch-pruning", "numpy"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    repo = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=repo, capture_output=True,
                               text=True, check=True).stdout.strip()
        out["earlyprune"] = f"{ep.__version__}, commit {commit}" + (
            f" (src/ with {len(dirty.splitlines())} uncommitted change(s))" if dirty else " (src/ clean)")
    except (OSError, subprocess.CalledProcessError):
        out["earlyprune"] = f"{ep.__version__}, commit unknown"
    return out


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} CPU(s) visible, "
            f"torch threads {torch.get_num_threads()}, Python {platform.python_version()}, device cpu")


def left_whole_summary(left_whole: dict[str, str]) -> str:
    """The layers left whole, grouped by reason (layer names and numbers folded): ``12× blocks.*.attn.qkv: ...``."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for name, reason in left_whole.items():
        key = re.sub(r"\d+", "*", reason.replace(name, "<layer>"))
        groups.setdefault(key, []).append((name, reason))
    parts = []
    for members in groups.values():
        names = sorted({re.sub(r"\d+", "*", n) for n, _ in members})
        parts.append(f"{len(members)}× {', '.join(names)} (e.g. {members[0][1]})")
    return "; ".join(parts)


def write_markdown(path: Path, rows: dict[str, list[dict]], meta: dict, methods: list[str],
                   smethods: list[str]) -> None:
    cols = [f"{m}" for m in methods] + [f"S:{m}" for m in smethods]
    lines = [
        "# Compatibility: torchvision and timm models × methods",
        "",
        "Which models each method prunes, measured by `benchmarks/compat_matrix.py` (not part of CI: it runs in a",
        "separate environment with torchvision and timm; its docstring says how to set it up). Every model has",
        (f"random weights and `num_classes={NUM_CLASSES}`; the scoring data is one random batch `({BATCH}, 3, "
         f"{meta['size']}, {meta['size']})` with random targets."),
        "`tv:` models are torchvision's (`weights=None`), `timm:` models timm's (`pretrained=False`); the ViTs are built for this input size (torchvision",
        "`image_size`, timm `img_size`). Seconds per cell (at the end) were measured on a shared machine and are",
        "only a rough guide.",
        "",
        f"* Unstructured columns: `ep.prune(model, method, {UNSTRUCTURED_SPARSITY}, data=[batch])`"
        + "".join(f"; `{m}` with `{', '.join(f'{k}={v}' for k, v in o.items())}`" for m, o in OPTIONS.items()
                  if m in methods) + ".",
        f"* `S:` columns (structured): `ep.prune_channels(model, method, {STRUCTURED_SPARSITY}, data=[batch])`.",
        "",
        "## Run",
        "",
        f"* Date: {meta['date']}",
        f"* Machine: {meta['machine']}",
        f"* Command: `{meta['command']}`",
        "* Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        f"* Per-cell timeout: {meta['timeout']} s; total time {meta['total_seconds']:.0f} s",
        "",
        "## Legend",
        "",
        "* `✓ 0.900`: works; the sparsity counted over the prunable weights after pruning, and a forward pass on a",
        "  new batch gives finite logits. `c=N`: N layers collapsed (pruned to nothing, `masks.info[\"collapsed\"]`).",
        "* `✓ 11.2M→2.9M`: structured pruning works; parameters before → after, and the shrunk model runs on a new",
        "  batch. `whole N`: N layers left whole (`info[\"left_whole\"]`, the reasons are in the notes).",
        "* `refused [n]`: a clear `PruningError`; note n says why.",
        "* `**FAILS** [n]`: any other exception (or a forward pass that breaks after pruning); note n gives its type,",
        "  first line and innermost frames. These are bugs.",
        "* `timeout`: the cell ran past the per-cell timeout.",
        "",
        "## Matrix",
        "",
        "| model | " + " | ".join(cols) + " |",
        "| --- | " + " | ".join("---" for _ in cols) + " |",
    ]
    notes: list[str] = []
    summary = {"works": 0, "refused": 0, "fails": 0, "timeout": 0}
    for model_name, cells in rows.items():
        texts = []
        seen_whole: dict[str, int] = {}
        for cell in cells:
            summary[cell["status"]] = summary.get(cell["status"], 0) + 1
            note_text = None
            if cell["status"] in ("refused", "fails"):
                note_text = f"{cell.get('error')}: {cell.get('detail')}"
                if cell["status"] == "fails" and cell.get("trace"):
                    note_text += "<br>" + "<br>".join(f"`{t}`" for t in cell["trace"])
            elif cell["status"] == "timeout":
                note_text = cell["detail"]
            elif cell["status"] == "works":
                extra = []
                if not cell["structured"]:
                    if abs(cell["sparsity"] - cell["sparsity_info"]) > 1e-6:
                        extra.append(f"masks.info says sparsity {cell['sparsity_info']:.6f}, counted zeros "
                                     f"{cell['sparsity']:.6f} (weights zero at init count too)")
                    if cell["collapsed"]:
                        extra.append(f"collapsed ({cell['collapse_warnings']} collapse warning(s)): "
                                     + ", ".join(cell["collapsed"]))
                elif cell.get("zero_scores"):
                    extra.append("every channel score is 0 (the loss does not reach the channels): the selection "
                                 "is arbitrary, where ep.prune refuses all-zero scores")
                if cell["structured"] and cell["left_whole"]:
                    whole = left_whole_summary(cell["left_whole"])
                    extra.append(f"left whole: as in note {seen_whole[whole]}" if whole in seen_whole
                                 else "left whole: " + whole)
                    if whole not in seen_whole:
                        seen_whole[whole] = len(notes) + 1
                if cell["other_warnings"]:
                    extra.append("warnings: " + " / ".join(cell["other_warnings"]))
                note_text = "<br>".join(extra) if extra else None
            note_index = None
            if note_text:
                notes.append(f"{len(notes) + 1}. {model_name}, {'S:' if cell['structured'] else ''}{cell['method']} "
                             f"({cell.get('seconds', '?')} s): {note_text}")
                note_index = len(notes)
            texts.append(cell_text(cell, note_index))
        zeros = meta.get("zero_at_init", {}).get(model_name)
        if zeros:
            notes.append(f"{len(notes) + 1}. {model_name}: prunable weights already 0 at init: "
                         + ", ".join(f"{n} ({z} of {t})" for n, (z, t) in zeros.items()))
            model_name_cell = f"{model_name} [{len(notes)}]"
        else:
            model_name_cell = model_name
        lines.append(f"| {model_name_cell} | " + " | ".join(texts) + " |")
    lines += ["", "Cells: " + ", ".join(f"{v} {k}" for k, v in summary.items()) + ".", "",
              "## Notes", ""] + (notes or ["None."])
    lines += ["", "## Seconds per cell", "", "| model | " + " | ".join(cols) + " |",
              "| --- | " + " | ".join("---:" for _ in cols) + " |"]
    for model_name, cells in rows.items():
        lines.append(f"| {model_name} | " + " | ".join(str(c.get("seconds", "")) for c in cells) + " |")
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="tv:NAME or timm:NAME")
    parser.add_argument("--methods", nargs="+", default=UNSTRUCTURED, help="unstructured methods")
    parser.add_argument("--structured-methods", nargs="*", default=STRUCTURED, help="structured methods")
    parser.add_argument("--size", type=int, default=64, help="input height and width")
    parser.add_argument("--timeout", type=int, default=120, help="seconds per cell")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("docs/compatibility.md"))
    parser.add_argument("--json", type=Path, default=None, help="also write the raw cells as JSON")
    parser.add_argument("--render", type=Path, default=None, metavar="JSON",
                        help="only rewrite --out from the JSON of an earlier run (its date, machine, command kept)")
    args = parser.parse_args(argv)
    if args.render is not None:
        saved = json.loads(args.render.read_text())
        first = next(iter(saved["rows"].values()))
        write_markdown(args.out, saved["rows"], saved["meta"], [c["method"] for c in first if not c["structured"]],
                       [c["method"] for c in first if c["structured"]])
        print(f"wrote {args.out} from {args.render}")
        return
    torch.set_num_threads(args.threads)
    command = "python benchmarks/compat_matrix.py" + ("" if argv is None and len(sys.argv) == 1 else
                                                       " " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])))
    started = time.perf_counter()
    date = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    data, probe = batch(args.size, args.seed), batch(args.size, args.seed + 1)[0]
    rows: dict[str, list[dict]] = {}
    zeros_at_init: dict[str, dict] = {}
    plan = [(m, False) for m in args.methods] + [(m, True) for m in args.structured_methods]
    for spec in args.models:
        torch.manual_seed(args.seed)
        try:
            model = build(spec, args.size)
        except Exception as e:  # noqa: BLE001 - a model that cannot be built fills its row with the reason
            print(f"{spec}: cannot build: {type(e).__name__}: {first_line(e)}", flush=True)
            rows[spec] = [{"method": m, "structured": s, "status": "fails", "error": type(e).__name__,
                           "detail": "model could not be built: " + first_line(e)} for m, s in plan]
            continue
        n = sum(p.numel() for p in model.parameters())
        if zero_at_init(model):
            zeros_at_init[spec] = zero_at_init(model)
        print(f"{spec} ({short(n)} params)", flush=True)
        cells = []
        for method, structured in plan:
            cell = run_cell(model, method, structured, data, probe, args.timeout)
            cells.append(cell)
            label = f"{'S:' if structured else ''}{method}"
            print(f"  {label:<12} {cell['status']:<8} {cell.get('seconds', 0):7.1f}s  "
                  f"{cell_text(cell, None) if cell['status'] == 'works' else cell.get('error', '') + ': ' + cell.get('detail', '')}",
                  flush=True)
        rows[spec] = cells
        del model
    meta = {"date": date, "machine": machine(), "command": command, "versions": versions(), "size": args.size,
            "timeout": args.timeout, "total_seconds": time.perf_counter() - started, "zero_at_init": zeros_at_init}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_markdown(args.out, rows, meta, args.methods, args.structured_methods)
    if args.json is not None:
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str))
    print(f"wrote {args.out} in {meta['total_seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
