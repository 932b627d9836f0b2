"""Training on several processes with PyTorch's own engine (torchrun, DistributedDataParallel).

``torchrun --nproc_per_node=N -m sparseae train ...`` starts N processes; each one calls
`init_from_env`, which joins the process group torchrun describes (NCCL on GPUs,
gloo on CPUs). The trainer then splits every global batch evenly across the ranks, wraps
the model in ``DistributedDataParallel`` and weights each rank's loss by its share of
the batch, so the gradient is the one a single process would compute on the whole
batch. Statistics that need the whole batch are reduced across ranks with the helpers
below: BatchTopK's global selection and threshold, WTA's per-unit selection, AuxK's
dead-latent counts and its residual scale, and (with a gradient, `all_sum_grad`)
KL's mean activation. Outside a process group every helper is the identity.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor


def init_from_env() -> bool:
    """Join the process group torchrun set up in the environment, once; whether training is distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    return dist.get_world_size() > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    """Rank 0 (or the only process): the one that writes the run directory and logs."""
    return rank() == 0


def part() -> tuple[int, int]:
    """``(rank, world)``: which share of every batch this process trains on."""
    return rank(), world()


def local_device() -> torch.device | None:
    """This rank's GPU under torchrun, if there are GPUs."""
    if active() and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return None


def all_sum(t: Tensor) -> Tensor:
    """The sum of ``t`` over ranks (a new tensor; no gradient flows through it)."""
    if not active():
        return t
    t = t.detach().clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


class _AllSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx: object, t: Tensor) -> Tensor:
        t = t.detach().clone(memory_format=torch.contiguous_format)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    @staticmethod
    def backward(ctx: object, grad: Tensor) -> Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def all_sum_grad(t: Tensor) -> Tensor:
    """The sum of ``t`` over ranks, differentiable: each rank's ``t`` gets the gradient summed over ranks.

    For a term every rank computes alike from the global sum (KL's penalty on the global
    batch's mean activation): the trainer weights rank r's loss by ``share_r`` (the ranks'
    shares add up to the number of ranks W), so the gradients that reach the sum add up
    to W times one process's; summed back to every rank, then averaged over the W ranks
    by DistributedDataParallel, each rank's rows get exactly one process's gradient.
    """
    if not active():
        return t
    return _AllSum.apply(t)


def all_max(t: Tensor) -> Tensor:
    """The element-wise maximum of ``t`` over ranks (e.g. an 'any rank' of a 0/1 mask)."""
    if not active():
        return t
    t = t.detach().clone()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def all_gather(t: Tensor) -> Tensor:
    """``t`` of every rank, concatenated along dim 0 in rank order (shapes may differ in dim 0)."""
    if not active():
        return t
    t = t.detach().contiguous()
    sizes = [torch.zeros((), dtype=torch.long, device=t.device) for _ in range(world())]
    dist.all_gather(sizes, torch.tensor(len(t), device=t.device))
    longest = int(max(sizes))
    padded = torch.zeros((longest, *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: len(t)] = t
    parts = [torch.empty_like(padded) for _ in range(world())]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(n)] for p, n in zip(parts, sizes, strict=True)])


def batch_total(n_local: int, device: torch.device) -> int:
    """Rows of the global batch, given this rank's."""
    return int(all_sum(torch.tensor(n_local, device=device))) if active() else n_local
