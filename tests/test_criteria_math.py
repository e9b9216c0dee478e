"""Each criterion against an independent route on tiny networks (float64)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import earlyprune as ep


def tiny_net(seed: int = 0) -> nn.Sequential:
    """3 -> 3 -> 2 with tanh, no biases: 15 weights, small enough for a full Hessian."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 3, bias=False), nn.Tanh(), nn.Linear(3, 2, bias=False)).double()


def tiny_data(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(6, 3, generator=g, dtype=torch.float64), torch.tensor([0, 1, 0, 1, 1, 0])


def flat_loss(model: nn.Module, x, y, temperature: float = 1.0):
    """L(θ) as a function of the flat vector of the two weights, for autograd.functional."""
    shapes = [p.shape for p in model.parameters()]
    names = [n for n, _ in model.named_parameters()]

    def f(theta: torch.Tensor) -> torch.Tensor:
        parts = theta.split([s.numel() for s in shapes])
        params = {n: t.view(s) for n, t, s in zip(names, parts, shapes)}
        return F.cross_entropy(functional_call(model, params, (x,)) / temperature, y)

    theta = torch.cat([p.detach().flatten() for p in model.parameters()])
    return f, theta, names, shapes


def unflatten(vec, names, shapes):
    return {n: t.view(s) for n, t, s in zip(names, vec.split([s.numel() for s in shapes]), shapes)}


def hessian_times_gradient(model, x, y, temperature=1.0):
    f, theta, names, shapes = flat_loss(model, x, y, temperature)
    g = torch.autograd.functional.jacobian(f, theta)
    H = torch.autograd.functional.hessian(f, theta)
    return unflatten(theta, names, shapes), unflatten(g, names, shapes), unflatten(H @ g, names, shapes)


def test_snip_equals_abs_weight_times_gradient_and_mask_derivative():
    model = tiny_net()
    x, y = tiny_data()
    scores = ep.score(model, "snip", (x, y))
    # Route 1: |θ ⊙ ∂L/∂θ| by plain autograd.
    loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    # Route 2: |∂L/∂m| at m = 1 with an explicit multiplicative mask.
    masks = {n: torch.ones_like(p, requires_grad=True) for n, p in model.named_parameters()}
    masked = {n: p.detach() * masks[n] for n, p in model.named_parameters()}
    mask_grads = torch.autograd.grad(F.cross_entropy(functional_call(model, masked, (x,)), y), list(masks.values()))
    for (name, p), g, mg in zip(model.named_parameters(), grads, mask_grads):
        torch.testing.assert_close(scores[name], (p.detach() * g).abs())
        torch.testing.assert_close(scores[name], mg.abs())


def test_grasp_hg_equals_full_hessian_product_with_temperature():
    model = tiny_net()
    x, y = tiny_data()
    scores = ep.score(model, "grasp", (x, y))  # default T = 200
    theta, _, hg = hessian_times_gradient(model, x, y, temperature=200.0)
    for name in theta:
        expected = theta[name] * hg[name]
        assert expected.abs().max() > 0
        torch.testing.assert_close(scores[name], expected, rtol=1e-6, atol=1e-18)


def test_grasp_sign_is_pinned_positive_theta_hg_is_kept():
    """The official code removes the highest −θ⊙Hg, so importance is +θ⊙Hg (signed, not abs).

    Negating the importance, or taking abs, would make this fail.
    """
    model = tiny_net(seed=3)
    x, y = tiny_data()
    theta, _, hg = hessian_times_gradient(model, x, y, temperature=200.0)
    official_score = torch.cat([(-theta[n] * hg[n]).flatten() for n in theta])
    assert (official_score > 0).any() and (official_score < 0).any()
    masks = ep.prune(model, "grasp", sparsity=0.4, data=[(x, y)])
    kept = torch.cat([masks[n].flatten() for n in theta])
    n_remove = official_score.numel() - int(kept.sum())
    removed_expected = torch.zeros_like(kept)
    removed_expected[torch.topk(official_score, n_remove).indices] = True
    assert torch.equal(~kept, removed_expected)


def test_grasp_temperature_changes_the_scores():
    model = tiny_net()
    x, y = tiny_data()
    s1 = ep.score(model, "grasp", (x, y), temperature=1.0)
    theta, _, hg = hessian_times_gradient(model, x, y, temperature=1.0)
    for name in theta:
        torch.testing.assert_close(s1[name], theta[name] * hg[name])


def test_crop_is_abs_theta_hg_without_temperature():
    model = tiny_net()
    x, y = tiny_data()
    scores = ep.score(model, "crop", (x, y))
    theta, _, hg = hessian_times_gradient(model, x, y)
    for name in theta:
        torch.testing.assert_close(scores[name], (theta[name] * hg[name]).abs())


def test_crop_under_mask_uses_the_masked_gradient():
    model = tiny_net()
    x, y = tiny_data()
    first = next(iter(dict(model.named_parameters())))
    mask = {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters()}
    mask[first][0, :] = False
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.mul_(mask[n])
    scores = ep.score(model, "crop", (x, y), masks=mask)
    f, theta, names, shapes = flat_loss(model, x, y)
    m = torch.cat([mask[n].flatten() for n in names]).double()
    g = torch.autograd.functional.jacobian(f, theta) * m
    hg = unflatten(torch.autograd.functional.hessian(f, theta) @ g, names, shapes)
    th = unflatten(theta, names, shapes)
    for name in names:
        torch.testing.assert_close(scores[name], (th[name] * hg[name]).abs())
    assert torch.all(scores[first][0, :] == 0)


def test_synflow_matches_closed_form_of_two_layer_linear_net():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3, bias=False), nn.Linear(3, 2, bias=False)).double()
    w1, w2 = model[0].weight.detach(), model[1].weight.detach()
    scores = ep.score(model, "synflow", input_shape=(4,))
    # R = 1ᵀ|W2||W1|1: ∂R/∂|W1|_ij = Σ_k |W2|_ki, ∂R/∂|W2|_ki = Σ_j |W1|_ij.
    expected1 = w1.abs() * w2.abs().sum(0).unsqueeze(1)
    expected2 = w2.abs() * w1.abs().sum(1).unsqueeze(0)
    torch.testing.assert_close(scores["0.weight"], expected1)
    torch.testing.assert_close(scores["1.weight"], expected2)
    # The model's signs are untouched.
    assert (model[0].weight < 0).any()


