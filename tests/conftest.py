"""Tiny models and data shared by the tests."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn


# The experiment runner tunes the process's malloc, which cannot be undone: tests that run it in this
# process would change the allocator of every test after them. Here it stays the system's;
# tests/test_allocator.py checks the tuned one in fresh processes.
os.environ["EARLYPRUNE_MALLOC"] = "system"


class SmallCNN(nn.Module):
    """Conv-BN-ReLU twice, then a linear classifier: BatchNorm buffers to check scoring leaves alone."""

    input_shape = (1, 8, 8)

    def __init__(self, classes: int = 4):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
            nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Linear(8 * 4 * 4, classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


class TinyResNet(nn.Module):
    """One residual block with a projection shortcut: channels tied by an addition."""

    input_shape = (3, 8, 8)

    def __init__(self, classes: int = 4):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(4)
        self.conv1 = nn.Conv2d(4, 8, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.shortcut = nn.Sequential(nn.Conv2d(4, 8, 1, stride=2, bias=False), nn.BatchNorm2d(8))
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        x = torch.relu(self.bn0(self.stem(x)))
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out)) + self.shortcut(x)
        out = torch.relu(out)
        return self.fc(out.mean(dim=(2, 3)))


def mlp(sizes=(64, 48, 32, 4)) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def batch_for(model_input_shape, classes: int = 4, n: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, *model_input_shape), generator=g)
    y = torch.arange(n) % classes
    return x, y


@pytest.fixture
def cnn():
    torch.manual_seed(0)
    return SmallCNN()


@pytest.fixture
def cnn_batch():
    return batch_for(SmallCNN.input_shape)


def store_count(results) -> int:
    """Finished runs in the results store of ``results`` (0 before the store exists)."""
    from earlyprune.experiments.store import ResultsStore

    if not (results / "results.sqlite").exists():
        return 0
    with ResultsStore(results) as store:
        return len(store.keys())


def assert_sweep_resumes_with_every_cell_once(command, config, results, partial: int) -> None:
    """Run the killed sweep ``command`` again: it finds the ``partial`` finished cells, runs the rest, and the
    store ends with every cell of ``config`` exactly once, each with its curve, and no corrupt row."""
    import subprocess

    from earlyprune.experiments.store import ResultsStore
    from earlyprune.experiments.sweep import load_sweep

    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert f"{partial} done" in finished.stdout
    cells, _ = load_sweep(config)
    with ResultsStore(results) as store:
        assert store.integrity_ok()
        keys = [r["key"] for r in store.records()]
        assert sorted(keys) == sorted(c.key() for c in cells)  # every cell exactly once
        assert all(len(store.curve(c.key())) == c.epochs for c in cells)  # with one curve point per epoch


# --- processes, found through /proc (Linux) ---------------------------------------------------------------

def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (children, their children, ...), read from /proc."""
    from pathlib import Path

    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found.update(int(p) for p in (task / "children").read_text().split())
        except OSError:
            pass
    for child in list(found):
        found |= descendants(child)
    return found


def cmdline(pid: int) -> str:
    """The command line of ``pid`` ('' once it has gone)."""
    from pathlib import Path

    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie has ended; only its exit status waits to be collected)."""
    from pathlib import Path

    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")
