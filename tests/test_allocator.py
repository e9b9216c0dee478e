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


def _faults_per_pass(result: dict) -> list[int]:
    return result["faults"][1:]  # the first pass faults its pages in under any allocator


@glibc_only
def test_tuned_malloc_reuses_freed_blocks_and_trims_on_request():
    tuned, system = _probe(), _probe(EARLYPRUNE_MALLOC="system")
    assert tuned["said"].startswith("glibc, tuned (mmap threshold ")
    assert tuned["said"].endswith(", heap never trimmed)")
    assert system["said"] == "system default (EARLYPRUNE_MALLOC=system)"
    if "threshold 32 MiB" in tuned["said"]:
        pytest.skip("an older glibc: a 48 MiB block is above the 32 MiB mmap threshold it accepts")
    # glibc's default maps each 48 MiB block afresh: every pass faults its pages in again (12,288 pages of
    # 4 KiB, or 24 huge pages where transparent huge pages are always on); tuned, after the first pass the
    # block comes from the heap and nothing is faulted in
    assert min(_faults_per_pass(system)) >= 20
    assert 10 * max(_faults_per_pass(tuned)) < min(_faults_per_pass(system))
    # the 192 MiB freed stay resident until release_free_memory() hands them back
    assert tuned["held"] - tuned["after_free"] < 20 and tuned["held"] - tuned["after_trim"] > 150
    assert system["held"] - system["after_free"] > 150  # the default returned them at free()


@glibc_only
@pytest.mark.parametrize("env, said", [
    ({"MALLOC_TRIM_THRESHOLD_": "1000000"}, "system, as set by MALLOC_TRIM_THRESHOLD_"),
    ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1000000"}, "system, as set by GLIBC_TUNABLES"),
])
def test_the_users_own_malloc_settings_are_left_alone(env, said):
    given = _probe(**env)
    assert given["said"] == said
    assert min(_faults_per_pass(given)) >= 20  # still glibc's fresh mapping for each large block


@glibc_only
def test_a_preloaded_allocator_is_not_tuned_through_glibcs_mallopt():
    preloads = [p for p in ("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
                            "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
                            "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2") if os.path.exists(p)]
    if not preloads:
        pytest.skip("no jemalloc or tcmalloc on this machine to preload")
    assert _probe(LD_PRELOAD=preloads[0])["said"] == "system default (malloc is not glibc's: LD_PRELOAD?)"


def test_thresholds_must_be_positive():
    for bad in ({"mmap_threshold": 0}, {"trim_threshold": -2}, {"mmap_threshold": 2**31}):
        with pytest.raises(ValueError, match=r"byte counts in \[1, 2\*\*31\)"):
            tune_cpu_allocator(**bad)


def test_an_unknown_opt_out_value_is_refused(monkeypatch):
    monkeypatch.setenv("EARLYPRUNE_MALLOC", "off")
    with pytest.raises(ValueError, match="EARLYPRUNE_MALLOC must be 'system'.*got 'off'"):
        tune_cpu_allocator()
    monkeypatch.setenv("EARLYPRUNE_MALLOC", "system")
    assert tune_cpu_allocator() == "system default (EARLYPRUNE_MALLOC=system)"