def test_synflow_scores_in_eval_mode_with_abs_of_every_parameter_and_buffer():
    """The official route by hand: a copy in eval mode whose parameters and BatchNorm buffers are all made
    non-negative, an all-ones input, R = sum of outputs, score |θ ⊙ ∂R/∂θ|. Dropout in train mode or raw
    (signed) running means would give other numbers."""
    import copy

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Dropout(0.5), nn.Linear(4, 3)).double()
    model.train()
    with torch.no_grad():  # non-trivial running statistics, some negative
        model[1].running_mean.copy_(torch.tensor([0.5, -1.0, 2.0, -0.3]))
        model[1].running_var.copy_(torch.tensor([0.5, 2.0, 1.5, 0.8]))
        model[1].weight.copy_(torch.tensor([1.0, -0.5, 2.0, 0.7]))
    scores = ep.score(model, "synflow", input_shape=(5,))
    assert model.training and (model[0].weight < 0).any()  # the caller's model is untouched
    linear = copy.deepcopy(model).eval()
    with torch.no_grad():
        for tensor in list(linear.parameters()) + [b for b in linear.buffers() if b.is_floating_point()]:
            tensor.abs_()
    flow = linear(torch.ones(1, 5, dtype=torch.float64)).sum()
    flow.backward()
    for name in ("0.weight", "4.weight"):
        param = dict(linear.named_parameters())[name]
        torch.testing.assert_close(scores[name], (param.grad * param).abs())


def test_synflow_double_option_returns_float64_from_float32_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).float()
    s32 = ep.score(model, "synflow", input_shape=(4,))
    s64 = ep.score(model, "synflow", input_shape=(4,), double=True)
    assert s64["0.weight"].dtype == torch.float64 and model[0].weight.dtype == torch.float32
    torch.testing.assert_close(s32["0.weight"].double(), s64["0.weight"], rtol=1e-5, atol=1e-7)


