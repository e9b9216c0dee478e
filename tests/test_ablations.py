"""Frankle et al.'s sanity checks as ep.prune(..., ablation=...): shuffle keeps each layer's density exactly
and moves the mask, invert keeps exactly the complement ranking, reinit re-draws the kept weights (from the
scheme asked for) and keeps the masks; the caller's random state is untouched."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import earlyprune as ep
from earlyprune.errors import PruningError

from conftest import batch_for, mlp


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return mlp((16, 12, 10, 4))


def _batches():
    return [batch_for((16,), n=16, seed=i) for i in range(2)]


def _flat(d):
    return torch.cat([d[n].flatten().double() for n in d])


def test_shuffle_keeps_each_layers_density_exactly_and_moves_the_mask():
    model, batches = _model(), _batches()
    original = copy.deepcopy(model.state_dict())
    plain = ep.prune(copy.deepcopy(model), "snip", 0.8, data=batches)
    shuffled = ep.prune(model, "snip", 0.8, data=batches, ablation="shuffle", seed=4)
    for name in plain:
        assert int(shuffled[name].sum()) == int(plain[name].sum())  # the layer's count, exactly
        assert not torch.equal(shuffled[name].bool(), plain[name].bool())
        # the kept weights keep their initial values, wherever the shuffle put the mask
        assert torch.equal(model.state_dict()[name], original[name] * shuffled[name])
    assert shuffled.info["ablation"] == "shuffle"
    again = ep.prune(_model(), "snip", 0.8, data=batches, ablation="shuffle", seed=4)
    assert all(torch.equal(again[n], shuffled[n]) for n in again)  # seeded
    other = ep.prune(_model(), "snip", 0.8, data=batches, ablation="shuffle", seed=5)
    assert any(not torch.equal(other[n], shuffled[n]) for n in other)


def test_invert_keeps_exactly_the_complement_ranking():
    model, batches = _model(), _batches()
    scores = ep.score(model, "snip", batches)
    flat = _flat(scores)
    total = flat.numel()
    sparsity = 0.7
    n_keep = round((1 - sparsity) * total)
    # the n_keep least important by the paper's scores, ties by position
    expected = torch.zeros(total, dtype=torch.bool)
    expected[torch.sort(-flat, descending=True, stable=True).indices[:n_keep]] = True
    inverted = ep.prune(copy.deepcopy(model), "snip", sparsity, data=batches, ablation="invert")
    assert torch.equal(_flat(inverted).bool(), expected)
    # at half sparsity the inverted mask is the plain mask's complement (magnitudes: no ties)
    assert _flat(ep.score(model, "magnitude")).unique().numel() == total
    half = ep.prune(copy.deepcopy(model), "magnitude", 0.5)
    half_inverted = ep.prune(copy.deepcopy(model), "magnitude", 0.5, ablation="invert")
    assert torch.equal(_flat(half_inverted).bool(), ~_flat(half).bool())


def test_invert_applies_to_every_round_of_an_iterative_method():
    model = _model()
    masks = ep.prune(copy.deepcopy(model), "synflow", 0.9, input_shape=(16,), iterations=3, ablation="invert",
                     on_collapse="allow")
    plain = ep.prune(copy.deepcopy(model), "synflow", 0.9, input_shape=(16,), iterations=3)
    assert masks.info["schedule"] == plain.info["schedule"]
    assert int(_flat(masks).sum()) == int(_flat(plain).sum())
    overlap = int((_flat(masks).bool() & _flat(plain).bool()).sum())
    assert overlap < 0.2 * int(_flat(plain).sum())  # nearly disjoint from what SynFlow keeps


def test_reinit_redraws_the_kept_weights_and_keeps_the_masks():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(400, 300), nn.ReLU(), nn.Linear(300, 10))
    batches = [batch_for((400,), classes=10, n=32)]
    original = copy.deepcopy(model.state_dict())
    plain = ep.prune(copy.deepcopy(model), "snip", 0.5, data=batches)
    reinit = ep.prune(model, "snip", 0.5, data=batches, ablation="reinit", init_scheme="kaiming")
    for name in plain:
        assert torch.equal(reinit[name], plain[name])
        weight = model.state_dict()[name]
        kept = reinit[name].bool()
        assert torch.all(weight[~kept] == 0)
        assert not torch.any(weight[kept] == original[name][kept])  # every kept weight re-drawn
    assert torch.equal(model.state_dict()["0.bias"], original["0.bias"])  # biases keep their values
    # drawn from Kaiming normal, N(0, 2 / fan_in): the first layer's kept weights have that spread
    first = model.state_dict()["0.weight"][reinit["0.weight"].bool()]
    assert first.std().item() == pytest.approx(math.sqrt(2 / 400), rel=0.05)
    assert abs(first.mean().item()) < 0.01
    assert reinit.info["init_scheme"] == "kaiming"


def test_reinit_without_a_scheme_uses_pytorchs_default_initialisation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(400, 300), nn.ReLU(), nn.Linear(300, 10))
    masks = ep.prune(model, "magnitude", 0.5, ablation="reinit")
    kept = model[0].weight[masks["0.weight"].bool()]
    bound = 1 / math.sqrt(400)  # PyTorch's Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert kept.abs().max().item() <= bound
    assert kept.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    assert masks.info["init_scheme"] == "default"


@pytest.mark.parametrize("ablation", ["shuffle", "reinit"])
def test_ablations_leave_the_global_random_state_alone(ablation):
    model, batches = _model(), _batches()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    ep.prune(model, "snip", 0.8, data=batches, ablation=ablation)
    assert torch.equal(torch.rand(3), expected)


def test_bad_ablations_are_refused_with_the_fix():
    model, batches = _model(), _batches()
    with pytest.raises(PruningError, match="ablation must be one of"):
        ep.prune(copy.deepcopy(model), "snip", 0.8, data=batches, ablation="shufle")
    with pytest.raises(PruningError, match="init_scheme applies to ablation='reinit'"):
        ep.prune(copy.deepcopy(model), "snip", 0.8, data=batches, init_scheme="kaiming")
    with pytest.raises(PruningError, match="must be one of"):
        ep.prune(copy.deepcopy(model), "snip", 0.8, data=batches, ablation="reinit", init_scheme="xavier")
    pruned = copy.deepcopy(model)
    ep.prune(pruned, "snip", 0.5, data=batches)
    with pytest.raises(PruningError, match="prune a fresh model"):
        ep.prune(pruned, "snip", 0.8, data=batches, ablation="shuffle")


def test_no_ablation_is_the_plain_pruning():
    model, batches = _model(), _batches()
    plain = ep.prune(copy.deepcopy(model), "snip", 0.8, data=batches)
    none = ep.prune(copy.deepcopy(model), "snip", 0.8, data=batches, ablation=None)
    assert all(torch.equal(plain[n], none[n]) for n in plain)
    assert plain.info["ablation"] is None


def test_report_section_and_layer_plot_read_the_records(tmp_path):
    from earlyprune.experiments.sanity_report import layer_densities, plot_layer_density, sanity_section

    def record(method, ablation, seed, accuracy, preset="paper"):
        return {"dataset": "mnist", "model": "lenet300", "method": method, "sparsity": 0.9, "seed": seed,
                "ablation": ablation, "preset": preset, "final_accuracy": accuracy, "final_metric": accuracy,
                "metric_name": "accuracy", "layer_density": {"fc1.weight": 0.05 + seed / 100, "fc2.weight": 0.3}}

    records = [record("snip", "none", 0, 0.90), record("snip", "none", 1, 0.92), record("snip", "invert", 0, 0.5),
               record("grasp", "none", 0, 0.91, preset="official")]
    text = sanity_section(records)
    row = next(line for line in text.splitlines() if line.startswith("| snip |"))
    assert "91.00 ± 1.41" in row and "50.00 ± 0.00 (-41.00) (n=1)" in row
    assert "| grasp [official] | 90% | 91.00 ± 0.00 (n=1) |" in text
    assert sanity_section([r for r in records if r["ablation"] == "none"]) == ""  # no ablation: no section
    densities = layer_densities(records)[("mnist", "lenet300", 0.9)]
    assert densities["snip"]["fc1.weight"] == pytest.approx(0.055)  # mean over the seeds, no ablation only
    assert plot_layer_density(records, tmp_path / "layers.png") and (tmp_path / "layers.png").stat().st_size > 0
    assert not plot_layer_density([{**r, "layer_density": None} for r in records], tmp_path / "none.png")


def test_run_settings_for_presets_and_ablations(tmp_path):
    from earlyprune.experiments.config import RunConfig
    from earlyprune.experiments.sweep import load_sweep

    with pytest.raises(PruningError, match="unstructured pruning at initialisation"):
        RunConfig(method="snip", ablation="shuffle", structured=True)
    with pytest.raises(PruningError, match="not to method 'dense'"):
        RunConfig(method="dense", preset="official")
    plain = RunConfig(method="grasp")
    assert plain.key() == RunConfig(method="grasp", preset="paper", ablation="none").key()  # defaults unhashed
    assert RunConfig(method="grasp", preset="official").key() != plain.key()
    sweep = tmp_path / "sweep.toml"
    sweep.write_text('[grid]\ndatasets = ["mnist"]\nmodels = ["lenet300"]\nmethods = ["dense", "snip"]\n'
                     'ablations = ["none", "invert"]\npresets = ["paper", "official"]\n')
    cells, _ = load_sweep(sweep)
    assert sum(c.method == "dense" for c in cells) == 1  # dense runs once whatever the pruning axes
    assert {(c.preset, c.ablation) for c in cells if c.method == "snip"} == {
        ("paper", "none"), ("paper", "invert"), ("official", "none"), ("official", "invert")}
