"""Reference models of the non-image tasks: shapes, parameter counts derived by hand, create's keyword
handling, token inputs, and pruning (unstructured SNIP/SynFlow, structured channels) on each."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import earlyprune as ep
from earlyprune import models
from earlyprune.metrics import report


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


V, L = 50, 12  # a small vocabulary and sequence length for the token models

TOKEN_MODELS = ["textcnn", "transformer-encoder", "lstm-lm", "gpt-mini"]
NEW_MODELS = [*TOKEN_MODELS, "mlp-regressor"]


def build(name: str, **kw) -> nn.Module:
    torch.manual_seed(0)
    if name == "mlp-regressor":
        return models.create(name, **kw)
    return models.create(name, vocab_size=V, seq_len=L, **kw)


def batch_and_loss(name: str, n: int = 6):
    generator = torch.Generator().manual_seed(1)
    if name == "mlp-regressor":
        return (torch.randn(n, 13, generator=generator), torch.randn(n, 1, generator=generator)), F.mse_loss
    x = torch.randint(0, V, (n, L), generator=generator)
    if models.spec(name).task == "language_modelling":
        y = torch.randint(0, V, (n, L), generator=generator)
        return (x, y), lambda out, t: F.cross_entropy(out.flatten(0, 1), t.flatten())
    return (x, torch.randint(0, 2, (n,), generator=generator)), F.cross_entropy


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


# Parameter counts at width 1, derived by hand (fc(i->o) = i*o + o):
# textcnn, V=50, 2 classes: embedding 50*128 = 6,400; conv k: 128*100*k + 100 for k = 3, 4, 5
#   -> 38,500 + 51,300 + 64,100 = 153,900; fc(300->2) = 602.  Total 160,902.
# transformer-encoder, V=50, L=12, d=64, 2 classes: embeddings 50*64 + 12*64 = 3,968; per block
#   2 LN 256 + 4 fc(64->64) 16,640 + fc(64->256) 16,640 + fc(256->64) 16,448 = 49,984, two: 99,968;
#   final LN 128; fc(64->2) 130.  Total 104,194.
# gpt-mini, V=50, L=12: 3,968 + 99,968 + 128 + fc(64->50) 3,250 = 107,314.
# lstm-lm, V=50, 200/200, 2 layers: embedding 10,000; per layer 4*(200*200 + 200*200 + 2*200) = 321,600,
#   two: 643,200; decoder fc(200->50) 10,050.  Total 663,250; tied: 663,250 - 10,000 = 653,250.
# mlp-regressor, 13 features: fc(13->128) 1,792 + fc(128->64) 8,256 + fc(64->1) 65 = 10,113.
EXPECTED = {"textcnn": 160_902, "transformer-encoder": 104_194, "gpt-mini": 107_314, "lstm-lm": 663_250,
            "mlp-regressor": 10_113}


@pytest.mark.parametrize("name", NEW_MODELS)
def test_parameter_counts_match_the_hand_derivation(name):
    assert count(build(name)) == EXPECTED[name]


def test_registry_kinds_aliases_and_defaults():
    assert models.names() == ["lenet300", "lenet5", "vgg11", "vgg16", "vgg19",
                              "resnet20", "resnet32", "resnet44", "resnet56", "resnet18"]
    assert models.names("tokens") == TOKEN_MODELS and models.names("features") == ["mlp-regressor"]
    assert models.names("observations") == ["dqn-mlp"]  # the Q-network of earlyprune.rl
    assert models.names(None) == models.names() + NEW_MODELS + ["dqn-mlp"]
    with pytest.raises(ValueError, match="kind of input"):
        models.names("audio")
    for alias, name in [("Kim-CNN", "textcnn"), ("transformer", "transformer-encoder"), ("lstm", "lstm-lm"),
                        ("gpt", "gpt-mini"), ("mlp", "mlp-regressor")]:
        assert models.spec(alias).name == name
    assert models.input_shape("textcnn") == (64,) and models.default_dataset("lstm-lm") == "tinyshakespeare"
    assert models.default_dataset("mlp-regressor") == "california-housing"
    lm = models.create("gpt-mini")
    assert (lm.vocab_size, lm.seq_len, lm.input_shape, lm.input_dtype) == (65, 128, (128,), torch.int64)
    assert lm.task == "language_modelling" and lm.arch == "gpt-mini"
    assert models.create("mlp").task == "regression" and models.create("lenet5").task == "classification"
    assert models.create("lenet5").input_dtype == torch.float32
    assert all(models.spec(name).paper and models.spec(name).builder.__doc__ for name in NEW_MODELS)


@pytest.mark.parametrize("name", NEW_MODELS)
def test_output_shapes_forward_and_backward(name):
    model = build(name, num_classes=None)
    (x, y), loss_fn = batch_and_loss(name)
    out = model(x)
    expected = {"classification": (6, 2), "language_modelling": (6, L, V), "regression": (6, 1)}
    assert out.shape == expected[models.spec(name).task] and out.dtype == torch.float32
    loss_fn(out, y).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0


def test_classes_outputs_and_vocabulary_through_create():
    assert models.create("textcnn", num_classes=6, vocab_size=V, seq_len=L)(torch.ones(3, L, dtype=torch.long)).shape == (3, 6)
    assert models.create("mlp-regressor", num_outputs=3, in_features=5)(torch.randn(2, 5)).shape == (2, 3)
    assert models.create("lstm-lm", num_classes=30).vocab_size == 30  # a language model's classes: its vocabulary
    with pytest.raises(ValueError, match=r"num_classes \(30\) must equal vocab_size \(20\)"):
        models.create("gpt-mini", num_classes=30, vocab_size=20)
    with pytest.raises(ValueError, match="num_classes .* and num_outputs .* differ"):
        models.create("mlp-regressor", num_classes=2, num_outputs=3)


def test_create_refuses_options_a_model_does_not_take():
    with pytest.raises(ValueError, match=r"'lenet5' takes no option 'vocab_size'; its options: none"):
        models.create("lenet5", vocab_size=10)
    with pytest.raises(ValueError, match=r"'textcnn' takes no option 'hidden'.*embed_dim"):
        models.create("textcnn", hidden=3)
    with pytest.raises(ValueError, match="takes tokens, not images: it has no in_channels"):
        models.create("textcnn", in_channels=3)
    with pytest.raises(ValueError, match="it has no input_size .*in_features"):
        models.create("mlp-regressor", input_size=28)
    # None means the model's default, so a runner may pass a split's vocab_size=None to any model
    assert models.create("lenet5", vocab_size=None, seq_len=None).input_shape == (1, 28, 28)
    assert models.create("lstm-lm", dropout=0.0, layers=1).lstm.num_layers == 1


def test_width_scales_hidden_sizes():
    cnn = models.create("textcnn", vocab_size=V, width=0.5)
    assert cnn.embedding.embedding_dim == 64 and {c.out_channels for c in cnn.convs} == {50}
    assert cnn.fc.in_features == 150
    gpt = models.create("gpt-mini", width=0.5)
    assert gpt.token_embedding.embedding_dim == 32 and gpt.blocks[0].fc1.out_features == 128
    assert models.create("transformer-encoder", width=0.3).ln.normalized_shape == (4 * 5,)  # heads * round(16 * 0.3)
    lstm = models.create("lstm-lm", width=0.25)
    assert lstm.lstm.hidden_size == 50 and lstm.embedding.embedding_dim == 50
    mlp = models.create("mlp-regressor", width=0.5)
    assert (mlp.fc1.out_features, mlp.fc2.out_features) == (64, 32)


def test_lstm_weight_tying_shares_one_matrix():
    tied = build("lstm-lm", tie_weights=True)
    assert tied.decoder.weight is tied.embedding.weight and count(tied) == EXPECTED["lstm-lm"] - V * 200
    with pytest.raises(ValueError, match="tie_weights needs embed_dim == hidden"):
        models.create("lstm-lm", tie_weights=True, embed_dim=100)


def test_gpt_is_causal_and_the_encoder_ignores_padding():
    gpt = build("gpt-mini").eval()
    x = torch.randint(0, V, (1, L))
    changed = x.clone()
    changed[0, 7:] = (changed[0, 7:] + 1) % V
    a, b = gpt(x), gpt(changed)
    assert torch.allclose(a[0, :7], b[0, :7], atol=1e-6) and not torch.allclose(a[0, 7:], b[0, 7:])
    encoder = build("transformer-encoder").eval()
    sentence = torch.tensor([[5, 6, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0]])
    shorter = torch.tensor([[5, 6, 7, 0, 0, 0]])  # the same sentence with less padding
    assert torch.allclose(encoder(sentence), encoder(shorter), atol=1e-5)
    with pytest.raises(ValueError, match="longer than the model's seq_len 12"):
        encoder(torch.ones(1, L + 1, dtype=torch.long))


def test_textcnn_is_kims_architecture_and_takes_short_sentences():
    cnn = build("textcnn").eval()
    assert [c.kernel_size for c in cnn.convs] == [(3,), (4,), (5,)] and all(c.out_channels == 100 for c in cnn.convs)
    assert all(isinstance(r, nn.ReLU) for r in cnn.relus) and cnn.dropout.p == 0.5
    assert cnn.embedding.padding_idx == 0
    assert cnn(torch.tensor([[4, 9]])).shape == (1, 2)  # shorter than the widest filter: padded


def test_token_inputs_float_ones_are_token_ids_other_floats_are_refused():
    model = build("textcnn").eval()
    ids = torch.ones(2, L, dtype=torch.long)
    assert torch.equal(model(torch.ones(2, L)), model(ids)) and torch.equal(model.example_input(2), ids)
    assert torch.equal(model(ids.int()), model(ids))
    with pytest.raises(TypeError, match="token ids"):
        model(torch.full((2, L), 0.5))
    # what metrics.report builds from input_shape (a float all-ones input) gives FLOPs
    assert report(model).flops > 0 and report(build("gpt-mini")).flops > 0


@pytest.mark.parametrize("name", NEW_MODELS)
def test_snip_prunes_each_model_to_the_exact_sparsity(name):
    model = build(name)
    batch, loss_fn = batch_and_loss(name)
    masks = ep.prune(model, "snip", 0.9, data=batch, loss_fn=loss_fn)
    total = masks.total()
    assert abs(masks.sparsity() - 0.9) <= 1 / total and masks.kept() == total - round(0.9 * total)
    params = dict(model.named_parameters())
    assert sum(int(torch.count_nonzero(params[n])) for n in masks) <= masks.kept()  # pruned weights are zero
    x, y = batch
    out = model(x)
    assert torch.isfinite(out).all()
    loss_fn(out, y).backward()


@pytest.mark.parametrize("name", NEW_MODELS)
def test_synflow_scores_token_models_without_data(name):
    masks = ep.prune(build(name), "synflow", 0.5, iterations=2)
    assert abs(masks.sparsity() - 0.5) <= 1 / masks.total()


def test_recurrent_and_attention_weights_are_what_gets_pruned():
    lstm = build("lstm-lm")
    batch, loss_fn = batch_and_loss("lstm-lm")
    masks = ep.prune(lstm, "snip", 0.8, data=batch, loss_fn=loss_fn)
    assert {"lstm.weight_ih_l0", "lstm.weight_hh_l1", "decoder.weight"} <= set(masks)
    assert "embedding.weight" not in masks
    gpt = build("gpt-mini")
    batch, loss_fn = batch_and_loss("gpt-mini")
    masks = ep.prune(gpt, "snip", 0.8, data=batch, loss_fn=loss_fn)
    assert {"blocks.0.attn.q_proj.weight", "blocks.1.fc2.weight", "head.weight"} <= set(masks)


@pytest.mark.parametrize("name", ["textcnn", "mlp-regressor"])
def test_structured_channel_pruning_shrinks_the_model(name):
    model = build(name)
    batch, loss_fn = batch_and_loss(name)
    before = count(model)
    options = {"loss_fn": loss_fn, "task": "regression"} if name == "mlp-regressor" else {}
    ep.prune_channels(model, "snip", 0.5, data=batch, **options)
    assert count(model) < before and model(batch[0]).shape == batch_and_loss(name)[0][1].shape[:1] + (
        (2,) if name == "textcnn" else (1,))
    if name == "textcnn":
        assert model.fc.in_features == sum(c.out_channels for c in model.convs) < 300


def test_gpt2_init_is_normal_with_std_002_and_the_mlp_kaiming():
    gpt = models.create("gpt-mini", width=2)
    w = gpt.blocks[0].fc1.weight.detach()
    assert float(w.std()) == pytest.approx(0.02, rel=0.05) and torch.all(gpt.blocks[0].fc1.bias == 0)
    assert float(gpt.token_embedding.weight.detach().std()) == pytest.approx(0.02, rel=0.1)
    cnn = models.create("transformer-encoder", vocab_size=500)
    assert torch.all(cnn.token_embedding.weight[0] == 0)  # the <pad> row
    mlp = models.create("mlp-regressor", width=4)
    assert float(mlp.fc2.weight.std()) == pytest.approx(math.sqrt(2 / 512), rel=0.05)


def test_textcnn_word_vectors_start_as_kims_cnn_rand():
    from earlyprune import models

    model = models.create("textcnn", vocab_size=500, seq_len=20, num_classes=2)
    weight = model.embedding.weight.detach()
    assert float(weight.abs().max()) <= 0.25 and float(weight.std()) == pytest.approx(0.5 / 12 ** 0.5, rel=0.05)
    assert torch.all(weight[0] == 0)
