"""The fused BatchNorm second derivative used by GraSP and CroP, against PyTorch's and finite differences."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from earlyprune.criteria._batchnorm_second_order import _BatchNorm, fused_batchnorm_second_order


@pytest.mark.parametrize("shape, affine", [((6, 3, 4, 5), True), ((7, 4), True), ((5, 3, 6), False),
                                           ((4, 2, 3, 3, 3), True)])
def test_first_and_second_derivatives_pass_finite_difference_checks(shape, affine):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=gen, dtype=torch.float64, requires_grad=True)
    channels = shape[1]
    if not affine:
        def layer(inp):
            return _BatchNorm.apply(inp, None, None, None, None, 0.1, 1e-5)

        inputs = (x,)
    else:
        weight = (torch.rand(channels, generator=gen, dtype=torch.float64) + 0.5).requires_grad_()
        bias = torch.randn(channels, generator=gen, dtype=torch.float64, requires_grad=True)

        def layer(inp, w, b):
            return _BatchNorm.apply(inp, w, b, None, None, 0.1, 1e-5)

        inputs = (x, weight, bias)
    assert torch.autograd.gradcheck(layer, inputs)
    assert torch.autograd.gradgradcheck(layer, inputs)


def bn_net(dims: int = 2) -> nn.Module:
    torch.manual_seed(0)
    if dims == 1:
        return nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 6),
                             nn.BatchNorm1d(6, affine=False), nn.Tanh(), nn.Linear(6, 3)).double()
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 5, 3), nn.BatchNorm2d(5, momentum=None), nn.Tanh(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3)).double()


def hessian_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, params: list) -> list:
    loss = nn.functional.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    return torch.autograd.grad(grads, params, grad_outputs=[g.detach() for g in grads])


@pytest.mark.parametrize("dims", [1, 2])
def test_hessian_gradient_product_and_running_statistics_equal_pytorchs(dims):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(8, 5, generator=gen, dtype=torch.float64) if dims == 1 else \
        torch.randn(8, 2, 6, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (8,), generator=gen)
    native, fused = bn_net(dims), bn_net(dims)
    weights = lambda m: [p for p in m.parameters() if p.dim() > 1]  # noqa: E731
    expected = hessian_gradient(native, x, y, weights(native))
    with fused_batchnorm_second_order():
        found = hessian_gradient(fused, x, y, weights(fused))
        assert node_is_fused(bn_net(dims)(x).sum())  # the fused layer is the one used
    for a, b in zip(found, expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for (name, a), b in zip(fused.state_dict().items(), native.state_dict().values()):
        assert torch.equal(a, b), name  # running mean, variance, num_batches_tracked updated alike


def node_is_fused(output: torch.Tensor) -> bool:
    """Whether the graph behind ``output`` has a fused BatchNorm node."""
    seen, stack = set(), [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if "_BatchNorm" in type(node).__name__:
            return True
        stack.extend(n for n, _ in node.next_functions)
    return False


def test_batchnorm_weights_differentiated_twice_get_pytorchs_hessian_too():
    """With γ and β among the differentiated parameters (as ProsPr's inner steps have them), every row
    of Hg, theirs included, equals PyTorch's."""
    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(8, 2, 6, 6, generator=gen, dtype=torch.float64), torch.randint(0, 3, (8,), generator=gen)
    native, fused = bn_net(), bn_net()
    expected = hessian_gradient(native, x, y, list(native.parameters()))
    with fused_batchnorm_second_order():
        found = hessian_gradient(fused, x, y, list(fused.parameters()))
    for a, b in zip(found, expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_eval_mode_and_other_dtypes_are_left_to_pytorch():
    model = bn_net()
    with fused_batchnorm_second_order():
        assert node_is_fused(model(torch.randn(4, 2, 6, 6, dtype=torch.float64)).sum())
        model.eval()  # running statistics: an affine map, whose double backward is already cheap
        assert not node_is_fused(model(torch.randn(4, 2, 6, 6, dtype=torch.float64)).sum())
        half = nn.BatchNorm1d(3).to(torch.bfloat16)
        assert not node_is_fused(half(torch.randn(4, 3, dtype=torch.bfloat16, requires_grad=True)).sum())


def test_prospr_meta_gradient_through_the_fused_layers_equals_pytorchs():
    from earlyprune.criteria.prospr import _meta_gradient
    from earlyprune.loss import default_loss
    from earlyprune.prunable import prunable_parameters

    gen = torch.Generator().manual_seed(3)
    batch = (torch.randn(8, 2, 6, 6, generator=gen, dtype=torch.float64), torch.randint(0, 3, (8,), generator=gen))
    model = bn_net().train()
    params = prunable_parameters(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    expected = _meta_gradient(model, params, [batch], default_loss, None, 3, 0.1, False)
    model.load_state_dict(state)
    with fused_batchnorm_second_order():
        found = _meta_gradient(model, params, [batch], default_loss, None, 3, 0.1, False)
        assert node_is_fused(model(batch[0]).sum())
    for name in expected:
        torch.testing.assert_close(found[name], expected[name], rtol=1e-9, atol=1e-12)


def test_one_value_per_channel_is_still_pytorchs_error_and_an_empty_batch_its_answer():
    """The fused layer would give β and zero gradients for a single value per channel; PyTorch refuses."""
    layer = nn.BatchNorm1d(3).train()
    with fused_batchnorm_second_order():
        with pytest.raises(ValueError, match="more than 1 value per channel"):
            layer(torch.randn(1, 3, requires_grad=True))
        empty = torch.randn(0, 3, 4, requires_grad=True)
        assert layer(empty).shape == (0, 3, 4)


def test_a_model_without_batchnorm_gets_no_mode():
    from torch.overrides import _get_current_function_mode_stack

    with fused_batchnorm_second_order(nn.Sequential(nn.Linear(3, 3))):
        assert not _get_current_function_mode_stack()
    with fused_batchnorm_second_order(bn_net()):
        assert len(_get_current_function_mode_stack()) == 1
