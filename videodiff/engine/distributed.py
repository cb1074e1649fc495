"""Process-group set-up from torchrun's environment (env:// rendezvous) and small collective helpers.

A plain ``python tools/run_net.py`` is a world of one: no process group is created and every helper
below degrades to the single-process answer.
"""
import datetime
import os
from dataclasses import dataclass
from typing import Any, List

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(timeout_minutes: int = 30) -> DistInfo:
    """Join the group torchrun describes in RANK / WORLD_SIZE / LOCAL_RANK (nccl on GPU, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(minutes=timeout_minutes))
    return DistInfo(rank, world_size, local_rank, device)


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if is_dist():
        dist.barrier()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over ranks (returns a new tensor)."""
    value = value.detach().clone()
    if is_dist():
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value


def all_gather_objects(obj: Any) -> List[Any]:
    """Every rank's ``obj``, in rank order (pickled; for small per-rank results such as test scores)."""
    if not is_dist():
        return [obj]
    gathered: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def cleanup() -> None:
    if is_dist():
        dist.destroy_process_group()
