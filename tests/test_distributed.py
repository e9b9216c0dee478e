"""Two processes with the gloo backend on the CPU: identical masks, identical DDP training, identical
structured surgery mid-training."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

import earlyprune as ep
from earlyprune import distributed, models

METHODS = ["random", "magnitude", "snip", "grasp", "synflow", "prospr", "crop", "snip-it", "crop-it"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup_group(rank: int, world: int, port: int) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)


def rank_data(rank: int, n: int = 16, shape=(1, 28, 28)):
    g = torch.Generator().manual_seed(100 + rank)  # each rank has its own shard: different data
    return torch.randn(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g)


def masks_worker(rank: int, world: int, port: int, out: str) -> None:
    setup_group(rank, world, port)
    try:
        results = {}
        for method in METHODS:
            torch.manual_seed(0)  # same initial weights on every rank
            model = models.create("lenet5", width=0.25)
            torch.manual_seed(1000 + rank)  # but a different global RNG state: nothing may depend on it
            masks = ep.prune(model, method, 0.9, data=[rank_data(rank)], iterations=5 if method == "synflow" else None)
            results[method] = {n: m.clone() for n, m in masks.items()}
        torch.manual_seed(0)
        model = models.create("lenet5", width=0.25)
        x, y = rank_data(rank)
        grads = torch.autograd.grad(F.cross_entropy(model(x), y), [model.conv1.weight])
        results["_local_snip"] = {"conv1.weight": (model.conv1.weight.detach() * grads[0]).abs()}
        results["_reduced_snip"] = {"conv1.weight": ep.score(model, "snip", [(x, y)])["conv1.weight"]}
        # Rank 0 decides whether to prune (e.g. the EarlyCroP trigger saw its own weights): both ranks follow.
        results["_decisions"] = {"d": torch.tensor([distributed.broadcast_decision(rank == 0),
                                                    distributed.broadcast_decision(rank == 1)])}
        torch.save(results, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    setup_group(rank, world, port)
    try:
        torch.manual_seed(0)
        model = models.create("lenet5", width=0.25)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        masks = ep.prune(model, "snip", 0.9, data=[rank_data(rank)], optimizer=optimizer)
        ddp = DDP(model)
        for step in range(5):
            x, y = rank_data(rank + 10 * step)
            optimizer.zero_grad()
            F.cross_entropy(ddp(x), y).backward()
            optimizer.step()
        # Structured early prune mid-training on the unwrapped module, then a new wrapper.
        pruner = ep.EarlyPruner(ddp, "crop", 0.5, [rank_data(rank)], structured=True, optimizer=optimizer,
                                at_epoch=1)
        event = pruner.step(1)
        ddp = distributed.rewrap(ddp)
        for step in range(3):
            x, y = rank_data(rank + 100 + step)
            optimizer.zero_grad()
            F.cross_entropy(ddp(x), y).backward()
            optimizer.step()
        masks = ep.masking.applied_masks(ddp.module)  # the masks are a value: the surgery bound sliced ones
        torch.save({"masks": dict(masks.items()), "state": ddp.module.state_dict(), "event": event.as_dict()},
                   f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_two(worker, tmp_path):
    mp.spawn(worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]


def test_masks_are_bitwise_identical_on_both_ranks_for_every_method(tmp_path):
    r0, r1 = run_two(masks_worker, tmp_path)
    # The ranks really scored different data, and the importance each used is the average of both.
    local0, local1 = r0["_local_snip"]["conv1.weight"], r1["_local_snip"]["conv1.weight"]
    assert not torch.allclose(local0, local1)
    torch.testing.assert_close(r0["_reduced_snip"]["conv1.weight"], (local0 + local1) / 2)
    torch.testing.assert_close(r1["_reduced_snip"]["conv1.weight"], (local0 + local1) / 2)
    assert r0["_decisions"]["d"].tolist() == r1["_decisions"]["d"].tolist() == [True, False]
    # Every method selected the same masks on both ranks.
    for method in METHODS:
        for name in r0[method]:
            assert torch.equal(r0[method][name], r1[method][name]), (method, name)


def test_ddp_training_and_structured_early_prune_stay_identical(tmp_path):
    r0, r1 = run_two(ddp_worker, tmp_path)
    assert r0["event"]["params_after"] < r0["event"]["params_before"]
    assert r0["event"] == {**r1["event"], "seconds": r0["event"]["seconds"]}
    assert list(r0["state"]) == list(r1["state"])
    for name, mask in r0["masks"].items():  # unstructured masks, sliced by the surgery, still hold
        assert mask.shape == r0["state"][name].shape and torch.all(r0["state"][name][~mask] == 0), name
    for key in r0["state"]:
        assert r0["state"][key].shape == r1["state"][key].shape, key
        torch.testing.assert_close(r0["state"][key], r1["state"][key], rtol=0, atol=0, msg=key)


def test_earlyprune_run_under_torchrun_writes_one_record_from_rank_0(tmp_path):
    import subprocess
    import sys

    from earlyprune.experiments.records import read_records

    out = tmp_path / "runs.jsonl"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "earlyprune.cli", "run", "--dataset", "mnist-sample", "--model", "lenet300", "--width", "0.25",
               "--method", "snip", "--sparsity", "0.9", "--epochs", "1", "--train-subset", "400", "--threads", "1",
               "--device", "cpu", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    (record,) = list(read_records(out))
    assert record["processes"] == 2 and record["achieved_sparsity"] == pytest.approx(0.9, abs=1e-4)
