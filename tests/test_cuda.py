"""The library on a CUDA device: same answers as on the CPU, everything stays on the model's device.

Skipped where torch sees no CUDA device (CI here); run on a GPU machine with ``pytest tests/test_cuda.py``.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import earlyprune as ep
from earlyprune import models
from earlyprune.structured import prune_channels

from conftest import SmallCNN, TinyResNet, batch_for

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")


def on(batch, device):
    return [(x.to(device), y.to(device)) for x, y in batch] if isinstance(batch, list) else (
        batch[0].to(device), batch[1].to(device))


@pytest.mark.parametrize("method", ["random", "magnitude", "snip", "grasp", "synflow", "prospr", "crop"])
def test_every_criterion_scores_on_cuda_like_on_cpu(method):
    torch.manual_seed(0)
    cpu_model = SmallCNN().double()
    gpu_model = copy.deepcopy(cpu_model).to(CUDA)
    batch = batch_for(SmallCNN.input_shape)
    batch = (batch[0].double(), batch[1])
    cpu = ep.score(cpu_model, method, [batch], seed=3)
    gpu = ep.score(gpu_model, method, [batch], seed=3)  # CPU data: the library moves it
    for name, value in cpu.items():
        assert gpu[name].device.type == "cuda"
        if method == "random":  # drawn from a seeded generator: same on every device by design
            assert torch.equal(gpu[name].cpu(), value)
        else:
            torch.testing.assert_close(gpu[name].cpu(), value, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_masks_keep_pruned_weights_zero_on_cuda(optimizer):
    torch.manual_seed(0)
    model = SmallCNN().to(CUDA)
    masks = ep.prune(model, "snip", 0.9, data=[on(batch_for(SmallCNN.input_shape), CUDA)])
    assert masks.kept() == round(0.1 * masks.total())
    opt = (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
           if optimizer == "sgd" else torch.optim.AdamW(model.parameters(), lr=1e-2))
    ep.masking.binding(model).attach(opt)
    x, y = on(batch_for(SmallCNN.input_shape, seed=1), CUDA)
    for _ in range(20):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        assert mask.device.type == "cuda"
        assert torch.all(params[name][~mask] == 0)


def test_structured_surgery_on_cuda_matches_the_cpu_result():
    torch.manual_seed(0)
    cpu_model = TinyResNet()
    gpu_model = copy.deepcopy(cpu_model).to(CUDA)
    batch = batch_for(TinyResNet.input_shape)
    opt = torch.optim.SGD(gpu_model.parameters(), lr=0.1, momentum=0.9)
    prune_channels(cpu_model, "crop", 0.5, [batch])
    prune_channels(gpu_model, "crop", 0.5, [batch], optimizer=opt)
    assert {n: p.shape for n, p in cpu_model.named_parameters()} == {n: p.shape for n, p in gpu_model.named_parameters()}
    cpu_model.eval(), gpu_model.eval()
    x = batch[0]
    torch.testing.assert_close(gpu_model(x.to(CUDA)).cpu(), cpu_model(x), rtol=1e-4, atol=1e-5)
    gpu_model.train()
    opt.zero_grad()
    F.cross_entropy(gpu_model(x.to(CUDA)), batch[1].to(CUDA)).backward()
    opt.step()  # the optimizer holds the shrunk parameters


def test_early_pruner_and_report_on_cuda():
    torch.manual_seed(0)
    model = SmallCNN().to(CUDA)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pruner = ep.EarlyPruner(model, "crop", 0.5, [batch_for(SmallCNN.input_shape)], structured=True,
                            optimizer=opt, at_epoch=2)
    x, y = on(batch_for(SmallCNN.input_shape, seed=1), CUDA)
    events = []
    for epoch in (1, 2, 3):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        event = pruner.step(epoch, optimizer=opt)
        events += [event] if event else []
    assert [e.epoch for e in events] == [2]
    assert events[0].flops_after < events[0].flops_before
    assert all(p.device.type == "cuda" for p in model.parameters())
    assert ep.report(model, input_shape=SmallCNN.input_shape).flops == events[0].flops_after


def test_activation_density_resizes_on_cuda():
    torch.manual_seed(0)
    model = models.create("lenet5", num_classes=10).to(CUDA)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(32, 1, 28, 28)
    pruner = ep.ActivationDensityPruner(model, x[:1], optimizer=opt, prune_every=1)
    with torch.no_grad():  # a dead half: the first conv's odd channels never fire
        model.conv1.bias[1::2] = -1e3
    width = model.conv1.out_channels
    model(x.to(CUDA))
    event = pruner.epoch_end(1, optimizer=opt)
    assert event is not None and model.conv1.out_channels <= width // 2
    assert all(p.device.type == "cuda" for p in model.parameters())


def test_run_experiment_on_cuda(tmp_path):
    from earlyprune.experiments.config import RunConfig
    from earlyprune.experiments.run import run_experiment

    config = RunConfig(dataset="mnist-sample", model="lenet5", method="snip", sparsity=0.9, epochs=1,
                       batch_size=100, train_subset=1000)
    record = run_experiment(config, progress=False, device="cuda")
    on_cpu = run_experiment(config, progress=False, device="cpu")
    assert record["device"].startswith("cuda") and on_cpu["device"] == "cpu"
    assert record["achieved_sparsity"] == pytest.approx(0.9, abs=1e-3)
    for key in ("dense_params", "nonzero_params", "dense_flops"):
        assert record[key] == on_cpu[key]
    assert record["final_accuracy"] > 0.15  # ten steps: above chance (0.10)


def test_pinned_batches_are_copied_asynchronously_and_arrive_intact():
    from earlyprune.batches import to_device

    inputs, targets = torch.randn(64, 3, 8, 8).pin_memory(), torch.arange(64).pin_memory()
    moved_inputs, moved_targets = to_device(inputs, CUDA, torch.float32), to_device(targets, CUDA)
    torch.cuda.synchronize()
    assert moved_inputs.is_cuda and moved_targets.is_cuda
    assert torch.equal(moved_inputs.cpu(), inputs) and torch.equal(moved_targets.cpu(), targets)
