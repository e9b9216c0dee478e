"""Shrunk models saved and reloaded safely: a shrunk ResNet-20 and LeNet-5 reloaded in a fresh process with
``weights_only=True`` give identical outputs; a model class of one's own (with an LSTM and BatchNorm)
reloaded by the documented protocol; files that are not shrunk models, or models of another structure,
refused with the fix."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

import earlyprune as ep
from earlyprune import models
from earlyprune.errors import PruningError
from earlyprune.structured.saving import load_shrunk, read_shrunk, save_shrunk

_RELOAD = """
import sys, torch
from earlyprune.structured.saving import load_shrunk
torch.set_num_threads(int(sys.argv[4]))  # the parent's: on the CPU the order of sums depends on the threads
state = torch.load(sys.argv[1], map_location="cpu", weights_only=True)  # plain data only
model = load_shrunk(state)
x = torch.load(sys.argv[2], weights_only=True)
with torch.no_grad():
    torch.save(model(x), sys.argv[3])
"""


def _shrunk(name: str, width: float = 1.0, method: str = "magnitude"):
    torch.manual_seed(0)
    model = models.create(name, width=width)
    x = torch.randn(8, *model.input_shape)
    y = torch.arange(8) % 10
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = ep.prune_channels(model, method, 0.5, data=(x, y))
        model.train()  # the running statistics move: the file must carry them
        with torch.no_grad():
            model(torch.randn(8, *model.input_shape))
    return model.eval(), result


@pytest.mark.parametrize("name, width, method", [("resnet20", 0.5, "magnitude"), ("lenet5", 1.0, "snip")])
def test_shrunk_reference_model_reloads_in_a_fresh_process_with_identical_outputs(tmp_path, name, width, method):
    model, result = _shrunk(name, width, method)
    assert result.params_after < result.params_before
    with pytest.raises(RuntimeError):  # the problem this solves: a fresh model has the full shapes
        models.create(name, width=width).load_state_dict(model.state_dict())
    path, x_path, out_path = tmp_path / "model.pt", tmp_path / "x.pt", tmp_path / "out.pt"
    save_shrunk(model, path, info=result.info)
    x = torch.randn(5, *model.input_shape)
    torch.save(x, x_path)
    done = subprocess.run([sys.executable, "-c", _RELOAD, str(path), str(x_path), str(out_path),
                           str(torch.get_num_threads())],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    with torch.no_grad():
        expected = model(x)
    assert torch.equal(torch.load(out_path, weights_only=True), expected)
    saved = read_shrunk(path)
    assert saved["create"]["name"] == name and saved["create"]["width"] == width
    assert saved["widths"] == result.widths_after


class OwnModel(nn.Module):
    """A model class of a user's own: conv + BatchNorm, an LSTM over the columns, a head."""

    def __init__(self, hidden: int = 12):
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.relu = nn.ReLU()
        self.lstm = nn.LSTM(6 * 8, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 3)

    def forward(self, x):
        h = self.relu(self.bn(self.conv(x)))  # (N, C, 8, 8)
        seq = h.permute(0, 3, 1, 2).flatten(2)  # (N, 8 columns, C*8)
        out, _ = self.lstm(seq)
        return self.head(out[:, -1])


def test_own_model_class_by_the_protocol(tmp_path):
    torch.manual_seed(0)
    model = OwnModel()
    x, y = torch.randn(6, 1, 8, 8), torch.arange(6) % 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep.prune_channels(model, "magnitude", 0.4, data=(x, y))
    assert model.lstm.hidden_size < 12 and model.conv.out_channels < 6
    model.eval()
    save_shrunk(model, tmp_path / "own.pt")
    with pytest.raises(PruningError, match="no earlyprune.models.create arguments"):
        load_shrunk(tmp_path / "own.pt")
    fresh = load_shrunk(tmp_path / "own.pt", OwnModel())
    assert fresh.lstm.hidden_size == model.lstm.hidden_size and fresh.conv.out_channels == model.conv.out_channels
    probe = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(fresh(probe), model(probe))
    # it trains: a step changes the loss-relevant weights
    opt = torch.optim.SGD(fresh.parameters(), lr=0.1)
    nn.functional.cross_entropy(fresh.train()(x), y).backward()
    opt.step()


def test_other_files_and_other_structures_are_refused(tmp_path):
    torch.save(nn.Linear(2, 2).state_dict(), tmp_path / "plain.pt")
    with pytest.raises(PruningError, match="not an earlyprune shrunk-model file"):
        load_shrunk(tmp_path / "plain.pt")
    model, _ = _shrunk("lenet5")
    save_shrunk(model, tmp_path / "lenet.pt")
    with pytest.raises(PruningError, match="differ in structure"):
        load_shrunk(tmp_path / "lenet.pt", models.create("lenet300"))
    torch.save(nn.Linear(2, 2), tmp_path / "pickled.pt")  # a pickled module: code, refused
    with pytest.raises(PruningError, match="cannot read"):
        load_shrunk(tmp_path / "pickled.pt")
