"""Training on several processes: torchrun, DistributedDataParallel, synchronised BatchNorm.

The same command runs on one process or many::

    segedu train --config segformer-b0-ade20k --data ...                        # one process
    torchrun --nproc-per-node 8 -m segedu.cli train --config segformer-b0-ade20k --data ...
    torchrun --nnodes 2 --node-rank 0 --master-addr HOST --nproc-per-node 8 -m segedu.cli train ...

``torchrun`` starts one process per GPU and gives each the environment variables ``RANK`` (0 ..
world_size - 1 over all nodes), ``LOCAL_RANK`` (its GPU on this node) and ``WORLD_SIZE``.
:func:`setup` reads them. Every process builds the same model from the same seed, takes its own
share of every global batch, and DistributedDataParallel averages the gradients, so all processes
hold the same weights after each step. Rank 0 alone writes the log and the checkpoint; ``--resume``
reads it on every process, so on several nodes ``--out`` must be a folder all of them see.

BatchNorm is the one layer that looks across the batch: each process alone would normalise with
the statistics of its own few images. The papers train with SyncBN over 8 GPUs, which sums the
statistics over all processes: :func:`convert_sync_batchnorm` (PyTorch's ``SyncBatchNorm`` on the
GPU; :class:`GlobalBatchNorm`, written here, on the CPU where PyTorch's only runs on accelerators).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import nn


@dataclass(frozen=True)
class Context:
    """Where this process stands: its rank among ``world_size`` processes and its device."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes logs, checkpoints and the progress bar."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str | torch.device | None = None) -> Context:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1), or run alone.

    Backend: NCCL between GPUs, gloo on the CPU. Each process takes the GPU ``LOCAL_RANK``.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    if world_size == 1:
        chosen = torch.device(device) if device is not None else torch.device("cuda" if use_cuda else "cpu")
        return Context(0, 1, chosen)
    local_rank = int(os.environ["LOCAL_RANK"])
    if use_cuda:
        torch.cuda.set_device(local_rank)
        chosen = torch.device("cuda", local_rank)
    else:
        chosen = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Context(dist.get_rank(), dist.get_world_size(), chosen)


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    """Processes in the group (1 when running alone)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def any_true(flag: bool) -> bool:
    """Whether ``flag`` is true on any process (itself when running alone): one small all-reduce."""
    if world_size() == 1:
        return bool(flag)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    return bool(all_reduce_sum(torch.tensor(int(flag), device=device)) > 0)


def gather_cuda_rng_states(ctx: Context) -> list[torch.Tensor] | None:
    """Every process's CUDA generator state (on its own GPU), in rank order; None on the CPU."""
    if ctx.device.type != "cuda":
        return None
    state = torch.cuda.get_rng_state()
    if not ctx.distributed:
        return [state]
    mine = state.to(ctx.device)
    states = [torch.empty_like(mine) for _ in range(ctx.world_size)]
    dist.all_gather(states, mine)
    return [s.cpu() for s in states]


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """The sum of ``value`` over all processes (``value`` itself when running alone)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        value = value.clone()
        dist.all_reduce(value)
    return value


class GlobalBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose batch statistics are those of the global batch, summed over all processes.

    Training, for channel c over all processes' pixels (N of them):
    ``mean_c = sum(x) / N``, ``var_c = sum((x - mean_c)^2) / N`` (two all-reduces), then the usual
    ``(x - mean) / sqrt(var + eps) * weight + bias``. The all-reduces are differentiable
    (``torch.distributed.nn``): their backward sums the gradients of all processes, so each process
    gets the gradient of the global batch's normalisation. The running statistics use the unbiased
    variance ``var * N / (N - 1)``, as BatchNorm does. Evaluation and single-process training are
    plain BatchNorm.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims = [0, 2, 3]                                               # x: [B, C, H, W]
        count = x.new_full((1,), x.numel() // x.shape[1])
        sums = dist_fn.all_reduce(torch.cat([x.sum(dims), count]))   # [C + 1]
        n = sums[-1]
        mean = sums[:-1] / n                                           # [C]
        centred = x - mean[None, :, None, None]
        var = dist_fn.all_reduce((centred * centred).sum(dims)) / n  # [C], biased
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_(var.detach() * n / (n - 1), m)
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y


def _to_global_bn(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, GlobalBatchNorm):
        new = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        new.load_state_dict(module.state_dict())
        return new
    for name, child in module.named_children():
        setattr(module, name, _to_global_bn(child))
    return module


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm of ``model`` synchronised across processes (parameter names unchanged).

    Call it before moving the model to its device."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _to_global_bn(model)


def wrap_ddp(module: nn.Module, ctx: Context) -> nn.Module:
    """DistributedDataParallel over ``module`` when several processes run, ``module`` otherwise."""
    if not ctx.distributed:
        return module
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)

