"""Pruning under ``torch.distributed`` (``torchrun``, DistributedDataParallel).

Every rank must select the same masks and shrink to the same shapes, or training silently diverges:

* data-based importance is computed on each rank's own shard and averaged across ranks (all-reduce)
  before selection; random importance comes from a seed all ranks share; SynFlow and magnitude need no
  communication (DDP keeps the weights identical);
* decisions taken during training (EarlyCroP's trigger) are broadcast from rank 0;
* surgery is done on the unwrapped module on every rank; the DDP wrapper must then be rebuilt
  (:func:`rewrap`), because DDP holds the old parameters.

Outside an initialised process group of more than one rank, every function here is a no-op.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def is_distributed() -> bool:
    """True inside an initialised process group with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel / DataParallel wrapper (the model itself otherwise)."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


def average_across_ranks(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Average each tensor over the ranks, in a fixed order of names (identical on every rank)."""
    if not is_distributed():
        return tensors
    size = float(dist.get_world_size())
    nccl = dist.get_backend() == "nccl"
    for name in sorted(tensors):
        tensor = tensors[name]
        if nccl and tensor.device.type != "cuda":  # nccl reduces GPU tensors only
            moved = tensor.to(torch.device("cuda", torch.cuda.current_device()))
            dist.all_reduce(moved, op=dist.ReduceOp.SUM)
            tensor.copy_(moved.cpu())
        else:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(size)
    return tensors


def broadcast_decision(decision: bool) -> bool:
    """Rank 0's decision, on every rank."""
    if not is_distributed():
        return decision
    backend = dist.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    flag = torch.tensor([1 if decision else 0], device=device)
    dist.broadcast(flag, src=0)
    return bool(flag.item())


def rewrap(ddp_model: nn.parallel.DistributedDataParallel, **kwargs: Any) -> nn.parallel.DistributedDataParallel:
    """A new DDP wrapper around the (shrunk) module, with the same device ids unless overridden."""
    module = unwrap(ddp_model)
    if "device_ids" not in kwargs and getattr(ddp_model, "device_ids", None):
        kwargs["device_ids"] = ddp_model.device_ids
    return nn.parallel.DistributedDataParallel(module, **kwargs)


def init_from_environment(backend: str | None = None) -> bool:
    """Initialise the default process group when started by ``torchrun``: ``backend`` if given, else
    nccl where CUDA is available and gloo otherwise (gloo for models trained on the CPU).

    Returns True if a multi-process group is (now) active.
    """
    if is_distributed():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return is_distributed()
