"""The Hugging Face Trainer callback with the real Trainer: a 2-layer BERT built from a small config, on the CPU.

Early structured prune at epoch 2 of 3: attention heads and hidden units removed for real, the Trainer's
optimizer holds exactly the new parameters (Adam moments of the new shapes), its linear LR schedule went
on to its end, the new parameters trained and the loss fell after the prune, and the event reached
``trainer.log`` (``state.log_history``). Unstructured at initialisation without ``attach``: exact sparsity,
the event in ``log_history``.
"""

from __future__ import annotations

import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # the Trainer needs it

from earlyprune.integrations._core import optimizer_holds, plain_optimizer  # noqa: E402
from earlyprune.integrations.transformers import PruningCallback, split_labels  # noqa: E402

VOCAB, LENGTH = 40, 8


class Tokens(torch.utils.data.Dataset):
    """Label 1 when token 1 appears in the sequence: learnable in a few steps."""

    def __init__(self, n: int = 64, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(2, VOCAB, (n, LENGTH), generator=g)
        self.labels = torch.arange(n) % 2
        self.ids[self.labels == 1, 0] = 1

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(LENGTH, dtype=torch.long),
                "labels": self.labels[i]}


def _bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, num_labels=2, max_position_embeddings=16,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return transformers.BertForSequenceClassification(config)


def _trainer(model, tmp_path, epochs: int, callbacks=()):
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), num_train_epochs=epochs, per_device_train_batch_size=8, learning_rate=3e-3,
        logging_steps=1, report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True, seed=0,
        dataloader_num_workers=0,
    )
    return transformers.Trainer(model=model, args=args, train_dataset=Tokens(), callbacks=list(callbacks))


def _train(trainer):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()


def test_early_structured_prune_at_epoch_2_keeps_the_trainers_optimizer_training(tmp_path):
    model = _bert()
    params_before = sum(p.numel() for p in model.parameters())
    trainer = _trainer(model, tmp_path, epochs=3)
    callback = PruningCallback.attach(trainer, "crop", 0.5, structured=True, at_epoch=2, score_batches=2)
    snapshot = {}

    class Snapshot(transformers.TrainerCallback):  # parameters right after the prune (runs after ours)
        def on_epoch_end(self, args, state, control, model=None, **kwargs):
            if round(state.epoch) == 2:
                snapshot.update({n: p.detach().clone() for n, p in model.named_parameters()})

    trainer.add_callback(Snapshot())
    _train(trainer)

    assert [e.epoch for e in callback.events] == [2]
    params_after = sum(p.numel() for p in model.parameters())
    assert params_after < params_before
    attention = model.bert.encoder.layer[0].attention.self
    assert attention.query.out_features == attention.num_attention_heads * attention.attention_head_size
    assert model.bert.encoder.layer[0].intermediate.dense.out_features < 64
    # the Trainer's optimizer holds exactly the new parameters, its moments have their shapes
    optimizer = plain_optimizer(trainer.optimizer)
    assert optimizer_holds(optimizer, model)
    for p in model.parameters():
        assert optimizer.state[p]["exp_avg"].shape == p.shape
    # the linear schedule went on to its end (lr 0 after the last step), it did not restart
    assert trainer.lr_scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-9)
    # the new parameters trained and the loss fell in the epoch after the prune
    assert any(not torch.equal(snapshot[n], p.detach()) for n, p in model.named_parameters())
    losses = [(h["epoch"], h["loss"]) for h in trainer.state.log_history if "loss" in h]
    third = [loss for epoch, loss in losses if epoch > 2]
    assert len(third) == 8 and sum(third[-3:]) / 3 < sum(third[:3]) / 3
    # trainer.log got the event
    logged = [h for h in trainer.state.log_history if "prune/epoch" in h]
    assert len(logged) == 1 and logged[0]["prune/epoch"] == 2
    assert logged[0]["prune/params_after"] == params_after


def test_unstructured_at_init_without_attach_logs_to_the_state(tmp_path):
    model = _bert()
    callback = PruningCallback("magnitude", 0.7, when="init")
    trainer = _trainer(model, tmp_path, epochs=1, callbacks=[callback])
    _train(trainer)
    masks = callback.result
    assert masks.sparsity() == pytest.approx(0.7, abs=1e-3)
    params = dict(model.named_parameters())
    assert all(bool((params[n][~m] == 0).all()) for n, m in masks.items())  # AdamW moved none of them
    logged = [h for h in trainer.state.log_history if "prune/epoch" in h]
    assert len(logged) == 1 and logged[0]["prune/nonzero_after"] < logged[0]["prune/nonzero_before"]


def test_split_labels():
    batch = {"input_ids": torch.ones(2, 3), "labels": torch.tensor([0, 1])}
    inputs, labels = split_labels(batch)
    assert set(inputs) == {"input_ids"} and torch.equal(labels, batch["labels"])
    assert split_labels((1, 2)) == (1, 2)
