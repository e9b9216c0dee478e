"""One calling convention everywhere: tensors, keyword mappings, positional tuples, outputs with .logits."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import earlyprune as ep
from earlyprune.calling import prediction, split_inputs
from earlyprune.structured import channel_groups
from earlyprune.train import TrainConfig, train

METHODS = ["random", "magnitude", "snip", "grasp", "synflow", "prospr", "crop", "snip-it", "crop-it"]


@dataclass
class Output:
    """A Hugging Face style output object."""

    logits: torch.Tensor
    hidden: torch.Tensor


class KeywordEncoder(nn.Module):
    """forward(input_ids, attention_mask) -> Output(logits=...), as a Hugging Face classifier."""

    def __init__(self, vocab: int = 30, dim: int = 16, classes: int = 3):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.proj = nn.Linear(dim, 24)
        self.head = nn.Linear(24, classes)

    def forward(self, input_ids, attention_mask=None):
        h = self.embed(input_ids)
        if attention_mask is not None:
            h = h * attention_mask.unsqueeze(-1)
        hidden = torch.relu(self.proj(h.mean(1)))
        return Output(logits=self.head(hidden), hidden=hidden)


class TwoInputs(nn.Module):
    """forward(x, z): two tensors, returns (prediction, auxiliary)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 12)
        self.b = nn.Linear(3, 12)
        self.head = nn.Linear(12, 4)

    def forward(self, x, z):
        out = self.head(torch.relu(self.a(x) + self.b(z)))
        return out, out.detach() * 0


def keyword_batch(n: int = 24, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 30, (n, 7), generator=g)
    mask = torch.ones(n, 7)
    mask[:, 5:] = 0
    return {"input_ids": ids, "attention_mask": mask}, torch.arange(n) % 3


def pair_batch(n: int = 24, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 6, generator=g), torch.randn(n, 3, generator=g)), torch.arange(n) % 4


def test_inputs_are_split_by_what_forward_takes():
    ids, _ = keyword_batch(4)
    assert split_inputs(KeywordEncoder(), ids) == ((), ids)
    one_dict = nn.Sequential(nn.Identity())  # forward(input): one argument gets the mapping itself
    assert split_inputs(one_dict, ids)[0] == (ids,)
    (x, z), _ = pair_batch(4)
    assert split_inputs(TwoInputs(), (x, z))[0] == (x, z)
    assert split_inputs(nn.Linear(2, 2), (x, z))[0] == ((x, z),)
    custom = TwoInputs()
    custom.earlyprune_inputs = lambda b: ((b["x"],), {"z": b["z"]})
    args, kwargs = split_inputs(custom, {"x": x, "z": z})
    assert args == (x,) and kwargs == {"z": z}


def test_the_prediction_is_found_in_every_output_shape():
    t = torch.ones(2, 3)
    assert prediction(t) is t and prediction(Output(t, t)) is t
    assert prediction({"logits": t, "loss": 0}) is t and prediction((t, None)) is t
    with pytest.raises(ep.PruningError, match="cannot find the prediction"):
        prediction("nothing")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", ["keywords", "pair"])
def test_every_criterion_prunes_keyword_and_two_input_models_exactly(method, kind):
    torch.manual_seed(0)
    model, batch = (KeywordEncoder(), keyword_batch()) if kind == "keywords" else (TwoInputs(), pair_batch())
    options = {"iterations": 5} if method == "synflow" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        masks = ep.prune(model, method, 0.8, data=[batch], on_collapse="warn", **options)  # exact counts here
    assert masks.kept() == round(0.2 * masks.total())
    params = dict(model.named_parameters())
    assert all(torch.all(params[n][~m] == 0) for n, m in masks.items())


@pytest.mark.parametrize("kind", ["keywords", "pair"])
def test_structured_pruning_training_and_flops_follow_the_same_convention(kind):
    torch.manual_seed(0)
    model, batch = (KeywordEncoder(), keyword_batch()) if kind == "keywords" else (TwoInputs(), pair_batch())
    dense = ep.report(model, example_inputs=batch[0])
    assert dense.flops and dense.flops > 0
    groups = channel_groups(model, batch[0])
    assert sum(g.size for g in groups) > 0
    result = ep.prune_channels(model, "crop", 0.5, data=[batch])
    assert result.params_after < result.params_before
    assert ep.report(model, example_inputs=batch[0]).flops < dense.flops
    history = train(model, [batch] * 4, [batch], TrainConfig(epochs=3, lr=0.05, progress=False))
    assert history.history[-1].train_loss < history.history[0].train_loss


def test_a_dict_model_that_takes_the_mapping_whole_still_gets_it_whole():
    class WholeDict(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(5, 3)

        def forward(self, inputs):
            return self.fc(inputs["x"])

    model = WholeDict()
    batch = ({"x": torch.randn(6, 5)}, torch.arange(6) % 3)
    assert ep.prune(model, "snip", 0.5, data=batch).kept() == round(0.5 * 15)
    loss = F.cross_entropy(model(batch[0]), batch[1])
    assert torch.isfinite(loss)
