"""Hugging Face models (issue 14 item 3): tiny BERT, GPT-2 and ViT built from configs with random weights.

Unstructured pruning of every criterion at exact sparsity; structured pruning with magnitude and CroP:
BERT's and ViT's attention heads removed whole (q, k, v rows and the output projection's columns, the
head count updated), GPT-2's fused q/k/v projection left whole with the reason, an attention this
library cannot recognise refused with the model untouched; the models run and train afterwards.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import earlyprune as ep
from earlyprune.structured import build_groups, shrink

transformers = pytest.importorskip("transformers")

CRITERIA = ["random", "magnitude", "snip", "grasp", "synflow", "prospr", "crop"]
HEADS, HEAD_DIM = 4, 8


def _bert():
    config = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=HEADS,
                                     intermediate_size=64, num_labels=3, max_position_embeddings=32,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return transformers.BertForSequenceClassification(config)


def _gpt2():
    config = transformers.GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=HEADS, n_positions=32, num_labels=3,
                                     pad_token_id=0, bos_token_id=1, eos_token_id=1, resid_pdrop=0.0,
                                     embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2ForSequenceClassification(config)


def _vit():
    config = transformers.ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=HEADS, intermediate_size=64, num_labels=3,
                                    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return transformers.ViTForImageClassification(config)


def _batch(kind: str, n: int = 8, length: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    if kind == "vit":
        return {"pixel_values": torch.randn(n, 3, 16, 16, generator=g)}, labels
    ids = torch.randint(1, 50, (n, length), generator=g)
    if kind == "bert":
        return {"input_ids": ids, "attention_mask": torch.ones(n, length, dtype=torch.long)}, labels
    return {"input_ids": ids}, labels


BUILD = {"bert": _bert, "gpt2": _gpt2, "vit": _vit}
#: Prunable layers: BERT/ViT 6 Linear per layer (+ ViT's patch conv), the pooler and the classifier;
#: GPT-2 4 Conv1D per layer and the score head. Embeddings and norms are not pruned.
LAYERS = {"bert": 14, "gpt2": 9, "vit": 14}


def _model(kind: str):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return BUILD[kind]()


def _loss(model, batch):
    inputs, labels = batch
    return F.cross_entropy(model(**inputs).logits, labels)


def _trains_one_step(model, batch) -> None:
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    before = _loss(model, batch)
    opt.zero_grad()
    before.backward()
    opt.step()
    with torch.no_grad():
        after = _loss(model, batch)
    assert float(after) < float(before.detach())


@pytest.mark.parametrize("kind", ["bert", "gpt2", "vit"])
@pytest.mark.parametrize("method", CRITERIA)
def test_unstructured_every_criterion_exact_sparsity(kind, method):
    model = _model(kind)
    options = {"iterations": 2} if method == "synflow" else {"steps": 1} if method == "prospr" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        masks = ep.prune(model, method, 0.8, data=[_batch(kind, n=4)], **options)
    params = dict(model.named_parameters())
    assert len(masks) == LAYERS[kind]
    assert masks.total() == sum(params[name].numel() for name in masks)
    assert all(params[name].dim() >= 2 for name in masks)  # weights only: no biases, norms
    assert masks.kept() == round(0.2 * masks.total())
    with torch.no_grad():
        assert model(**_batch(kind, n=2, length=7, seed=1)[0]).logits.shape == (2, 3)


def _kept(result, name, dim):
    return result.kept_indices[name][dim]


def _whole_heads(index: torch.Tensor) -> set[int]:
    heads = set((index // HEAD_DIM).tolist())
    assert sorted(index.tolist()) == [h * HEAD_DIM + j for h in sorted(heads) for j in range(HEAD_DIM)]
    return heads


ATTENTION = {
    # attention module, its q/k/v, the layer whose inputs are the heads, the MLP hidden layer
    "bert": lambda i: (f"bert.encoder.layer.{i}.attention.self", ("query", "key", "value"),
                       f"bert.encoder.layer.{i}.attention.output.dense", f"bert.encoder.layer.{i}.intermediate.dense"),
    "vit": lambda i: (f"vit.layers.{i}.attention", ("q_proj", "k_proj", "v_proj"),
                      f"vit.layers.{i}.attention.o_proj", f"vit.layers.{i}.mlp.fc1"),
}


@pytest.mark.parametrize("kind", ["bert", "vit"])
@pytest.mark.parametrize("method, sparsity", [("magnitude", 0.8), ("crop", 0.5)])
def test_structured_removes_whole_heads_and_mlp_units(kind, method, sparsity):
    # (magnitude sums a head's norms over q, k, v and the output columns: its heads go at 0.8, not at 0.5)
    model = _model(kind)
    result = ep.prune_channels(model, method, sparsity, data=[_batch(kind)])
    assert result.info["left_whole"] == {}
    total = result.info["channels_before"]
    # exact: whole heads and single channels together keep round((1 - s) * total) channels
    assert sum(len(k) for k in result.kept_channels.values()) == round((1 - sparsity) * total)
    modules = dict(model.named_modules())
    heads_removed = 0
    for i in range(2):
        attention, qkv, out, fc = ATTENTION[kind](i)
        module = modules[attention]
        widths = {modules[f"{attention}.{p}"].out_features for p in qkv}
        assert len(widths) == 1  # q, k and v keep the same heads
        width = widths.pop()
        assert width % HEAD_DIM == 0 and width >= HEAD_DIM
        assert module.num_attention_heads == width // HEAD_DIM
        if kind == "bert":
            assert module.all_head_size == width
        if width < HEADS * HEAD_DIM:
            heads_removed += HEADS - width // HEAD_DIM
            kept = [_whole_heads(_kept(result, f"{attention}.{p}.weight", 0)) for p in qkv]
            assert kept[0] == kept[1] == kept[2]
            assert _whole_heads(_kept(result, f"{out}.weight", 1)) == kept[0]
        assert modules[fc].out_features < 64  # MLP hidden units pruned too
    assert heads_removed > 0
    with torch.no_grad():  # a fresh batch of another size (and, for BERT, another sequence length)
        assert model(**_batch(kind, n=3, length=13, seed=2)[0]).logits.shape == (3, 3)
    _trains_one_step(model, _batch(kind, seed=3))


@pytest.mark.parametrize("kind", ["bert", "vit"])
def test_removing_heads_equals_zeroing_their_values(kind):
    """Removing heads 1 and 3 of layer 0 gives exactly the model whose value rows of those heads are zero."""
    model = _model(kind).eval()
    attention, qkv, _, _ = ATTENTION[kind](0)
    reference = copy.deepcopy(model)
    value = dict(reference.named_modules())[f"{attention}.{qkv[2]}"]
    with torch.no_grad():
        for h in (1, 3):
            value.weight[h * HEAD_DIM:(h + 1) * HEAD_DIM] = 0
            value.bias[h * HEAD_DIM:(h + 1) * HEAD_DIM] = 0
    batch = _batch(kind)
    plan = build_groups(model, batch[0])
    group = next(g for g in plan.groups if g.attention == attention)
    assert (group.size, group.block) == (HEADS * HEAD_DIM, HEAD_DIM)
    keep = torch.cat([torch.arange(h * HEAD_DIM, (h + 1) * HEAD_DIM) for h in (0, 2)])
    shrink(model, plan, {group.index: keep})
    assert dict(model.named_modules())[attention].num_attention_heads == 2
    fresh = _batch(kind, n=3, length=6, seed=4)[0]
    with torch.no_grad():
        torch.testing.assert_close(model(**fresh).logits, reference(**fresh).logits, rtol=1e-5, atol=1e-6)


def test_keep_splitting_a_head_is_refused():
    model = _model("bert")
    batch = _batch("bert")
    plan = build_groups(model, batch[0])
    group = next(g for g in plan.groups if g.block > 1)
    before = {n: p.clone() for n, p in model.named_parameters()}
    with pytest.raises(ep.PruningError, match="splits heads"):
        shrink(model, plan, {group.index: torch.arange(12)})  # head 1 half kept
    assert {n: p.shape for n, p in model.named_parameters()} == {n: p.shape for n, p in before.items()}


@pytest.mark.parametrize("method", ["magnitude", "crop"])
def test_gpt2_fused_attention_left_whole_mlp_pruned(method):
    model = _model("gpt2")
    result = ep.prune_channels(model, method, 0.5, data=[_batch("gpt2")])
    left = result.info["left_whole"]
    assert set(left) == {"transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"}
    assert all("fused q/k/v projection" in why for why in left.values())
    assert model.config.use_cache is True  # turned off for tracing only
    for i in range(2):
        block = model.transformer.h[i]
        assert block.attn.c_attn.weight.shape[1] == 3 * 32 and block.attn.num_heads == HEADS
        assert block.mlp.c_fc.weight.shape[1] < 128
        assert block.mlp.c_proj.weight.shape[0] == block.mlp.c_fc.weight.shape[1]
    assert result.params_after < result.params_before
    with torch.no_grad():
        assert model(**_batch("gpt2", n=3, length=13, seed=2)[0]).logits.shape == (3, 3)
    _trains_one_step(model, _batch("gpt2", seed=3))


class OpaqueAttention(nn.Module):
    """Self-attention whose head layout is in no attribute this library knows: its q/k/v cannot be cut."""

    def __init__(self, dim=32, heads=4):
        super().__init__()
        self.layout = (heads, dim // heads)
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = (p(x).view(b, t, *self.layout).transpose(1, 2) for p in (self.q, self.k, self.v))
        return self.o(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, -1))


class OpaqueModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 32)
        self.attn = OpaqueAttention()
        self.head = nn.Linear(32, 3)

    def forward(self, x):
        return self.head(self.attn(torch.tanh(self.inp(x))).mean(1))


@pytest.mark.parametrize("method, sparsity", [("magnitude", 0.8), ("crop", 0.5)])
def test_unrecognised_attention_refused_model_unchanged(method, sparsity):
    torch.manual_seed(0)
    model = OpaqueModel()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batch = (torch.randn(8, 5, 6), torch.arange(8) % 3)
    with pytest.raises(ep.PruningError, match=r"breaks the model .*'attn\.v'.*exclude"):
        ep.prune_channels(model, method, sparsity, data=[batch])
    after = dict(model.named_parameters())
    assert set(after) == set(before) and all(torch.equal(after[n], before[n]) for n in before)
    model(batch[0]).sum().backward()  # still the original, working model
    # leaving the attention whole (as the message says) prunes the rest
    result = ep.prune_channels(model, method, sparsity, data=[batch], exclude=["attn.q", "attn.k", "attn.v"])
    assert model.attn.q.out_features == 32 and result.params_after < result.params_before
    assert model(torch.randn(2, 7, 6)).shape == (2, 3)
