"""Opt-in compile and mixed precision in the training loop: errors, masks kept, recompilation after surgery."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import earlyprune as ep
from earlyprune import acceleration
from earlyprune.errors import PruningError
from earlyprune.tasks.classification import AccuracyMeter
from earlyprune.train import TrainConfig, train


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))


def loader(seed: int = 1, batches: int = 4):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(batches)]


def config(**changes) -> TrainConfig:
    return TrainConfig(epochs=1, lr=0.05, progress=False, **changes)


def test_fp16_off_cuda_and_unknown_modes_are_clear_errors():
    with pytest.raises(PruningError, match="fp16.*CUDA"):
        acceleration.check_amp("fp16", torch.device("cpu"))
    with pytest.raises(PruningError, match="amp must be one of"):
        acceleration.check_amp("int8", torch.device("cpu"))
    with pytest.raises(PruningError, match="unknown amp"):
        config(amp="fp8")
    with pytest.raises(PruningError, match="fp16.*CUDA"):
        train(mlp(), loader(), None, config(amp="fp16"))


def test_bf16_refused_on_a_cpu_without_bf16(monkeypatch):
    monkeypatch.setattr(acceleration, "_cpu_flags", lambda: frozenset({"avx2", "sse4_2"}))
    with pytest.raises(PruningError, match="bf16.*is not supported by this CPU"):
        acceleration.check_amp("bf16", torch.device("cpu"))
    monkeypatch.setattr(acceleration, "_cpu_flags", lambda: frozenset({"avx2", "amx_bf16"}))
    acceleration.check_amp("bf16", torch.device("cpu"))  # accepted where the flags say bf16


@pytest.mark.skipif(not acceleration.bf16_supported(torch.device("cpu")), reason="this CPU has no bf16")
def test_bf16_training_keeps_pruned_weights_zero_and_weights_float32():
    model = mlp()
    masks = ep.prune(model, "magnitude", 0.7)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = train(model, loader(), loader(2, 1), config(amp="bf16"))
    assert result.history[-1].train_loss == result.history[-1].train_loss  # not NaN
    for name, p in model.named_parameters():
        assert p.dtype == torch.float32
        if name in masks:
            assert torch.all(p[~masks[name].bool()] == 0)
            assert not torch.equal(p[masks[name].bool()], before[name][masks[name].bool()])  # it trained


def test_the_training_meter_accumulates_on_the_device_and_gives_the_plain_means():
    meter = AccuracyMeter()
    batches = loader(3, 3)
    outputs = [torch.randn(8, 3, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    for out, (_, y) in zip(outputs, batches):
        meter.update(out, y)
        assert isinstance(meter.loss_sum, torch.Tensor) and isinstance(meter.correct, torch.Tensor)
    logits, labels = torch.cat(outputs), torch.cat([y for _, y in batches])
    expected_loss = torch.nn.functional.cross_entropy(logits.double(), labels).item()
    result = meter.result()
    assert result["loss"] == pytest.approx(expected_loss, rel=1e-6)
    assert result["accuracy"] == int((logits.argmax(1) == labels).sum()) / labels.numel()


def test_compile_and_amp_enter_the_run_key_only_when_on():
    from earlyprune.experiments.config import RunConfig

    base = RunConfig.from_dict({"dataset": "mnist-sample", "model": "lenet300", "method": "snip", "sparsity": 0.9})
    assert "compile" not in base.key_settings() and "amp" not in base.key_settings()
    assert base.replace(compile=True).key() != base.key()
    assert base.replace(amp="bf16").key() != base.key()
    dense = base.replace(method="dense", compile=True)
    assert dense.training.compile is True  # a comparison's dense run carries the same training options


def test_step_model_compiles_once_per_shape_and_again_after_surgery():
    model = mlp()
    steps = acceleration.StepModel(model, compile=True)  # compiling is lazy: nothing is built until called
    assert steps.use(model) is steps.use(model) and steps.compilations == 1
    with torch.no_grad():  # shrink the hidden layer as structured surgery does: 16 -> 10 units
        model[0].weight = nn.Parameter(model[0].weight[:10].clone())
        model[0].bias = nn.Parameter(model[0].bias[:10].clone())
        model[2].weight = nn.Parameter(model[2].weight[:, :10].clone())
    rebuilt = steps.use(model)
    assert steps.compilations == 2 and steps.use(model) is rebuilt
    assert acceleration.StepModel(model).use(model) is model  # off: the model itself


needs_compile = pytest.mark.skipif(acceleration.compile_problem() is not None,
                                   reason=f"torch.compile unavailable: {acceleration.compile_problem()}")


@needs_compile
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_training_matches_eager_and_keeps_pruned_weights_zero(mode):
    eager, compiled = mlp(), mlp()
    masks = ep.prune(eager, "magnitude", 0.6)
    ep.prune(compiled, "magnitude", 0.6)
    try:
        train(eager, loader(), None, config())
        train(compiled, loader(), None, config(compile=True, compile_mode=mode))
    except PruningError as error:
        if "torch.compile could not compile" in str(error):
            pytest.skip(str(error))
        raise
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
        if name in masks:
            assert torch.all(b[~masks[name].bool()] == 0)


def test_no_compiler_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(acceleration.shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(PruningError, match="no C\\+\\+ compiler"):
        acceleration.StepModel(mlp(), compile=True)


def test_compile_mode_reaches_torch_compile_and_cuda_graph_steps_are_marked(monkeypatch):
    built, marks = [], []
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: built.append(kwargs) or model)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    monkeypatch.setattr(acceleration, "check_compile", lambda device=None: None)
    for mode, expected, marked in [("default", None, 0), ("reduce-overhead", "reduce-overhead", 1),
                                   ("max-autotune-no-cudagraphs", "max-autotune-no-cudagraphs", 0)]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            steps = acceleration.StepModel(mlp(), compile=True, mode=mode)
        said = [str(w.message) for w in caught if "records CUDA graphs" in str(w.message)]
        assert len(said) == (mode == "reduce-overhead"), mode  # a CPU model has no CUDA graphs: said loudly
        steps.use(steps.model)
        steps.step_begins()
        assert built[-1]["mode"] == expected and len(marks) == marked, mode
        marks.clear()
    with pytest.raises(PruningError, match="compile mode must be one of"):
        acceleration.StepModel(mlp(), compile=True, mode="fast")


def test_compile_mode_needs_compile_and_enters_the_key_only_when_set():
    from earlyprune.experiments.config import RunConfig

    with pytest.raises(PruningError, match="applies with compile on"):
        config(compile_mode="reduce-overhead")
    base = RunConfig.from_dict({"dataset": "mnist-sample", "model": "lenet300", "method": "snip", "sparsity": 0.9,
                                "compile": True})
    assert "compile_mode" not in base.key_settings()
    assert base.replace(compile_mode="reduce-overhead").key() != base.key()
