"""Tasks: each task's loss and metric against a hand computation, the errors when a loss cannot apply, every
criterion on a regression MLP and on a small LSTM language model, GraSP's data for tasks without classes,
the training loop on regression, and the task in `earlyprune run`'s record and the report."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import earlyprune as ep
from earlyprune import tasks
from earlyprune.criteria import registered
from earlyprune.scoring_data import scoring_batches
from earlyprune.train import TrainConfig, evaluate, evaluate_metrics, train

CRITERIA = list(registered())  # every registered criterion (random ... crop-it)
FAST = {"synflow": {"iterations": 3}, "prospr": {"steps": 2}}


# --- losses and metrics by hand ----------------------------------------------------------------------------

def test_classification_loss_and_accuracy_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 3.0]])
    targets = torch.tensor([0, 0, 1])
    # -log softmax of the right class: log(1 + e^-2), log(1 + e^1), log(1 + e^-2)
    expected = (2 * math.log(1 + math.exp(-2)) + math.log(1 + math.exp(1))) / 3
    task = tasks.get("classification")
    assert float(task(logits, targets)) == pytest.approx(expected)
    meter = task.meter()
    meter.update(logits[:2], targets[:2])
    meter.update(logits[2:], targets[2:])
    assert meter.result() == pytest.approx({"loss": expected, "accuracy": 2 / 3})
    assert task.metric == "accuracy" and task.higher_is_better


def test_regression_mse_rmse_and_r2_by_hand_over_batches():
    outputs = torch.tensor([[1.0], [2.0], [4.0]])
    targets = torch.tensor([1.0, 3.0, 3.0])  # (N,) against (N, 1): the same values
    task = tasks.get("regression")
    assert float(task(outputs, targets)) == pytest.approx(2 / 3)  # (0 + 1 + 1) / 3
    meter = task.meter()
    meter.update(outputs[:1], targets[:1])  # two batches: the pairwise update must give the one-pass values
    meter.update(outputs[1:], targets[1:])
    # mean 7/3, squared deviations 16/9 + 4/9 + 4/9 = 24/9, R² = 1 - 2 / (24/9) = 0.25
    assert meter.result() == pytest.approx({"loss": 2 / 3, "rmse": math.sqrt(2 / 3), "r2": 0.25})
    assert task.metric == "rmse" and not task.higher_is_better


def test_regression_r2_averages_over_output_columns():
    outputs = torch.tensor([[0.0, 1.0], [2.0, 1.0]])
    targets = torch.tensor([[0.0, 0.0], [2.0, 2.0]])
    meter = tasks.REGRESSION.meter()
    meter.update(outputs, targets)
    # column 0 exact (R² 1); column 1: SSE 2, SST 2 -> R² 0; mean 0.5
    assert meter.result()["r2"] == pytest.approx(0.5)


def test_language_modelling_cross_entropy_and_perplexity_by_hand():
    outputs = torch.tensor([[[0.0, 0.0, 0.0], [math.log(2.0), 0.0, 0.0], [5.0, 5.0, 5.0]]])  # (1, 3, 3)
    targets = torch.tensor([[1, 0, -100]])  # the last position is ignored
    nll = (math.log(3.0) + math.log(4.0 / 2.0)) / 2  # uniform over 3; p(0) = 2 / (2 + 1 + 1)
    task = tasks.get("language_modelling")
    assert float(task(outputs, targets)) == pytest.approx(nll)
    meter = task.meter()
    meter.update(outputs, targets)
    result = meter.result()
    assert result["perplexity"] == pytest.approx(math.exp(nll)) and result["loss"] == pytest.approx(nll)
    assert result["token_accuracy"] == pytest.approx(0.5)  # position 1 predicts 0 (right), position 0 ties -> 0


# --- a loss that cannot apply is an error ------------------------------------------------------------------

def test_losses_that_cannot_apply_are_errors_naming_the_fix():
    one_output = torch.randn(4, 1)
    with pytest.raises(ep.PruningError, match="one output per example.*task='regression'"):
        tasks.get("classification")(one_output, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ep.PruningError, match="floating-point.*task='regression'"):
        tasks.get("classification")(torch.randn(4, 3), torch.randn(4))
    with pytest.raises(ep.PruningError, match="task='language_modelling'"):
        tasks.get("classification")(torch.randn(2, 5, 7), torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ep.PruningError, match=r"targets of shape \(4, 2\) do not match.*\(4, 1\)"):
        tasks.get("regression")(one_output, torch.randn(4, 2))
    with pytest.raises(ep.PruningError, match=r"targets of shape \(4,\) do not match.*\(4, 3\).*class indices"):
        tasks.get("regression")(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ep.PruningError, match="no sequence dimension"):
        tasks.get("language_modelling")(torch.randn(4, 7), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ep.PruningError, match="vocabulary"):
        tasks.get("language_modelling")(torch.randn(1, 2, 7), torch.tensor([[1, 7]]))


def test_get_names_aliases_objects_and_the_rl_hook():
    assert tasks.names() == ["classification", "regression", "language_modelling"]
    assert tasks.get(None) is tasks.CLASSIFICATION and tasks.get("LM") is tasks.LANGUAGE_MODELLING
    mine = tasks.Regression()
    assert tasks.get(mine) is mine
    with pytest.raises(ep.PruningError, match="unknown task 'ranking'"):
        tasks.get("ranking")
    with pytest.raises(ep.PruningError, match="TransitionTask"):
        tasks.get("reinforcement_learning")
    with pytest.raises(ep.PruningError, match="unknown task"):
        ep.prune(regressor(), "snip", 0.5, data=regression_batch(), task="ranking", loss_fn=F.mse_loss)


def test_a_transition_task_reaches_every_criterion_through_batch_loss():
    """The RL hook: a task computing its loss from a batch of transitions (here a one-step TD error)."""

    class OneStepTD(tasks.TransitionTask):
        name = "td"

        def batch_loss(self, model, batch, temperature=1.0, params=None):
            from earlyprune.calling import predict

            t, _ = batch
            q = predict(model, t["obs"], params).gather(1, t["action"][:, None]).squeeze(1)
            return F.mse_loss(q, t["reward"])

    torch.manual_seed(0)
    q_net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    q_net.earlyprune_inputs = lambda inputs: ((inputs["obs"],), {}) if isinstance(inputs, dict) else ((inputs,), {})
    transitions = {"obs": torch.randn(8, 4), "action": torch.arange(8) % 3, "reward": torch.randn(8)}
    masks = ep.prune(q_net, "snip", 0.5, data=[(transitions, transitions["reward"])], task=OneStepTD())
    assert masks.kept() == masks.total() // 2 and masks.info["task"] == "td"
    with pytest.raises(ep.PruningError, match="not supervised"):
        evaluate(q_net, [(transitions, transitions["reward"])], task=OneStepTD())


# --- every criterion on regression -------------------------------------------------------------------------

def regressor(outputs: int = 1) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, outputs))
    model.input_shape = (6,)
    return model


def regression_batch(n: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, :1] * 2.0 - x[:, 1:2] + 0.1 * torch.randn(n, 1, generator=g))  # (N, 1), as California Housing
    return x, y


@pytest.mark.parametrize("method", CRITERIA)
def test_every_criterion_scores_a_regression_mlp_and_prunes_exactly(method):
    model, batch = regressor(), regression_batch()
    scores = ep.score(model, method, batch, task="regression", **({"steps": 2} if method == "prospr" else {}))
    assert all(bool(torch.isfinite(s).all()) for s in scores.values())
    assert all(bool((s != 0).any()) for s in scores.values()), "every layer gets non-zero scores"
    masks = ep.prune(model, method, 0.8, data=batch, task="regression", **FAST.get(method, {}))
    assert masks.kept() == round(0.2 * masks.total())
    assert masks.info["task"] == "regression" and masks.info["sparsity_achieved"] == pytest.approx(0.8, abs=1e-3)


def test_regression_model_with_the_default_loss_is_a_clear_error_not_zero_scores():
    model, (x, y) = regressor(), regression_batch()
    # Why this is an error (it was not before: at commit fccadaf `ep.prune(model, "snip", 0.5, data=(x, y))`
    # ran and returned masks): cross-entropy over the one output is identically 0, whatever the weights,
    # so every gradient and every SNIP/GraSP/CroP score was 0 and the "selection" was by position.
    out = model(x)
    loss = F.cross_entropy(out, y)  # float (N, 1) targets: read as class probabilities over one class
    assert float(loss) == 0.0
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    assert all(g is None or not bool(g.any()) for g in grads)
    for method in ("snip", "grasp", "crop"):
        with pytest.raises(ep.PruningError, match="one output per example.*task='regression'"):
            ep.prune(regressor(), method, 0.5, data=(x, y))
    with pytest.raises(ep.PruningError, match="task='regression'"):
        ep.score(model, "snip", (x, torch.zeros(32, dtype=torch.long)))  # integer labels: the same zero loss
    with pytest.raises(ep.PruningError, match="task='regression'"):
        ep.prune_channels(regressor(), "snip", 0.5, data=(x, y))
    with pytest.raises(ep.PruningError, match="do not match"):
        ep.prune(regressor(outputs=2), "snip", 0.5, data=(x, y), task="regression")  # (N, 2) vs (N, 1)


def test_loss_fn_overrides_the_task():
    model, batch = regressor(), regression_batch()
    by_task = ep.score(model, "snip", batch, task="regression")
    by_fn = ep.score(model, "snip", batch, loss_fn=lambda o, t: 2 * F.mse_loss(o, t))
    assert all(torch.allclose(by_fn[n], 2 * by_task[n]) for n in by_task)


def test_prune_channels_and_early_pruner_take_the_task():
    x, y = regression_batch()
    result = ep.prune_channels(regressor(), "snip", 0.5, data=(x, y), task="regression")
    assert result.params_after < result.params_before
    model = regressor()
    pruner = ep.EarlyPruner(model, "snip", 0.7, (x, y), at_epoch=1, task="regression")
    pruner.step()
    assert pruner.result.info["task"] == "regression" and pruner.result.kept() == round(0.3 * pruner.result.total())


def test_grasp_takes_the_first_batches_for_a_task_without_classes():
    model = regressor()
    loader = [regression_batch(8, seed=i) for i in range(3)]
    criterion = registered()["grasp"]
    batches = scoring_batches(model, criterion, iter(loader), num_batches=2, task="regression")
    assert len(batches) == 2 and all(torch.equal(b[0], l[0]) for b, l in zip(batches, loader))
    classifier = nn.Sequential(nn.Linear(6, 3))
    labelled = [(torch.randn(12, 6), torch.arange(12) % 3) for _ in range(2)]
    balanced = scoring_batches(classifier, criterion, iter(labelled), samples_per_class=2)
    assert [b[1].tolist() for b in balanced] == [[0, 0, 1], [1, 2, 2]]  # classification: class-balanced halves


# --- a language model --------------------------------------------------------------------------------------

class TinyLM(nn.Module):
    """Embedding, LSTM, Linear: logits (batch, seq, vocab) for integer token ids (batch, seq)."""

    def __init__(self, vocab: int = 11, dim: int = 8):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.rnn = nn.LSTM(dim, dim, batch_first=True)
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens):
        return self.head(self.rnn(self.embed(tokens))[0])


def lm_batch(n: int = 6, seq: int = 5, vocab: int = 11, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(0, vocab, (n, seq + 1), generator=g)
    return text[:, :-1], text[:, 1:]  # targets: the next tokens


@pytest.mark.parametrize("method", CRITERIA)
def test_every_criterion_scores_a_language_model(method):
    torch.manual_seed(0)
    model, batch = TinyLM(), lm_batch()
    scores = ep.score(model, method, batch, task="language_modelling",
                      **({"steps": 2} if method == "prospr" else {}))
    assert set(scores) == {"rnn.weight_ih_l0", "rnn.weight_hh_l0", "head.weight"}
    assert all(bool((s != 0).any()) and bool(torch.isfinite(s).all()) for s in scores.values())
    masks = ep.prune(model, method, 0.7, data=batch, task="language_modelling", **FAST.get(method, {}))
    assert masks.kept() == round(0.3 * masks.total())
    with pytest.raises(ep.PruningError, match="task='language_modelling'"):
        ep.score(TinyLM(), "snip", batch)  # the default, classification, refuses next-token outputs


# --- training and evaluation -------------------------------------------------------------------------------

def test_training_on_regression_reduces_rmse_and_records_the_metric():
    train_data = [regression_batch(32, seed=i) for i in range(8)]
    test_data = [regression_batch(64, seed=100)]
    model = regressor()
    before = evaluate_metrics(model, test_data, task="regression")
    config = TrainConfig(epochs=4, lr=0.01, optimizer="adam", weight_decay=0.0, lr_schedule="constant",
                         progress=False)
    result = train(model, train_data, test_data, config, task="regression")
    after = evaluate_metrics(model, test_data, task="regression")
    assert after["rmse"] < 0.5 * before["rmse"] and after["r2"] > 0.8
    record = result.history[-1]
    assert record.metric_name == "rmse" and record.test_accuracy is None and record.train_accuracy is None
    assert record.test_metric == pytest.approx(after["rmse"]) and record.test_metrics["r2"] == pytest.approx(after["r2"])
    assert result.best_metric == min(r.test_metric for r in result.history)
    assert result.as_dict()["metric_name"] == "rmse" and result.final_accuracy is None
    assert evaluate(model, test_data, task="regression") == pytest.approx((after["loss"], after["rmse"]))


def test_training_on_language_modelling_reports_perplexity():
    torch.manual_seed(0)
    model = TinyLM()
    data = [lm_batch(seed=0)] * 4  # one batch, seen again: the perplexity on it must fall
    config = TrainConfig(epochs=3, lr=0.05, optimizer="adam", weight_decay=0.0, lr_schedule="constant",
                         progress=False)
    result = train(model, data, data[:1], config, task="language_modelling")
    values = [r.test_metric for r in result.history]
    assert result.metric_name == "perplexity" and values[-1] < values[0] and result.best_metric == min(values)


def test_classification_training_records_stay_as_they_were():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 3))
    data = [(torch.randn(16, 6), torch.arange(16) % 3)]
    result = train(model, data, data, TrainConfig(epochs=2, progress=False))
    last = result.history[-1]
    assert last.metric_name == "accuracy" and last.test_accuracy == last.test_metric
    assert result.final_accuracy == result.final_metric and result.best_accuracy == result.best_metric


# --- earlyprune run and the report -------------------------------------------------------------------------

class RegressionSplit:
    """A stand-in for a dataset split whose task is regression (as the data readers give them)."""

    task = "regression"
    num_classes = 1
    input_shape = (6,)

    def __init__(self, n: int, seed: int):
        self.x, self.y = regression_batch(n, seed)

    def __len__(self):
        return len(self.x)

    def model_kwargs(self):
        return {"num_classes": 1, "in_features": 6}

    def loader(self, batch_size, shuffle=False, augment=False, seed=0, **_):
        return [(self.x[i:i + batch_size], self.y[i:i + batch_size]) for i in range(0, len(self.x), batch_size)]


def test_run_records_the_task_and_its_metric(monkeypatch):
    from earlyprune.experiments import report, run
    from earlyprune.experiments.config import RunConfig

    monkeypatch.setattr(run, "load_dataset", lambda *a, **k: (RegressionSplit(96, 0), RegressionSplit(64, 1)))
    built = {}

    def create(name, **kwargs):
        built.update(kwargs)
        return regressor()

    monkeypatch.setattr(run.models, "create", create)
    config = RunConfig(model="lenet300", method="snip", sparsity=0.5, epochs=2, batch_size=32, lr=0.01,
                       optimizer="adam", weight_decay=0.0, lr_schedule="constant")
    record = run.run_experiment(config)
    assert built["in_features"] == 6 and built["num_classes"] == 1
    assert record["task"] == "regression" and record["metric_name"] == "rmse" and not record["higher_is_better"]
    assert record["final_accuracy"] is None and record["final_metric"] > 0
    assert record["best_metric"] == min(c["test_metric"] for c in record["curve"])
    assert set(record["final_metrics"]) == {"loss", "rmse", "r2"}
    # the task is the dataset's: not a setting, the key is unchanged (the thread count used is keyed)
    assert record["key"] == config.replace(threads=record["threads"]).key()

    tables = report.markdown_tables(report.summarise([record, {**record, "seed": 1}]))
    assert "Test RMSE (lower is better), mean ± std over seeds" in tables
    assert f"{record['final_metric']:.4g} ± 0" in tables and "accuracy" not in tables


@pytest.mark.parametrize("task_name", ["classification", "regression", "language_modelling"])
def test_meters_accumulate_on_the_device_and_agree_with_one_pass(task_name):
    """The meters keep their sums as tensors between batches (no host read per training step, which on a
    GPU would synchronise every step) and give what one pass over all the data gives."""
    torch.manual_seed(0)
    task = tasks.get(task_name)
    if task_name == "classification":
        outputs, targets = torch.randn(12, 5), torch.randint(0, 5, (12,))
    elif task_name == "regression":
        outputs, targets = torch.randn(12, 2), torch.randn(12, 2) + 3.0
    else:
        outputs, targets = torch.randn(3, 4, 7), torch.randint(0, 7, (3, 4))
    meter = task.meter()
    for start in range(0, outputs.shape[0], 4 if task_name != "language_modelling" else 1):
        stop = start + (4 if task_name != "language_modelling" else 1)
        meter.update(outputs[start:stop], targets[start:stop])
        sums = [v for v in vars(meter).values() if isinstance(v, torch.Tensor)]
        assert sums and all(v.device == outputs.device for v in sums)
        assert not any(isinstance(v, float) and v != 0 for v in vars(meter).values())
    whole = task.meter()
    whole.update(outputs, targets)
    got, expected = meter.result(), whole.result()
    assert got.keys() == expected.keys()
    for key in got:
        assert got[key] == pytest.approx(expected[key], rel=1e-6)  # float32 sums, in another order
    if task_name == "regression":  # an independent route: RMSE from the definition
        assert got["rmse"] == pytest.approx(float(((outputs - targets) ** 2).mean().sqrt()), rel=1e-6)
    if task_name == "language_modelling":
        nll = F.cross_entropy(outputs.reshape(-1, 7), targets.reshape(-1))
        assert got["perplexity"] == pytest.approx(math.exp(float(nll)), rel=1e-5)


def test_meters_sum_in_float64_except_on_mps_which_has_none():
    from earlyprune.tasks.base import sum_dtype

    assert sum_dtype(torch.device("cpu")) == torch.float64
    assert sum_dtype(torch.device("mps")) == torch.float32  # MPS refuses float64 tensors
    meter = tasks.get("regression").meter()
    meter.update(torch.randn(4, 1), torch.randn(4, 1))
    assert meter.sse.dtype == torch.float64
