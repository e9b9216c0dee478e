"""Models users bring (issue 14): recurrent layers, attention, GPT-2's Conv1D, depthwise convolutions,
tied weights; unstructured pruning of every criterion, structured pruning checked against the gated
model, and each failure this issue listed."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import earlyprune as ep
from earlyprune.prunable import prunable_parameters
from earlyprune.structured import build_groups, channel_gates, shrink

CRITERIA = ["random", "magnitude", "snip", "grasp", "synflow", "prospr", "crop"]


class LSTMClassifier(nn.Module):
    def __init__(self, use_final_state: bool = False, cell: type[nn.Module] = nn.LSTM, layers: int = 1):
        super().__init__()
        self.inp = nn.Linear(6, 16)
        self.rnn = cell(16, 12, num_layers=layers, batch_first=True)
        self.head = nn.Linear(12, 3)
        self.use_final_state = use_final_state

    def forward(self, x):
        out, state = self.rnn(torch.tanh(self.inp(x)))
        if self.use_final_state:
            h = state[0] if isinstance(state, tuple) else state
            return self.head(h[-1])
        return self.head(out[:, -1])


class TransformerClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 16)
        layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.encoder(self.inp(x)).mean(1))


class Conv1D(nn.Module):
    """The layout of transformers.pytorch_utils.Conv1D: weight (in, out), `nf` outputs, forward = addmm."""

    def __init__(self, nf: int, nx: int):
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.1)
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x):
        size_out = x.size()[:-1] + (self.nf,)
        return torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight).view(size_out)


class GPT2Block(nn.Module):
    """A GPT-2-style MLP block on Conv1D layers with a residual, then a Linear classifier."""

    def __init__(self):
        super().__init__()
        self.wte = nn.Linear(6, 16)
        self.ln = nn.LayerNorm(16)
        self.c_fc = Conv1D(32, 16)
        self.c_proj = Conv1D(16, 32)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        h = self.wte(x)
        h = h + self.c_proj(F.gelu(self.c_fc(self.ln(h))))
        return self.head(h.mean(1))


class DepthwiseNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.pw(torch.relu(self.dw(torch.relu(self.conv(x)))))).mean((2, 3)))


def seq_batch(n: int = 12):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 5, 6, generator=g), torch.arange(n) % 3


def image_batch(n: int = 12):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 8, 8, generator=g), torch.arange(n) % 3


UNSTRUCTURED = {
    "lstm": (LSTMClassifier, seq_batch, {"inp.weight", "rnn.weight_ih_l0", "rnn.weight_hh_l0", "head.weight"}),
    "transformer": (TransformerClassifier, seq_batch, None),
    "gpt2_conv1d": (GPT2Block, seq_batch, {"wte.weight", "c_fc.weight", "c_proj.weight", "head.weight"}),
}


@pytest.mark.parametrize("method", CRITERIA)
@pytest.mark.parametrize("model_name", list(UNSTRUCTURED))
def test_every_criterion_prunes_exactly_on_modern_blocks(model_name, method):
    make, data, expected = UNSTRUCTURED[model_name]
    torch.manual_seed(0)
    model = make()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        params = prunable_parameters(model)
    if expected is not None:
        assert set(params) == expected
    total = sum(p.numel() for p in params.values())
    options = {"iterations": 2} if method == "synflow" else {}
    masks = ep.prune(model, method, 0.9, data=data(), **options)
    assert set(masks) == set(params)
    assert masks.kept() == round(0.1 * total)
    zeros = sum(int((p == 0).sum()) for p in params.values())
    assert zeros >= total - round(0.1 * total)
    x, _ = data()
    assert torch.isfinite(model(x)).all()


def test_transformer_prunable_weights_include_attention_projections():
    names = set(prunable_parameters(TransformerClassifier()))
    for layer in (0, 1):
        prefix = f"encoder.layers.{layer}."
        assert {prefix + "self_attn.in_proj_weight", prefix + "self_attn.out_proj.weight",
                prefix + "linear1.weight", prefix + "linear2.weight"} <= names
    assert not any("bias" in n or "norm" in n for n in names)


def test_separate_qkv_attention_weights_and_gru_rnn_are_prunable():
    mha = nn.MultiheadAttention(8, 2, kdim=6, vdim=5)
    assert set(prunable_parameters(nn.ModuleDict({"a": mha}))) == {
        "a.q_proj_weight", "a.k_proj_weight", "a.v_proj_weight", "a.out_proj.weight"}
    gru = nn.GRU(4, 6, num_layers=2)
    assert set(prunable_parameters(gru)) == {"weight_ih_l0", "weight_hh_l0", "weight_ih_l1", "weight_hh_l1"}
    assert set(prunable_parameters(nn.RNN(4, 6))) == {"weight_ih_l0", "weight_hh_l0"}


def test_out_proj_masks_hold_though_attention_never_calls_it():
    torch.manual_seed(0)
    model = TransformerClassifier()
    x, y = seq_batch()
    masks = ep.prune(model, "magnitude", 0.8)
    name = "encoder.layers.0.self_attn.out_proj.weight"
    out_proj = model.encoder.layers[0].self_attn.out_proj
    pruned = ~masks[name]
    assert pruned.any()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model(x)
    assert (out_proj.weight[pruned] == 0).all()
    assert (model.encoder.layers[0].self_attn.in_proj_weight[~masks["encoder.layers.0.self_attn.in_proj_weight"]]
            == 0).all()


def test_lstm_pruned_to_90_percent_and_a_warning_when_little_is_prunable():
    class EmbeddingLSTM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(1000, 16)
            self.rnn = nn.LSTM(16, 8, batch_first=True)
            self.head = nn.Linear(8, 3)

        def forward(self, tokens):
            out, _ = self.rnn(self.embed(tokens))
            return self.head(out[:, -1])

    model = EmbeddingLSTM()
    tokens, y = torch.randint(0, 1000, (6, 5)), torch.arange(6) % 3
    with pytest.warns(UserWarning, match=r"embed\.weight \(Embedding, 16,000\).*include="):
        # on so small an LSTM, 90% empties the recurrent layers (the guard's subject, not this test's)
        masks = ep.prune(model, "snip", 0.9, data=(tokens, y), on_collapse="allow")
    assert set(masks) == {"rnn.weight_ih_l0", "rnn.weight_hh_l0", "head.weight"}
    assert masks.sparsity() == pytest.approx(0.9, abs=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        masks = ep.prune(EmbeddingLSTM(), "magnitude", 0.9, include=[nn.Embedding], scope="layer")
    assert "embed.weight" in masks
    assert set(ep.prune(EmbeddingLSTM(), "magnitude", 0.5, include=["embed.weight"], exclude=["head"],
                        on_collapse="allow")) == {
        "embed.weight", "rnn.weight_ih_l0", "rnn.weight_hh_l0"}
    with pytest.raises(ep.PruningError, match="include names"):
        ep.prune(EmbeddingLSTM(), "magnitude", 0.5, include=["nope"])


def test_double_backward_criteria_run_on_scaled_dot_product_attention():
    class SDPA(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(6, 24)
            self.out = nn.Linear(8, 3)

        def forward(self, x):
            b, t, _ = x.shape
            q, k, v = self.qkv(x).view(b, t, 3, 2, 4).permute(2, 0, 3, 1, 4)
            return self.out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, 8).mean(1))

    for method in ("grasp", "prospr", "crop"):
        masks = ep.prune(SDPA(), method, 0.5, data=seq_batch())
        assert masks.sparsity() == pytest.approx(0.5, abs=1e-2)


def test_report_counts_flops_once_when_the_root_owns_a_parameter():
    class TinyViT(nn.Module):
        def __init__(self):
            super().__init__()
            self.cls_token = nn.Parameter(torch.zeros(1, 1, 8))
            self.patch = nn.Linear(12, 8)
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), self.patch(x)], 1)
            return self.head(tokens[:, 0])

    model = TinyViT()
    report = ep.report(model, torch.randn(2, 4, 12))
    hand = 2 * 4 * 12 * 8 + 2 * 8 * 3  # patch embedding on 4 patches, the head on the class token
    assert report.flops == hand
    assert report.effective_flops == hand
    ep.prune(model, "magnitude", 0.5)
    pruned = ep.report(model, torch.randn(2, 4, 12))
    assert pruned.effective_flops <= pruned.flops


# ----- structured ---------------------------------------------------------------------------------------

def gated_equals_shrunk(model, example, keep_fraction=0.5, seed=0, roots=None):
    """Gate 0 on the removed channels of the large model == the shrunk model, in eval mode (only the groups
    whose root is in ``roots``, when given)."""
    model.eval()
    plan = build_groups(model, example[:1])
    g = torch.Generator().manual_seed(seed)
    keep = {grp.index: torch.sort(torch.randperm(grp.size, generator=g)[:max(1, int(grp.size * keep_fraction))]).values
            for grp in plan.groups if roots is None or grp.root in roots}
    values = {}
    for grp in plan.groups:
        if grp.index not in keep:
            continue
        v = torch.zeros(grp.size)
        v[keep[grp.index]] = 1.0
        values[grp.index] = v
    with torch.no_grad(), channel_gates(model, plan, values, requires_grad=False):
        gated = model(example)
    small = copy.deepcopy(model)
    small_plan = build_groups(small, example[:1])
    shrink(small, small_plan, keep)
    with torch.no_grad():
        shrunk = small(example)
    torch.testing.assert_close(shrunk, gated, rtol=1e-5, atol=1e-5)
    return plan, small


def loss_goes_down(model, batch):
    x, y = batch
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    before = F.cross_entropy(model(x), y).item()
    for _ in range(5):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    assert F.cross_entropy(model(x), y).item() < before


@pytest.mark.parametrize("final_state", [False, True])
@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU, nn.RNN])
def test_recurrent_hidden_units_are_removed_and_match_the_gated_model(cell, final_state):
    torch.manual_seed(0)
    model = LSTMClassifier(final_state, cell=cell, layers=2)
    x, y = seq_batch()
    plan, small = gated_equals_shrunk(model, x)
    assert any(grp.root == "rnn" for grp in plan.groups)
    assert small.rnn.hidden_size == 6
    blocks = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}[cell]
    assert small.rnn.weight_hh_l1.shape == (blocks * 6, 6) and small.rnn.weight_ih_l1.shape == (blocks * 6, 6)
    assert small.head.in_features == 6
    loss_goes_down(small, (x, y))


@pytest.mark.parametrize("method", ["random", "snip", "crop"])
def test_prune_channels_on_an_lstm_classifier(method):
    torch.manual_seed(0)
    model = LSTMClassifier(use_final_state=True)
    x, y = seq_batch()
    result = ep.prune_channels(model, method, 0.5, data=(x, y))
    assert result.widths_after["rnn"] < 12
    assert model(x).shape == (12, 3)
    loss_goes_down(model, (x, y))


def test_transformer_mlp_units_are_removed_with_gates_on_the_last_dim():
    torch.manual_seed(0)
    model = TransformerClassifier()
    x, y = seq_batch()
    plan, small = gated_equals_shrunk(model, x)
    roots = {grp.root for grp in plan.groups}
    assert {"encoder.layers.0.linear1", "encoder.layers.1.linear1"} <= roots
    assert small.encoder.layers[0].linear1.out_features == 16
    assert small.encoder.layers[0].self_attn.embed_dim == 16  # the model width is left whole
    assert any("MultiheadAttention" in why for why in plan.left_whole.values())
    loss_goes_down(small, (x, y))
    for method in ("snip", "crop"):
        model = TransformerClassifier()
        result = ep.prune_channels(model, method, 0.5, data=(x, y))
        assert result.widths_after["encoder.layers.1.linear1"] < 32
        assert any("MultiheadAttention" in why for why in result.info["left_whole"].values())
        assert model(x).shape == (12, 3)


def test_gate_on_a_3d_linear_output_multiplies_the_features():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 3))
    x = torch.randn(4, 7, 6)  # (batch, sequence, features): the old gate multiplied dim 1 and failed
    model.eval()
    plan = build_groups(model, x[:1])
    with torch.no_grad(), channel_gates(model, plan, {0: torch.zeros(10)}, requires_grad=False):
        out = model(x)
    torch.testing.assert_close(out, model[2].bias.expand(4, 7, 3))
    gated_equals_shrunk(model, x)


def test_gpt2_conv1d_mlp_units_are_removed():
    torch.manual_seed(0)
    model = GPT2Block()
    x, y = seq_batch()
    # The residual width goes through a LayerNorm, whose statistics change when channels go: compare the
    # MLP's hidden units only.
    plan, small = gated_equals_shrunk(model, x, roots={"c_fc"})
    assert "c_fc" in {grp.root for grp in plan.groups}
    assert small.c_fc.nf == 16 and small.c_fc.weight.shape == (16, 16) and small.c_proj.weight.shape == (16, 16)
    assert any(grp.root == "wte" for grp in plan.groups)  # the residual width is prunable too
    loss_goes_down(small, (x, y))


def test_depthwise_convolution_channels_are_removed():
    torch.manual_seed(0)
    model = DepthwiseNet()
    x, y = image_batch()
    plan, small = gated_equals_shrunk(model, x)
    assert small.dw.groups == small.dw.out_channels == small.dw.in_channels == 4
    loss_goes_down(small, (x, y))


def test_grouped_convolution_and_tied_weights_are_refused_by_name_not_a_shape_error():
    class Grouped(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            return self.fc(self.grouped(torch.relu(self.conv(x))).mean((2, 3)))

    x, y = image_batch()
    with pytest.raises(ep.PruningError, match="'grouped' is a grouped convolution"):
        ep.prune_channels(Grouped(), "random", 0.5, data=(x, y))

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(6, 16)
            self.b = nn.Linear(16, 16)
            self.c = nn.Linear(16, 16)
            self.c.weight = self.b.weight
            self.fc = nn.Linear(16, 3)

        def forward(self, x):
            return self.fc(torch.relu(self.c(torch.relu(self.b(torch.relu(self.a(x)))))))

    with pytest.raises(ep.PruningError, match="tied weights"):
        ep.prune_channels(Tied(), "random", 0.5, data=(torch.randn(4, 6), torch.arange(4) % 3))


def test_bidirectional_lstm_is_left_whole():
    class BiLSTM(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(6, 16)
            self.rnn = nn.LSTM(16, 8, batch_first=True, bidirectional=True)
            self.mid = nn.Linear(16, 10)
            self.head = nn.Linear(10, 3)

        def forward(self, x):
            out, _ = self.rnn(self.inp(x))
            return self.head(torch.relu(self.mid(out[:, -1])))

    torch.manual_seed(0)
    model = BiLSTM()
    x, y = seq_batch()
    result = ep.prune_channels(model, "random", 0.5, data=(x, y))
    assert result.widths_after["rnn"] == 8
    assert model(x).shape == (12, 3)


def test_structured_magnitude_scores_recurrent_units_and_conv1d_columns_by_their_own_weights():
    from earlyprune.structured import channel_groups, channel_importance

    torch.manual_seed(0)
    model = LSTMClassifier(layers=2)
    x, y = seq_batch()
    groups = {g.producers[0]: g for g in channel_groups(model, x[:1])}
    scores = channel_importance(model, "magnitude", None, list(groups.values()))
    # By hand: hidden unit j owns rows j, H+j, 2H+j, 3H+j of every weight_ih/weight_hh of both layers.
    hidden = 12
    expected = torch.zeros(hidden, dtype=torch.float64)
    for name, weight in model.rnn.named_parameters():
        if name.startswith("weight"):
            for block in range(4):
                expected += weight.detach().double()[block * hidden:(block + 1) * hidden].pow(2).sum(1)
    torch.testing.assert_close(scores[groups["rnn"].index], expected.sqrt())
    block = GPT2Block()
    x, _ = seq_batch()
    conv_groups = {g.producers[0]: g for g in channel_groups(block, x[:1])}
    conv_scores = channel_importance(block, "magnitude", None, list(conv_groups.values()))
    torch.testing.assert_close(conv_scores[conv_groups["c_fc"].index], block.c_fc.weight.detach().double().norm(dim=0))


@pytest.mark.parametrize("method", ["grasp", "prospr", "crop"])
def test_a_layer_without_a_second_derivative_is_a_clear_error_for_second_order_criteria(method):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Hardsigmoid(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    batch = (torch.randn(12, 6), torch.arange(12) % 3)
    with pytest.raises(ep.PruningError, match="no derivative for aten::hardsigmoid_backward"):
        ep.prune(model, method, 0.5, data=batch)
    if method == "crop":
        with pytest.raises(ep.PruningError, match="no derivative for aten::hardsigmoid_backward"):
            ep.prune_channels(model, method, 0.5, data=batch)
    assert ep.prune(model, "snip", 0.5, data=batch).kept() == round(0.5 * (48 + 64 + 24))  # first order works


def test_channels_that_all_score_zero_are_an_error_not_an_arbitrary_selection():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3))
    with torch.no_grad():
        model[4].weight.zero_()  # a classifier initialised to zero (torchvision's ViT head): no gradient upstream
    batch = (torch.randn(12, 6), torch.arange(12) % 3)
    with pytest.raises(ep.PruningError, match="scored every weight 0"):
        ep.prune_channels(model, "snip", 0.5, data=batch)
    assert model[0].out_features == 16 and model[2].out_features == 12  # nothing was removed
    with pytest.warns(RuntimeWarning, match="scored every weight 0"):
        result = ep.prune_channels(model, "snip", 0.5, data=batch, on_zero_scores="warn")
    assert result.params_after < result.params_before
    with pytest.raises(ep.PruningError, match="on_zero_scores must be one of"):
        ep.prune_channels(model, "snip", 0.5, data=batch, on_zero_scores="ignore")
