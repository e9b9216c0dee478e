"""glibc's malloc set up for PyTorch's CPU work: freed blocks kept for reuse instead of handed back.

PyTorch's CPU tensors come from the C library's ``malloc``. With glibc's defaults a block above the mmap
threshold (128 KiB at first, raised up to 32 MiB as large blocks are freed) is mapped fresh from the
kernel and unmapped when freed, and the heap is trimmed whenever more than twice that threshold is free
at its top. Work that allocates and frees many large temporaries, such as differentiating a graph twice,
then spends its time in the kernel, faulting in and zeroing pages it has just given back. On the
2-core development machine (ResNet-20, batch 128, ``benchmarks/bench_allocator.py``: the scoring benchmark
as a whole, in fresh processes taken in turn) ProsPr's meta-gradient cost 19.7 units of a dense
forward+backward with the defaults and 11.0 with the settings below, GraSP 3.46 against 3.20, and a
training step 1.21x less time.

:func:`tune_cpu_allocator` sets both thresholds with ``mallopt``, as the environment variables
``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` would at start-up: blocks under 64 MiB come
from the heap, and the heap is never trimmed, so freed memory stays with the process for its next
allocations until :func:`release_free_memory` hands it back (the training loop does, before it measures
a run's peak memory). The price is memory: the process's resident size stays at its peak instead of
falling after a large step. It changes the whole process
and cannot be undone (setting a threshold ends glibc's dynamic adjustment), so the library never calls it
on its own: the experiment runner (``earlyprune run``, ``sweep``, ``demo``) does, unless
``EARLYPRUNE_MALLOC=system`` is set, and a user's own script may. Where either variable (or a
``glibc.malloc`` tunable in ``GLIBC_TUNABLES``) is already set, where the C library is not glibc (macOS,
Windows, musl), or where another allocator is preloaded in front of it, nothing is changed.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform

#: blocks under this size come from the heap, not from a fresh mapping
MMAP_THRESHOLD = 64 * 2**20
#: glibc trims the heap when more than this is free at its top; -1 never (mallopt(3)): trimming at any
#: fixed size hands back the whole free top once a step's peak exceeds it (ProsPr on ResNet-20 holds 1.5 GiB
#: of graph), to be faulted in again at the next step
TRIM_THRESHOLD = -1

_M_TRIM_THRESHOLD = -1  # glibc's malloc.h
_M_MMAP_THRESHOLD = -3
#: the largest mmap threshold older glibcs accept (half their 64 MiB arena heaps); tried where 64 MiB is refused
_OLDER_GLIBCS_LARGEST = 32 * 2**20
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
OPT_OUT = "EARLYPRUNE_MALLOC"
_OPT_OUT_VALUES = ("", "tuned", "system")

_applied: str | None = None


def tune_cpu_allocator(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> str:
    """Set glibc's mmap and trim thresholds for this process (see the module's docstring; ``trim_threshold``
    -1: never trim); returns what this process's allocator now does, as recorded with each run: ``"glibc,
    tuned (mmap threshold 64 MiB, heap never trimmed)"``, or why it was left as it is. A glibc that refuses
    the mmap threshold (older ones accept at most 32 MiB) gets 32 MiB. Calling it again changes nothing.

    ``EARLYPRUNE_MALLOC`` is ``system`` (change nothing), ``tuned`` or unset (tune); anything else is a
    ValueError. On Ray, pass it to the workers with ``runtime_env={"env_vars": {...}}``: workers on other
    machines do not see the driver's environment.
    """
    global _applied
    if not 0 < mmap_threshold < 2**31 or not (0 < trim_threshold < 2**31 or trim_threshold == -1):
        raise ValueError(f"allocator thresholds are byte counts in [1, 2**31) (trim_threshold -1: never trim), "
                         f"got mmap_threshold={mmap_threshold}, trim_threshold={trim_threshold}")
    choice = os.environ.get(OPT_OUT, "").strip().lower()
    if choice not in _OPT_OUT_VALUES:
        raise ValueError(f"{OPT_OUT} must be 'system' (leave the C library's malloc as it is) or 'tuned' "
                         f"(the default), got {os.environ[OPT_OUT]!r}")
    if _applied is not None:
        return _applied
    if choice == "system":
        return f"system default ({OPT_OUT}=system)"
    given = [name for name in _USER_SETTINGS if name in os.environ]
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        given.append("GLIBC_TUNABLES")
    if given:
        return f"system, as set by {', '.join(given)}"
    mallopt = _glibc_mallopt()
    if mallopt is None:
        return "system default (not glibc)"
    if not _malloc_is_glibcs():
        return "system default (malloc is not glibc's: LD_PRELOAD?)"
    if not mallopt(_M_MMAP_THRESHOLD, mmap_threshold):
        mmap_threshold = min(mmap_threshold, _OLDER_GLIBCS_LARGEST)
        if not mallopt(_M_MMAP_THRESHOLD, mmap_threshold):
            return "system default (glibc refused the mmap threshold)"
    trimmed = "heap never trimmed" if trim_threshold == -1 else f"trim threshold {trim_threshold / 2**20:g} MiB"
    if not mallopt(_M_TRIM_THRESHOLD, trim_threshold):
        trimmed = "glibc refused the trim threshold"
    _applied = f"glibc, tuned (mmap threshold {mmap_threshold / 2**20:g} MiB, {trimmed})"
    return _applied


def release_free_memory() -> None:
    """Hand the heap's free memory back to the kernel now (glibc's ``malloc_trim(0)``; elsewhere nothing).

    Called before a peak-memory measurement starts (:func:`earlyprune.train.reset_peak_memory`): with the
    thresholds of :func:`tune_cpu_allocator` a long-lived process (a sweep worker, the demo) keeps what an
    earlier run freed, and that memory, still resident, would count in the next run's peak.
    """
    trim = _glibc_function("malloc_trim", [ctypes.c_size_t])
    if trim is not None:
        trim(0)


def _glibc_mallopt():
    """glibc's ``mallopt`` (int, int) -> int, or None where the C library is not glibc."""
    return _glibc_function("mallopt", [ctypes.c_int, ctypes.c_int])


@functools.lru_cache(maxsize=None)
def _is_glibc() -> bool:
    """Whether this process's C library is glibc (on Linux); asked once per process."""
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def _malloc_is_glibcs() -> bool:
    """Whether ``malloc`` as the process resolves it is glibc's own, not one an LD_PRELOADed allocator
    (jemalloc, tcmalloc, mimalloc) put in front of it, whose ``mallopt`` would tune nothing in use."""
    try:
        used = ctypes.cast(ctypes.CDLL(None).malloc, ctypes.c_void_p).value
        glibcs = ctypes.cast(ctypes.CDLL("libc.so.6").malloc, ctypes.c_void_p).value
    except (OSError, AttributeError):
        return False
    return used == glibcs


def _glibc_function(name: str, argtypes: list):
    """The C library's function ``name`` (returning int) where that library is glibc on Linux, else None."""
    if not _is_glibc():
        return None
    try:
        function = getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None
    function.argtypes, function.restype = argtypes, ctypes.c_int
    return function
