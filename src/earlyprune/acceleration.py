"""Opt-in speed for the training loop: ``torch.compile`` and mixed precision (autocast).

Both are off by default (results stay bit-for-bit those of the eager float32 loop) and are part of a
run's key when on, so a comparison's dense and pruned runs, built from one configuration, train alike.

* ``compile``: the model's forward is compiled with ``torch.compile`` (inductor). The compiled module
  shares the model's parameters, so masks (gradient hooks on the parameters, re-zeroing after each
  optimizer step) keep pruned weights at zero as in eager mode. After structured surgery the shapes of
  the parameters change; :class:`StepModel` sees that and compiles once more for the new shapes. On the
  CPU inductor needs a C++ compiler: :func:`check_compile` says so clearly when it cannot build.
  ``compile_mode="reduce-overhead"`` records CUDA graphs on a GPU (the option for small, launch-bound
  models); the parameters keep their storage, so the optimizer's in-place steps and the masks' re-zeroing
  are what each replay reads. Not measured on a GPU yet: no GPU was lent to the sessions so far.
* ``amp``: ``"bf16"`` or ``"fp16"`` autocast for the forward pass and loss; the weights, gradients and
  optimizer state stay float32 (a pruned weight is a float32 zero and its bf16 copy is zero too).
  bf16 needs hardware that computes it (a CUDA GPU with bf16, or a CPU with AVX512-BF16/AMX);
  fp16 is for CUDA only and uses a gradient scaler.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import warnings
from typing import Any

import torch
from torch import nn

from .errors import PruningError

AMP_MODES = ("bf16", "fp16")
#: ``torch.compile``'s modes: "reduce-overhead" records CUDA graphs on a GPU, one replay per step instead of
#: a launch per kernel (on a CPU inductor has no graphs to record and it compiles as "default" does).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_amp(amp: str | None, device: torch.device) -> None:
    """Raise a clear error when ``amp`` is not a mode this ``device`` has."""
    if amp is None:
        return
    if amp not in AMP_MODES:
        raise PruningError(f"amp must be one of {AMP_MODES} or None, got {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        raise PruningError(f"amp='fp16' needs a CUDA device (the model is on {device}); on the CPU use amp='bf16' "
                           "where the processor has bf16 (AVX512-BF16/AMX), or no amp")
    if amp == "bf16" and not bf16_supported(device):
        where = "this GPU" if device.type == "cuda" else "this CPU (no AVX512-BF16 or AMX)"
        raise PruningError(f"amp='bf16' is not supported by {where}: bf16 would be emulated and slower; "
                           "train without amp" + (", or with amp='fp16'" if device.type == "cuda" else ""))


def bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively: ``torch.cuda.is_bf16_supported`` on CUDA; on the CPU the
    processor flags ``avx512_bf16`` or ``amx_bf16`` (Linux ``/proc/cpuinfo``; elsewhere unknown: False)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def autocast(amp: str | None, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast context of ``amp`` on ``device`` (a no-op context for None)."""
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[amp])


def grad_scaler(amp: str | None, device: torch.device) -> torch.amp.GradScaler | None:
    """A gradient scaler for fp16 (whose small gradients would underflow), None otherwise."""
    return torch.amp.GradScaler(device.type) if amp == "fp16" else None


def compile_problem(device: torch.device | None = None) -> str | None:
    """Why ``torch.compile`` cannot be used here, from what is cheap to know before compiling (torch has
    it; on the CPU a C++ compiler is on the PATH, or named by ``CXX``); None when nothing is in the way.
    An inductor failure at the first step is reported by :func:`compile_failure`."""
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    if device is None or device.type == "cpu":
        compilers = [os.environ.get("CXX") or "", "g++", "c++", "clang++"]
        if not any(name and shutil.which(name) for name in compilers):
            return "no C++ compiler found (inductor builds its CPU kernels with one: install g++ or clang++)"
    return None


def check_compile(device: torch.device | None = None) -> None:
    """Raise a clear error when ``torch.compile`` cannot build kernels here."""
    problem = compile_problem(device)
    if problem is not None:
        raise PruningError(f"compile=True is unavailable: {problem}; train without compile")


def compile_failure(error: BaseException) -> PruningError | None:
    """A clear error for a failure of ``torch.compile`` itself (its backend could not build the kernels),
    None for any other error (the model's own, raised as it is)."""
    dynamo_errors = getattr(getattr(torch, "_dynamo", None), "exc", None)
    kinds = tuple(getattr(dynamo_errors, name) for name in ("BackendCompilerFailed", "InternalTorchDynamoError")
                  if dynamo_errors is not None and hasattr(dynamo_errors, name))
    if not kinds or not isinstance(error, kinds):
        return None
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return PruningError(f"torch.compile could not compile the model ({type(error).__name__}: {first[:300]}); "
                        "train without compile (on the CPU inductor needs a working C++ compiler)")


def _shapes(model: nn.Module) -> tuple:
    return tuple((n, tuple(p.shape)) for n, p in model.named_parameters())


class StepModel:
    """What the training loop calls for its forward pass: the model itself, or its compiled form.

    The compiled form is rebuilt (compiled once more) when the model's parameter shapes change (structured
    surgery) or another module takes its place, and never otherwise. ``compilations`` counts the builds.
    """

    def __init__(self, model: nn.Module, compile: bool = False, mode: str = "default"):
        if mode not in COMPILE_MODES:
            raise PruningError(f"compile mode must be one of {COMPILE_MODES}, got {mode!r}")
        if compile:
            device = next(iter(model.parameters()), torch.empty(0)).device
            check_compile(device)
            if mode == "reduce-overhead" and device.type != "cuda":
                warnings.warn(f"compile_mode='reduce-overhead' records CUDA graphs, which a {device.type} model does "
                              "not have: it compiles as compile_mode='default' does", RuntimeWarning, stacklevel=2)
        self.compile, self.mode = compile, mode
        self.compilations = 0
        self._model: nn.Module | None = None
        self._shapes: tuple = ()
        self._compiled: Any = None
        self.use(model)

    def use(self, model: nn.Module) -> Any:
        """The callable for ``model`` (compiled anew only if it or its shapes changed)."""
        if not self.compile:
            self._model = model
            return model
        shapes = _shapes(model)
        if model is not self._model or shapes != self._shapes or self._compiled is None:
            self._model, self._shapes = model, shapes
            self._compiled = torch.compile(model, dynamic=False, mode=None if self.mode == "default" else self.mode)
            self.compilations += 1
        return self._compiled

    def step_begins(self) -> None:
        """Call before each training step: with CUDA graphs (``reduce-overhead``, ``max-autotune``) it tells
        torch that the previous step's outputs are no longer read, so its graph memory can be reused
        (``torch.compiler.cudagraph_mark_step_begin``); nothing otherwise."""
        if self.compile and self.mode in ("reduce-overhead", "max-autotune"):
            torch.compiler.cudagraph_mark_step_begin()

    @property
    def model(self) -> nn.Module:
        assert self._model is not None
        return self._model
