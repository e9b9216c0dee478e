"""Degenerate pruning results are loud: all-zero and non-finite scores, collapse policies ('guard', 'allow',
'warn'), and the achieved sparsity next to the target."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import earlyprune as ep
from earlyprune.criteria import Criterion
from earlyprune.selection import select

from conftest import mlp


def constant_importance(value: float) -> Criterion:
    def importance(scoring):
        return {n: torch.full_like(p, value) for n, p in scoring.params.items()}

    return Criterion(f"const{str(value).replace('.', '').replace('-', 'm')}", paper="test", importance=importance,
                     data="none")


def model():
    torch.manual_seed(0)
    return mlp((8, 16, 16, 4))


def test_all_zero_scores_are_an_error_or_with_warn_a_warning():
    with pytest.raises(ep.PruningError, match="scored every weight 0.*cross-entropy on one output is always 0"):
        ep.prune(model(), constant_importance(0.0), 0.5)
    with pytest.warns(RuntimeWarning, match="scored every weight 0"):
        masks = ep.prune(model(), constant_importance(0.0), 0.5, on_zero_scores="warn", on_collapse="allow")
    assert masks.kept() == round(0.5 * masks.total())
    with pytest.raises(ep.PruningError, match="on_zero_scores"):
        ep.prune(model(), constant_importance(1.0), 0.5, on_zero_scores="ignore")
    ep.prune(model(), constant_importance(1.0), 0.5, on_collapse="allow")  # equal, non-zero scores: not degenerate


def test_a_loss_that_does_not_depend_on_the_weights_is_an_error():
    x, y = torch.randn(16, 8), torch.arange(16) % 4
    with pytest.raises(ep.PruningError, match="scored every weight 0"):
        ep.prune(model(), "snip", 0.5, data=(x, y), loss_fn=lambda out, t: (out * 0).sum() + 1.0)


def test_non_finite_scores_are_an_error():
    with pytest.raises(ep.PruningError, match="NaN"):
        ep.prune(model(), constant_importance(float("nan")), 0.5)


def test_zero_scores_behind_a_collapsed_layer_are_the_collapse_policys_business():
    importance = {"a": torch.zeros(4), "b": torch.zeros(4)}
    current = {"a": torch.zeros(4, dtype=torch.bool), "b": torch.ones(4, dtype=torch.bool)}
    masks, collapsed = select(importance, 0.75, current=current)  # 'a' is already gone: no zero-score error
    assert collapsed == ["a"] and int(masks["b"].sum()) == 2


def collapsing_first_layer():
    torch.manual_seed(0)
    net = mlp((32, 16, 4))
    with torch.no_grad():
        net[0].weight.mul_(1e-3)  # magnitude removes the whole first layer at 95%
    return net


def test_guard_refuses_a_cut_input_layer_allow_keeps_it_quietly_warn_warns():
    with pytest.raises(ep.LayerCollapseError, match="first prunable layer 0.weight.*on_collapse='warn' or 'allow'"):
        ep.prune(collapsing_first_layer(), "magnitude", 0.95, on_collapse="guard")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 'allow': no warning at all
        masks = ep.prune(collapsing_first_layer(), "magnitude", 0.95, on_collapse="allow")
    assert masks.info["collapsed"] == ["0.weight"]
    with pytest.warns(RuntimeWarning, match="layer collapse"):
        masks = ep.prune(collapsing_first_layer(), "magnitude", 0.95, on_collapse="warn")
    assert masks.info["collapsed"] == ["0.weight"]
    net = collapsing_first_layer()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    with pytest.raises(ep.LayerCollapseError, match="first prunable layer 0.weight"):
        ep.prune(net, "magnitude", 0.95)  # the default is the guard
    # nothing lost: the refused prune leaves the model's weights as they were
    assert all(torch.equal(p, before[n]) for n, p in net.named_parameters())


def test_guard_counts_layers_emptied_and_spares_a_lone_middle_layer():
    sizes = {"in": 40, "h1": 10, "h2": 10, "h3": 10, "out": 40}
    one_middle = {n: torch.full((k,), 0.01 if n == "h2" else 1.0) + torch.arange(k) * 1e-3 for n, k in sizes.items()}
    _, collapsed = select(one_middle, 0.1, on_collapse="guard")
    assert collapsed == ["h2"]  # 1 of 5, neither end: kept, reported
    most = {n: torch.full((k,), 0.01 if n.startswith("h") else 1.0) for n, k in sizes.items()}
    with pytest.raises(ep.LayerCollapseError, match="3 of the 5 layers"):
        select(most, 0.3, on_collapse="guard")
    last = {"in": torch.ones(10), "out": torch.full((10,), 0.01)}
    with pytest.raises(ep.LayerCollapseError, match="last prunable layer out"):
        select(last, 0.5, on_collapse="guard")


def test_achieved_sparsity_is_recorded_and_a_difference_warned():
    masks = ep.prune(model(), "magnitude", 0.9)
    assert masks.info["sparsity_achieved"] == pytest.approx(0.9, abs=1 / masks.total())
    tied = model()
    with torch.no_grad():
        for p in tied.parameters():
            p.fill_(1.0)  # every weight ties: the official rule prunes all of them at the threshold
    with pytest.warns(RuntimeWarning, match="pruning reached sparsity 1 over the .* not the 0.5 asked for"):
        masks = ep.prune(tied, "magnitude", 0.5, rule="official", on_collapse="allow")
    assert masks.info["sparsity_achieved"] == 1.0 and masks.info["sparsity_target"] == 0.5


def dead_model():
    net = model()
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()  # a dead network: every gradient score is 0
    return net


def test_early_pruner_warns_on_zero_scores_instead_of_ending_the_run():
    net = dead_model()
    x, y = torch.randn(16, 8), torch.arange(16) % 4
    pruner = ep.EarlyPruner(net, "snip", 0.5, (x, y), at_epoch=1, on_collapse="allow")  # dead: nothing to cut
    with pytest.warns(RuntimeWarning, match="scored every weight 0"):
        pruner.step()
    assert pruner.result.kept() == round(0.5 * pruner.result.total())
    with pytest.raises(ep.PruningError, match="scored every weight 0"):
        ep.prune(dead_model(), "snip", 0.5, data=(x, y))  # at init (no earlier cut): an error
    assert F.cross_entropy(dead_model()(x), y) > 0  # the loss is there, it just does not depend on the weights


class Residual(nn.Module):
    """x + b(relu(a(x))), then a head: emptying a or b removes a branch, not the path to the output."""

    input_shape = (8,)

    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.head(x + self.b(torch.relu(self.a(x))))


def test_the_guard_runs_the_pruned_network_a_skip_path_is_not_a_cut():
    """The guard's test is whether the output still depends on the input, not which layer emptied: in a
    residual block the first layer may go (a warning), in a plain stack the same cut is an error, and an
    emptied output layer cuts both."""
    torch.manual_seed(0)
    residual = Residual()
    with torch.no_grad():
        residual.a.weight.mul_(1e-3)  # magnitude empties the first layer
    count = sum(p.numel() for n, p in residual.named_parameters() if n.endswith("weight"))
    sparsity = 64 / count
    with pytest.warns(RuntimeWarning, match="layer collapse"):
        masks = ep.prune(residual, "magnitude", sparsity)  # the default guard lets it through
    assert masks.info["collapsed"] == ["a.weight"]
    x = torch.randn(4, 8)
    assert not torch.allclose(residual(x), residual(x + 1.0))  # by hand: the output still follows the input

    plain = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        plain[0].weight.mul_(1e-3)
    with pytest.raises(ep.LayerCollapseError, match="no longer depends on its input"):
        ep.prune(plain, "magnitude", sparsity, data=(x, torch.arange(4) % 3))

    head_cut = Residual()
    with torch.no_grad():
        head_cut.head.weight.mul_(1e-4)
    with pytest.raises(ep.LayerCollapseError, match="no longer depends on its input"):
        ep.prune(head_cut, "magnitude", 24 / count)


def test_the_guard_is_not_fooled_by_a_dead_head_unchangeable_inputs_or_a_random_forward():
    from earlyprune.connectivity import output_depends_on_input

    torch.manual_seed(0)
    # a zero-initialised head (torchvision's ViT): the dense output ignores the input too, so the check says
    # nothing and the layer order decides: an emptied middle layer is kept with a warning
    from earlyprune.connectivity import network_cut

    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    with torch.no_grad():
        net[4].weight.zero_()
    x = torch.randn(6, 8)
    dense = {n: p.detach().clone() for n, p in net.named_parameters() if n.endswith("weight")}
    with torch.no_grad():
        net[2].weight.zero_()  # the middle layer pruned to nothing
    names = ["0.weight", "2.weight", "4.weight"]
    assert "no longer depends" in network_cut(net, names, ["2.weight"], x)  # judged on the pruned net alone
    assert network_cut(net, names, ["2.weight"], x, dense_params=dense) == ""  # dense was no better: layer order
    # inputs with nothing to change (all-False booleans): the test cannot tell
    assert output_depends_on_input(nn.Linear(8, 2), torch.zeros(4, 8, dtype=torch.bool)) is None

    class NoisyForward(nn.Module):  # draws random numbers even in eval mode (MC dropout)
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 3)

        def forward(self, x):
            return self.b(torch.nn.functional.dropout(self.a(x), 0.5, training=True))

    noisy = NoisyForward()
    with torch.no_grad():
        noisy.a.weight.zero_()
        noisy.a.bias.zero_()  # the first layer passes nothing: only the dropout noise differs between calls
    assert output_depends_on_input(noisy, x) is False


def test_an_error_in_a_later_round_leaves_the_weights_as_they_were():
    torch.manual_seed(0)
    net = mlp((32, 16, 4))
    with torch.no_grad():
        net[0].weight.mul_(1e-3)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    with pytest.raises(ep.LayerCollapseError):
        ep.prune(net, "magnitude", 0.99, iterations=3, on_collapse="raise")  # the first rounds mask in place
    assert all(torch.equal(p, before[n]) for n, p in net.named_parameters())


def test_targets_that_are_not_a_tensor_are_a_clear_error():
    from earlyprune.errors import PruningError
    from earlyprune.train import TrainConfig, train

    batches = [(torch.randn(8, 4), [0, 1, 2, 0, 1, 2, 0, 1])]
    with pytest.raises(PruningError, match="targets of each batch must be one tensor, got list"):
        train(torch.nn.Linear(4, 3), batches, None, TrainConfig(epochs=1, progress=False))


def test_namedtuple_inputs_are_moved_field_by_field():
    import collections

    from earlyprune.batches import to_device

    Pair = collections.namedtuple("Pair", "image mask")
    moved = to_device(Pair(torch.ones(2, dtype=torch.float64), torch.zeros(2, dtype=torch.long)), "cpu",
                      torch.float32)
    assert isinstance(moved, Pair) and moved.image.dtype == torch.float32 and moved.mask.dtype == torch.long