def test_prospr_with_zero_steps_is_snip():
    model = tiny_net()
    x, y = tiny_data()
    snip = ep.score(model, "snip", (x, y))
    prospr = ep.score(model, "prospr", (x, y), steps=0)
    for name in snip:
        torch.testing.assert_close(prospr[name], snip[name])


def test_prospr_meta_gradient_matches_finite_differences():
    """|∂L(θ_2)/∂m| after two unrolled SGD steps, against central differences on each mask entry."""
    model = tiny_net(seed=5)
    x, y = tiny_data()
    lr = 0.5
    scores = ep.score(model, "prospr", (x, y), steps=2, inner_lr=lr)
    names = [n for n, _ in model.named_parameters()]
    base = {n: p.detach().clone() for n, p in model.named_parameters()}

    def meta_loss(masks):
        """Plain (non-differentiable) unrolled SGD from θ ⊙ m, then the loss."""
        w = {n: (base[n] * masks[n]).requires_grad_(True) for n in names}
        for _ in range(2):
            loss = F.cross_entropy(functional_call(model, w, (x,)), y)
            grads = torch.autograd.grad(loss, [w[n] for n in names])
            w = {n: (w[n] - lr * g).detach().requires_grad_(True) for n, g in zip(names, grads)}
        return F.cross_entropy(functional_call(model, w, (x,)), y).item()

    eps = 1e-6
    for name in names:
        for idx in [(0, 0), (1, 2)]:
            plus = {n: torch.ones_like(base[n]) for n in names}
            minus = {n: torch.ones_like(base[n]) for n in names}
            plus[name][idx] += eps
            minus[name][idx] -= eps
            fd = (meta_loss(plus) - meta_loss(minus)) / (2 * eps)
            assert scores[name][idx].item() == pytest.approx(abs(fd), rel=1e-4, abs=1e-9)


def test_prospr_differs_from_snip_with_steps():
    model = tiny_net()
    x, y = tiny_data()
    snip = ep.score(model, "snip", (x, y))
    prospr = ep.score(model, "prospr", (x, y), steps=3)
    assert any(not torch.allclose(snip[n], prospr[n]) for n in snip)


def test_magnitude_and_random():
    model = tiny_net()
    mag = ep.score(model, "magnitude")
    for n, p in model.named_parameters():
        torch.testing.assert_close(mag[n], p.detach().abs())
    r1, r2, r3 = ep.score(model, "random", seed=1), ep.score(model, "random", seed=1), ep.score(model, "random", seed=2)
    assert all(torch.equal(r1[n], r2[n]) for n in r1)
    assert not all(torch.equal(r1[n], r3[n]) for n in r1)


def test_prospr_first_order_is_theta_times_the_gradient_after_plain_sgd_steps():
    """The official code's method="first_order", by an independent route: three plain SGD steps on a
    copy of the model (every parameter, lr 0.1, no momentum), then |θ_0 ⊙ ∇L(θ_3)| for each weight."""
    import copy

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x, y = torch.randn(10, 4, dtype=torch.float64), torch.randint(0, 3, (10,))
    scores = ep.score(model, "prospr", (x, y), first_order=True)
    stepped = copy.deepcopy(model)
    optimizer = torch.optim.SGD(stepped.parameters(), lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        F.cross_entropy(stepped(x), y).backward()
        optimizer.step()
    optimizer.zero_grad()
    F.cross_entropy(stepped(x), y).backward()
    for name, weight in [("0.weight", model[0].weight), ("2.weight", model[2].weight)]:
        expected = (weight.detach() * dict(stepped.named_parameters())[name].grad).abs()
        torch.testing.assert_close(scores[name], expected, rtol=1e-10, atol=1e-14)
    full = ep.score(model, "prospr", (x, y))  # the paper's meta-gradient differs: it has the second-order terms
    assert not torch.allclose(full["0.weight"], scores["0.weight"], rtol=1e-3)
