"""Process-group set-up from torchrun's environment (env:// rendezvous) and small collective helpers.

A plain ``python tools/run_net.py`` is a world of one: no process group is created and every helper
below degrades to the single-process answer.
"""
import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Tuple, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


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
        timeout = datetime.timedelta(minutes=timeout_minutes)
        restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
        if restart:
            dist.init_process_group(backend, store=restart_store(rank, world_size, restart, timeout), rank=rank,
                                    world_size=world_size, timeout=timeout)
        else:
            dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world_size, timeout=timeout)
    return DistInfo(rank, world_size, local_rank, device)


def restart_store(rank: int, world_size: int, restart: int, timeout: datetime.timedelta) -> dist.Store:
    """The env:// store of an elastic restart, under a prefix of its own.

    torchrun's agent keeps serving one store across ``--max-restarts`` restarts, and torch 2.14's env://
    handler adds no per-attempt prefix, so a restarted group reads the gloo / NCCL addresses that the
    previous attempt's dead workers published and fails with "connection refused" (seen here with gloo;
    pytorch/pytorch#167288 reports it for NCCL). A prefix per restart count keeps attempts apart.
    """
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    agent_hosts_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(host, port, world_size, is_master=rank == 0 and not agent_hosts_store, timeout=timeout)
    return dist.PrefixStore(f"videodiff/restart_{restart}", store)


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


def on_main_rank(fn: Callable[[], T], errors: Tuple[type, ...] = (Exception,)) -> Optional[T]:
    """``fn()`` on the main rank only (returns None elsewhere); every rank waits for it. When it raises one of
    ``errors``, every rank raises that error with the main rank's message, so no rank waits forever for a peer
    that stopped (a full disk on rank 0 stops the whole job with one line)."""
    result, error = None, None
    if not is_dist() or dist.get_rank() == 0:
        try:
            result = fn()
        except errors as e:
            if not is_dist():
                raise
            error = (type(e), str(e))
    raised = [e for e in all_gather_objects(error) if e]
    if raised:
        error_type, message = raised[0]
        raise error_type(message)
    return result


def cleanup(wait_for_all: bool = False) -> None:
    """Leave the process group.

    ``wait_for_all`` (the normal end of a run) first waits for every rank: a rank that tears down its gloo
    connections while a peer is still inside ``destroy_process_group`` can make that peer's transport
    thread abort ("terminate called without an active exception", seen once in CI). After an error the
    other ranks may never arrive, so the error path leaves at once.
    """
    if not is_dist():
        return
    if wait_for_all:
        dist.barrier()
    dist.destroy_process_group()
