"""earlyprune.allocator: glibc's thresholds set by mallopt, seen in what the kernel does (page faults,
resident memory), in fresh processes (the setting is process-wide and cannot be undone)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from earlyprune.allocator import tune_cpu_allocator

glibc_only = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the thresholds are glibc's")

# 5 times: a 48 MiB block (above glibc's largest dynamic mmap threshold, 32 MiB) taken, written, freed;
# then 4 such blocks freed at once and the heap trimmed. Prints what the kernel counted.
_PROBE = """
import ctypes, json, resource, sys
import earlyprune.allocator as allocator
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
SIZE = 48 * 2**20
def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
said = allocator.tune_cpu_allocator()
faults = []
for _ in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(SIZE)
    ctypes.memset(block, 1, SIZE)
    libc.free(block)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
blocks = [libc.malloc(SIZE) for _ in range(4)]
for b in blocks:
    ctypes.memset(b, 1, SIZE)
held = rss_mb()
for b in blocks:
    libc.free(b)
after_free = rss_mb()
allocator.release_free_memory()
print(json.dumps({"said": said, "faults": faults, "held": held, "after_free": after_free, "after_trim": rss_mb()}))
"""


def _probe(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "EARLYPRUNE_MALLOC"}
    out = subprocess.run([sys.executable, "-c", _PROBE], env={**clean, **env}, capture_output=True, text=True,
                         check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc_only
def test_tuned_malloc_reuses_freed_blocks_and_trims_on_request():
    tuned, system = _probe(), _probe(EARLYPRUNE_MALLOC="system")
    pages = 48 * 2**20 // 4096
    assert tuned["said"].startswith("glibc, tuned (mmap threshold 64 MiB")
    assert system["said"] == "system default (EARLYPRUNE_MALLOC=system)"
    # glibc's default maps each 48 MiB block afresh: every pass faults all its pages in again
    assert min(system["faults"][1:]) > 0.9 * pages
    # tuned, the block comes from the heap and stays there: after the first pass nothing is faulted in
    assert max(tuned["faults"][1:]) < 0.02 * pages
    # the 192 MiB freed stay resident until release_free_memory() hands them back
    assert tuned["held"] - tuned["after_free"] < 20 and tuned["held"] - tuned["after_trim"] > 150
    assert system["held"] - system["after_free"] > 150  # the default returned them at free()


@glibc_only
def test_the_users_own_malloc_settings_are_left_alone():
    given = _probe(MALLOC_TRIM_THRESHOLD_="1000000")
    assert given["said"] == "system, as set by MALLOC_TRIM_THRESHOLD_"
    assert min(given["faults"][1:]) > 0.9 * 48 * 2**20 // 4096  # still glibc's mmap for large blocks


def test_thresholds_must_be_positive():
    for bad in ({"mmap_threshold": 0}, {"trim_threshold": -2}, {"mmap_threshold": 2**31}):
        with pytest.raises(ValueError, match=r"byte counts in \[1, 2\*\*31\)"):
            tune_cpu_allocator(**bad)
