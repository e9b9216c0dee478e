"""preset="official": each difference from the paper's method checked on a tiny model against the official
code's computation done by hand here (Xavier re-draw, eval mode, nll on logits, the keep counts, the
schedule, the gate position, the trigger's parameters); the default stays the paper's."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import earlyprune as ep
from earlyprune.errors import PruningError
from earlyprune.presets import trigger_parameters
from earlyprune.structured.groups import build_groups
from earlyprune.structured.selection import select_channels

from conftest import SmallCNN, batch_for, mlp


def _mlp64(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return mlp((12, 10, 8, 4)).double()


def _batches(n: int = 6, shape=(12,), size: int = 8) -> list:
    return [(x.double(), y) for x, y in (batch_for(shape, n=size, seed=i) for i in range(n))]


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if n.endswith("weight")}


def _hessian_gradient(model, names, batches, loss, temperature=1.0):
    """(Σ_b H_b) g with g = Σ_b ∇L_b over the weights ``names``, by torch.autograd.functional.hvp."""
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    order = list(names)

    def total(*weights):
        params = {**base, **dict(zip(order, weights))}
        return sum(loss(functional_call(model, params, (x,)) / temperature, y) for x, y in batches)

    point = tuple(base[n] for n in order)
    with torch.enable_grad():
        inputs = tuple(t.clone().requires_grad_(True) for t in point)
        g = torch.autograd.grad(total(*inputs), inputs)
    _, hg = torch.autograd.functional.hvp(total, point, tuple(t.detach() for t in g))
    return dict(zip(order, point)), dict(zip(order, g)), dict(zip(order, hg))


def _flat(d, names):
    return torch.cat([d[n].flatten() for n in names])


def _unflat(flat, like):
    out, i = {}, 0
    for n, t in like.items():
        out[n] = flat[i:i + t.numel()].view_as(t)
        i += t.numel()
    return out


def _masks_equal(masks, expected):
    assert set(masks) == set(expected)
    for n in expected:
        assert torch.equal(masks[n].bool(), expected[n].bool()), n


# --- GraSP ------------------------------------------------------------------------------------------------

def test_grasp_official_redraws_linear_weights_with_xavier_and_keeps_at_or_above_the_kth_smallest():
    model, batches = _mlp64(), _batches(2)
    seed, sparsity = 3, 0.8
    original = copy.deepcopy(model.state_dict())
    # By hand: the official code's copy with its Linear weights re-drawn (global RNG, module order) ...
    redrawn = copy.deepcopy(model)
    torch.manual_seed(seed)
    with torch.no_grad():
        for module in redrawn.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_normal_(module.weight)
    names = list(_weights(redrawn))
    theta, _, hg = _hessian_gradient(redrawn, names, batches, F.cross_entropy, temperature=200.0)
    importance = _flat({n: theta[n] * hg[n] for n in names}, names)  # θ ⊙ Hg, −(the official score)
    # ... then its threshold: remove k = int(N * (1 - keep_ratio)), keep −score <= the k-th largest.
    k = int(importance.numel() * (1 - (1 - sparsity)))
    keep = -importance <= torch.topk(-importance, k).values[-1]

    scores = ep.score(model, "grasp", batches, seed=seed, preset="official")
    assert torch.allclose(_flat(scores, names), importance, rtol=1e-8, atol=1e-14)
    masks = ep.prune(model, "grasp", sparsity, data=batches, seed=seed, preset="official")
    _masks_equal(masks, _unflat(keep, theta))
    assert int(keep.sum()) == importance.numel() - k + 1  # one weight more than asked (no ties here)
    # the re-draw happened in the scored copy only: kept weights are the model's own
    for n in names:
        assert torch.equal(model.state_dict()[n], original[n] * masks[n])
    assert masks.info["preset"] == "official" and masks.info["rule"] == "grasp"


def test_grasp_default_is_the_paper_scoring_of_the_network_as_initialised():
    model, batches = _mlp64(), _batches(2)
    names = list(_weights(model))
    theta, _, hg = _hessian_gradient(model, names, batches, F.cross_entropy, temperature=200.0)
    importance = _flat({n: theta[n] * hg[n] for n in names}, names)
    default = ep.score(model, "grasp", batches)
    assert torch.allclose(_flat(default, names), importance, rtol=1e-8, atol=1e-14)
    assert torch.equal(_flat(ep.score(model, "grasp", batches, preset="paper"), names), _flat(default, names))
    official = ep.score(model, "grasp", batches, preset="official")
    assert not torch.allclose(_flat(official, names), importance)
    masks = ep.prune(copy.deepcopy(model), "grasp", 0.8, data=batches)
    n_keep = round(0.2 * importance.numel())
    expected = torch.zeros_like(importance, dtype=torch.bool)
    expected[torch.sort(importance, descending=True, stable=True).indices[:n_keep]] = True
    _masks_equal(masks, _unflat(expected, theta))
    assert masks.info["preset"] == "paper" and masks.info["preset_changed"] == {}


# --- CroP and SNIP (EarlyCroP repository) -------------------------------------------------------------

def test_crop_official_scores_in_eval_mode_on_five_batches_and_keeps_above_the_nth_largest():
    torch.manual_seed(0)
    model = SmallCNN().double()
    with torch.no_grad():  # running statistics that differ from any batch's: eval mode must matter
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    batches = [(x.double(), y) for x, y in (batch_for(SmallCNN.input_shape, n=6, seed=i) for i in range(7))]
    sparsity = 0.7
    names = list(_weights(model))
    names = [n for n in names if model.get_parameter(n).dim() > 1]  # Conv/Linear weights (not BatchNorm's)
    reference = copy.deepcopy(model).eval()
    theta, _, hg = _hessian_gradient(reference, names, batches[:5], F.cross_entropy)
    importance = _flat({n: (theta[n] * hg[n]).abs() for n in names}, names)
    total = importance.numel()
    n = int(total * (1 - sparsity))
    keep = importance > torch.topk(importance, n).values[-1]

    # from a loader (an iterator here) the official code takes the first 5 batches
    masks = ep.prune(copy.deepcopy(model), "crop", sparsity, data=iter(batches), preset="official")
    _masks_equal(masks, _unflat(keep, theta))
    assert int(keep.sum()) == n - 1
    same = ep.prune(copy.deepcopy(model), "crop", sparsity, data=iter(batches), train=False, num_batches=5,
                    rule="earlycrop")  # the preset is these settings, nothing hidden
    _masks_equal(masks, same)
    paper = ep.prune(copy.deepcopy(model), "crop", sparsity, data=batches)
    assert int(sum(m.sum() for m in paper.values())) == round((1 - sparsity) * total)


def test_snip_official_is_nll_on_raw_logits_in_eval_mode_on_five_batches():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(12, 10), nn.Dropout(0.5), nn.ReLU(), nn.Linear(10, 4)).double()
    batches, sparsity = _batches(6), 0.6
    names = list(_weights(model))
    reference = copy.deepcopy(model).eval()  # eval: no dropout
    loss = sum(F.nll_loss(reference(x), y) for x, y in batches[:5])  # raw logits, not log-softmax
    grads = torch.autograd.grad(loss, [reference.get_parameter(n) for n in names])
    importance = torch.cat([(reference.get_parameter(n) * g).abs().flatten() for n, g in zip(names, grads)])
    n = int(importance.numel() * (1 - sparsity))
    keep = importance > torch.topk(importance, n).values[-1]
    masks = ep.prune(copy.deepcopy(model), "snip", sparsity, data=iter(batches), preset="official")
    _masks_equal(masks, _unflat(keep, _weights(model)))
    assert masks.info["preset_changed"]["loss_fn"] == "nll_on_logits"


def test_official_crop_it_schedule_starts_at_a_quarter_for_targets_up_to_a_half():
    model, batches = _mlp64(), _batches(5)
    for sparsity in (0.4, 0.5):
        start = 0.25
        expected = [sparsity - (sparsity - start) * 0.5**i for i in range(6)] + [sparsity]
        expected = [v for i, v in enumerate(expected) if i == 0 or v > expected[i - 1]]
        official = ep.prune(copy.deepcopy(model), "crop-it", sparsity, data=batches, preset="official")
        assert official.info["schedule"] == pytest.approx(expected)
        assert ep.prune(copy.deepcopy(model), "crop-it", sparsity, data=batches).info["schedule"] == [sparsity]
    high = ep.prune(copy.deepcopy(model), "crop-it", 0.9, data=batches, preset="official").info["schedule"]
    assert high == pytest.approx([0.9 - 0.4 * 0.5**i for i in range(6)] + [0.9])


# --- ProsPr, SynFlow ----------------------------------------------------------------------------------------

def test_prospr_official_keeps_the_ceiling_of_the_kept_fraction():
    model, batches = _mlp64(), _batches(1)
    total = sum(p.numel() for p in _weights(model).values())  # 12*10 + 10*8 + 8*4 = 232
    sparsity = 0.9  # keeps 23.2: round 23, ceil 24
    assert round((1 - sparsity) * total) != math.ceil(total * (1 - sparsity))
    scores = ep.score(model, "prospr", batches)
    flat = _flat(scores, list(scores))
    n_keep = math.ceil(total * (1 - sparsity))
    expected = torch.zeros_like(flat, dtype=torch.bool)
    expected[torch.sort(flat, descending=True, stable=True).indices[:n_keep]] = True
    masks = ep.prune(copy.deepcopy(model), "prospr", sparsity, data=batches, preset="official")
    _masks_equal(masks, _unflat(expected, scores))
    assert int(sum(m.sum() for m in ep.prune(copy.deepcopy(model), "prospr", sparsity, data=batches).values())) \
        == round((1 - sparsity) * total)


def test_synflow_official_is_the_repository_threshold_rule():
    model = _mlp64()
    official = ep.prune(copy.deepcopy(model), "synflow", 0.9, input_shape=(12,), iterations=3, preset="official")
    by_hand = ep.prune(copy.deepcopy(model), "synflow", 0.9, input_shape=(12,), iterations=3, rule="official")
    _masks_equal(official, by_hand)
    assert official.info["rule"] == "official"


# --- structured CroP: gates on the conv output, eval mode -------------------------------------------------

def test_structured_crop_official_gates_the_conv_output_in_eval_mode():
    torch.manual_seed(2)
    model = SmallCNN().double()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    batches = [(x.double(), y) for x, y in (batch_for(SmallCNN.input_shape, n=6, seed=i) for i in range(6))]
    reference = copy.deepcopy(model).eval()
    convs = {"features.0": reference.features[0], "features.3": reference.features[3]}
    gates = {name: torch.ones(conv.out_channels, dtype=torch.float64, requires_grad=True)
             for name, conv in convs.items()}
    handles = [conv.register_forward_hook(lambda m, i, out, g=gates[name]: out * g.view(1, -1, 1, 1))
               for name, conv in convs.items()]
    weights = [p for n, p in reference.named_parameters() if n.endswith("weight") and p.dim() > 1]
    g = [torch.zeros_like(w) for w in weights]
    for x, y in batches[:5]:
        for acc, grad in zip(g, torch.autograd.grad(F.cross_entropy(reference(x), y), weights)):
            acc += grad
    totals = {name: torch.zeros_like(gate) for name, gate in gates.items()}
    for x, y in batches[:5]:
        flow = torch.autograd.grad(F.cross_entropy(reference(x), y), weights, create_graph=True)
        z = sum((f * gg).sum() for f, gg in zip(flow, g))
        for name, grad in zip(gates, torch.autograd.grad(z, list(gates.values()))):
            totals[name] += grad
    for h in handles:
        h.remove()
    by_hand = {name: t.abs() for name, t in totals.items()}

    plan = build_groups(model, batches[0][0][:1])
    importance = {grp.index: by_hand[grp.producers[0]] for grp in plan.groups}
    expected = select_channels(importance, plan.groups, 0.5)
    result = ep.prune_channels(copy.deepcopy(model), "crop", 0.5, data=iter(batches), preset="official")
    assert {k: v.tolist() for k, v in result.kept_channels.items()} == {k: v.tolist() for k, v in expected.items()}
    assert result.info["gate_at"] == "output" and result.info["train"] is False
    paper = ep.prune_channels(copy.deepcopy(model), "crop", 0.5, data=batches)
    assert paper.info["gate_at"] == "norm" and paper.info["preset"] == "paper"


# --- the trigger ------------------------------------------------------------------------------------------

def test_official_trigger_measures_every_parameter():
    torch.manual_seed(0)
    model = SmallCNN()
    batches = [batch_for(SmallCNN.input_shape, n=6)]
    official = ep.EarlyPruner(model, "crop", 0.5, batches, preset="official")
    paper = ep.EarlyPruner(model, "crop", 0.5, batches)
    assert set(official.distance.params) == {n for n, _ in model.named_parameters()}
    assert set(paper.distance.params) == set(ep.prunable.prunable_parameters(model))
    official.distance.set_reference()
    paper.distance.set_reference()
    with torch.no_grad():
        model.features[1].bias.add_(1.0)  # a BatchNorm shift moves: only the official distance sees it
    everything = torch.cat([p.detach().flatten() for p in model.parameters()])
    reference = torch.cat([official.distance.reference[n].flatten() for n, _ in model.named_parameters()])
    assert official.distance.distance() == pytest.approx(float((everything - reference).norm() / reference.norm()))
    assert paper.distance.distance() == 0.0
    assert trigger_parameters(model, "paper").keys() == paper.distance.params.keys()


def test_early_pruner_passes_the_preset_to_the_pruning():
    torch.manual_seed(0)
    model = SmallCNN()
    batches = [batch_for(SmallCNN.input_shape, n=6, seed=i) for i in range(5)]
    pruner = ep.EarlyPruner(model, "crop", 0.4, batches, at_epoch=1, preset="official")
    pruner.step()
    expected = [0.4 - 0.15 * 0.5**i for i in range(6)] + [0.4]
    assert pruner.result.info["schedule"] == pytest.approx(expected)
    assert pruner.result.info["rule"] == "earlycrop"


# --- scoring mode, errors ---------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["snip", "grasp", "synflow", "prospr", "crop"])
def test_train_flag_sets_the_scoring_mode_of_every_criterion(method):
    torch.manual_seed(0)
    # dropout is active in training mode only (SynFlow's one all-ones example rules out BatchNorm1d there)
    model = nn.Sequential(nn.Linear(12, 10), nn.Dropout(0.3), nn.ReLU(), nn.Linear(10, 4)).double()
    batches = _batches(2)
    options = {"input_shape": (12,)} if method == "synflow" else {}
    train = ep.score(model, method, batches, train=True, **options)
    evaluation = ep.score(model, method, batches, train=False, **options)
    assert any(not torch.allclose(train[n], evaluation[n]) for n in train)
    mode_default = True if method != "synflow" else False
    default = ep.score(model, method, batches, **options)
    chosen = train if mode_default else evaluation
    assert all(torch.equal(default[n], chosen[n]) for n in default)
    assert model.training  # restored


def test_structured_train_flag_is_accepted_by_prune_channels_and_refused_by_prune():
    torch.manual_seed(0)
    model = SmallCNN()
    batches = [batch_for(SmallCNN.input_shape, n=6)]
    result = ep.prune_channels(copy.deepcopy(model), "snip", 0.5, data=batches, train=False)
    assert result.info["train"] is False
    with pytest.raises(PruningError, match="prune_channels"):
        ep.prune(copy.deepcopy(model), "snip", 0.5, data=batches, structured=True, train=False)


def test_a_setting_the_preset_fixes_cannot_be_given_another_value():
    model, batches = _mlp64(), _batches(2)
    with pytest.raises(PruningError, match="preset='official' sets rule='grasp'"):
        ep.prune(copy.deepcopy(model), "grasp", 0.8, data=batches, preset="official", rule="official")
    with pytest.raises(PruningError, match="temperature"):  # not fixed by the preset: still checked
        ep.prune(copy.deepcopy(model), "grasp", 0.8, data=batches, preset="official", temperature=-1)
    # a default value cannot be told from no value: the preset's replaces it (documented)
    masks = ep.prune(copy.deepcopy(model), "grasp", 0.8, data=batches, preset="official", reinit=False)
    assert masks.info["preset_changed"]["reinit"] is True
    masks = ep.prune(copy.deepcopy(model), "grasp", 0.8, data=batches, preset="official", rule="grasp")
    assert masks.info["rule"] == "grasp"  # the preset's own value is accepted
    with pytest.raises(PruningError, match="preset must be one of"):
        ep.prune(copy.deepcopy(model), "snip", 0.8, data=batches, preset="offical")


def test_methods_without_official_code_are_the_same_under_both_presets():
    model, batches = _mlp64(), _batches(1)
    for method in ("random", "magnitude"):
        a = ep.prune(copy.deepcopy(model), method, 0.7, data=batches)
        b = ep.prune(copy.deepcopy(model), method, 0.7, data=batches, preset="official")
        _masks_equal(a, b)
        assert b.info["preset_changed"] == {} and b.info["official_source"] is None
