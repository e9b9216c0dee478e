"""The Lightning callback with the real Lightning: a tiny LightningModule trained on a learnable synthetic task.

Early structured prune at epoch 2 of 3: the module is narrower, the optimizer holds exactly its new
parameters (with momentum of the new shapes), the LR scheduler kept its step, the new parameters train and
the loss falls after the prune, and the logger got the event. Unstructured at initialisation: exact
sparsity, pruned weights still zero after training. Activation density: the network is resized in training.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pl = pytest.importorskip("lightning.pytorch")

from earlyprune.errors import PruningError  # noqa: E402
from earlyprune.integrations._core import optimizer_holds  # noqa: E402
from earlyprune.integrations.lightning import PruningCallback  # noqa: E402


class MemoryLogger(pl.loggers.Logger):
    """Keeps every logged metric in memory."""

    def __init__(self):
        super().__init__()
        self.logged: list[tuple[int | None, dict[str, float]]] = []

    @property
    def name(self):
        return "memory"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.logged.append((step, dict(metrics)))


class TinyNet(pl.LightningModule):
    def __init__(self, lr: float = 0.05):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 2),
        )
        self.lr = lr
        self.losses: list[tuple[int, float]] = []  # (epoch, loss) of every training step

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.losses.append((self.current_epoch, float(loss.detach())))
        return loss

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)}


def _loader(n: int = 128, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = (x[:, :, :4].mean(dim=(1, 2, 3)) > x[:, :, 4:].mean(dim=(1, 2, 3))).long()  # top half brighter
    data = torch.utils.data.TensorDataset(x, y)
    return torch.utils.data.DataLoader(data, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(1))


def _fit(module, callback, epochs: int):
    logger = MemoryLogger()
    trainer = pl.Trainer(max_epochs=epochs, callbacks=[callback], logger=logger, accelerator="cpu", devices=1,
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         num_sanity_val_steps=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice on num_workers and log intervals
        trainer.fit(module, train_dataloaders=_loader())
    return trainer, logger


def test_early_structured_prune_at_epoch_2_keeps_optimizer_and_scheduler_training():
    torch.manual_seed(0)
    module = TinyNet()
    widths_before = [m.out_channels for m in module.net if isinstance(m, nn.Conv2d)]
    snapshot: dict[str, torch.Tensor] = {}

    class Snapshot(pl.Callback):  # the parameters right after the prune (it runs after PruningCallback)
        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                snapshot.update({n: p.detach().clone() for n, p in pl_module.named_parameters()})

    callback = PruningCallback("crop", 0.5, when="early", structured=True, at_epoch=2)
    logger = MemoryLogger()
    trainer = pl.Trainer(max_epochs=3, callbacks=[callback, Snapshot()], logger=logger, accelerator="cpu", devices=1,
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, train_dataloaders=_loader())

    # the prune happened once, after epoch 2, and removed channels for real
    assert [e.epoch for e in callback.events] == [2]
    widths_after = [m.out_channels for m in module.net if isinstance(m, nn.Conv2d)]
    assert sum(widths_after) < sum(widths_before)
    assert module.net[-1].in_features == widths_after[-1] * 4
    # the optimizer holds exactly the new parameters; its momentum has their shapes
    optimizer = trainer.optimizers[0]
    assert optimizer_holds(optimizer, module)
    for p in module.parameters():
        assert optimizer.state[p]["momentum_buffer"].shape == p.shape
    # the scheduler went on: three epochs of StepLR(gamma=0.5) from 0.05
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05 * 0.5**3)
    # the new parameters trained in epoch 3 and the loss fell after the prune
    assert snapshot and all(snapshot[n].shape == p.shape for n, p in module.named_parameters())
    assert any(not torch.equal(snapshot[n], p.detach()) for n, p in module.named_parameters())
    third = [loss for epoch, loss in module.losses if epoch == 2]
    assert sum(third[-3:]) / 3 < sum(third[:3]) / 3
    # the logger got the event, with the sizes before and after
    events = [m for _, m in logger.logged if "prune/epoch" in m]
    assert len(events) == 1 and events[0]["prune/epoch"] == 2
    assert events[0]["prune/params_after"] < events[0]["prune/params_before"]
    assert events[0]["prune/params_after"] == sum(p.numel() for p in module.parameters())


def test_unstructured_at_init_exact_sparsity_and_pruned_weights_stay_zero():
    torch.manual_seed(0)
    module = TinyNet()
    callback = PruningCallback("snip", 0.8, when="init", module="net")
    trainer, logger = _fit(module, callback, epochs=1)
    masks = callback.result
    assert masks.sparsity() == pytest.approx(0.8, abs=1e-3)
    params = dict(module.net.named_parameters())
    for name, mask in masks.items():
        assert bool((params[name][~mask] == 0).all())  # SGD with momentum moved none of them
    assert callback.events[0].kind == "init"
    logged = [m for _, m in logger.logged if "prune/epoch" in m]
    assert logged[0]["prune/epoch"] == 0
    assert logged[0]["prune/nonzero_after"] < logged[0]["prune/nonzero_before"]


def test_activation_density_resizes_during_training():
    torch.manual_seed(0)
    module = TinyNet()
    callback = PruningCallback("activation_density", module="net", count_every=1, last_epoch=1)
    trainer, logger = _fit(module, callback, epochs=2)
    assert len(callback.events) == 1 and callback.events[0].kind == "activation_density"
    details = callback.events[0].details
    assert details.params_after < details.params_before
    assert optimizer_holds(trainer.optimizers[0], module)


def test_bad_settings_are_refused_early():
    with pytest.raises(PruningError, match="when must be one of"):
        PruningCallback("crop", 0.5, when="late")
    with pytest.raises(ValueError, match="unknown method"):
        PruningCallback("nope", 0.5)
    callback = PruningCallback("crop", 0.5, module="backbone")
    with pytest.raises(PruningError, match="no such submodule"):
        callback.target(TinyNet())
