"""FSDP (torch's ``fully_shard``, FSDP2) as the alternative to DDP (TRAIN.PARALLEL fsdp): each rank holds 1/world of
every weight, gradient and optimizer state instead of a full replica (INSTALL.md "Scaling out" has the numbers).

Units: every transformer block (each element of a ModuleList named ``blocks`` or ``*_blocks``: the ViT encoder's, the
DiffMAE and MAE decoders', the DiT's) is a unit of its own, then the root holds the rest (patch embedding, positions,
norms, heads). A block's full weights exist only while it runs forward or backward.

Precision: autocast as under DDP (``engine/precision.py``); parameters, their all-gathers and the gradient
reduce-scatter stay fp32. FSDP's ``MixedPrecisionPolicy(param_dtype=bf16)`` would halve the all-gather traffic, but it
also casts each unit's inputs and parameters, so the residual stream and every op autocast leaves in fp32 (norms,
positions, the elementwise parameter ops) would run in bf16: other numbers than the DDP recipe the results were
measured with. Autocast casts every matmul to bf16 all the same, so the compute is as fast.

Optimizer: built from the plain model, as under DDP (``engine/build.py``); ``shard_model`` moves its parameter groups
(lr scales, weight decay) onto the sharded parameters, and a resumed state, sharded, with them.

Checkpoints: ``full_states`` gathers the full state dicts to rank 0, which writes the same file DDP or one process
writes (``engine/checkpoint.py``), so any of them resumes from it; a resumed run loads it into the plain model before
sharding. Evaluation: ``unsharded`` gathers the full weights first, so a forward needs no collective and ranks may run
different numbers of batches. EMA is not supported (``config/validate.py`` refuses MODEL_EMA.ENABLE with fsdp).
"""
from contextlib import contextmanager
from typing import Dict, Iterator, List, Tuple

import torch
import torch.distributed as dist
from torch import nn

from videodiff.state_dicts import unwrap

PARALLEL_MODES = ("ddp", "fsdp")  # TRAIN.PARALLEL: DDP (train.Trainer.wrap_distributed) or this module's FSDP


def fsdp_unsupported(backend: str = "") -> str:
    """Why this torch build cannot train with FSDP (no ``fully_shard``, or no ``backend``; by default the one
    ``distributed.init_distributed`` picks here: nccl with CUDA, else gloo), or "" when it can."""
    if not dist.is_available():
        return f"this torch ({torch.__version__}) was built without torch.distributed"
    try:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict  # noqa: F401
        from torch.distributed.fsdp import FSDPModule, fully_shard  # noqa: F401
    except ImportError as e:
        return f"this torch ({torch.__version__}) has no torch.distributed.fsdp.fully_shard (FSDP2): {e}"
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if not {"nccl": dist.is_nccl_available, "gloo": dist.is_gloo_available}[backend]():
        return f"this torch ({torch.__version__}) was built without the {backend} backend that FSDP needs here"
    return ""


def is_sharded(model: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return False
    return isinstance(unwrap(model), FSDPModule)


def transformer_blocks(model: nn.Module) -> List[nn.Module]:
    """The FSDP units below the root: every element of a ModuleList named ``blocks`` or ``*_blocks``."""
    return [block for name, module in model.named_modules()
            if isinstance(module, nn.ModuleList) and name.rsplit(".", 1)[-1].endswith("blocks") for block in module]


def shard_model(model: nn.Module, optimizer: torch.optim.Optimizer) -> nn.Module:
    """Shard ``model`` in place (each block a unit, then the root) and move ``optimizer`` onto the shards.

    Every rank of the process group calls it with the same weights and optimizer state (each keeps its slice).
    ``fully_shard`` replaces every parameter by a sharded one, so the optimizer's groups are rebuilt by name."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    from torch.distributed.fsdp import fully_shard

    names = {id(p): name for name, p in model.named_parameters()}
    group_names = [[names[id(p)] for p in group["params"]] for group in optimizer.param_groups]
    resumed = keyed_by_name(optimizer.state_dict(), group_names) if optimizer.state else None
    for block in transformer_blocks(model):
        fully_shard(block)
    fully_shard(model)
    sharded = dict(model.named_parameters())
    for group, group_params in zip(optimizer.param_groups, group_names):
        group["params"] = [sharded[name] for name in group_params]
    optimizer.state.clear()  # a resumed state's full tensors; their shards come back below
    if resumed is not None:
        set_optimizer_state_dict(model, optimizer, resumed, options=StateDictOptions(full_state_dict=True))
    return model


def keyed_by_name(state: dict, group_names: List[List[str]]) -> dict:
    """``optimizer.state_dict()`` (parameters as indices 0, 1, ... in group order) with parameter names instead:
    the form torch's ``set_optimizer_state_dict`` takes. ``group_names``: each group's parameter names, in order."""
    order = [name for names in group_names for name in names]
    return {"state": {order[i]: s for i, s in state["state"].items()},
            "param_groups": [dict(g, params=names) for g, names in zip(state["param_groups"], group_names)]}


def keyed_by_index(state: dict) -> dict:
    """The inverse of ``keyed_by_name``: what ``optimizer.state_dict()`` of the unsharded model returns."""
    order = {name: i for i, name in enumerate(name for g in state["param_groups"] for name in g["params"])}
    return {"state": {order[name]: s for name, s in state["state"].items()},
            "param_groups": [dict(g, params=[order[name] for name in g["params"]]) for g in state["param_groups"]]}


class Gathered:
    """A gathered state dict where ``checkpoint.save_checkpoint`` reads a model's or optimizer's: ``state_dict()``."""

    def __init__(self, state: dict):
        self.state = state

    def state_dict(self) -> dict:
        return self.state


def full_states(model: nn.Module, optimizer: torch.optim.Optimizer) -> Tuple[Gathered, Gathered]:
    """The sharded ``model``'s and ``optimizer``'s full state dicts, in the unsharded layout, on rank 0's CPU
    (empty elsewhere). A collective: every rank calls it."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)

    root = unwrap(model)
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state = get_model_state_dict(root, options=options)
    optimizer_state = get_optimizer_state_dict(root, optimizer, options=options)
    return Gathered(model_state), Gathered(keyed_by_index(optimizer_state) if optimizer_state else {})


def full_tensor(value: torch.Tensor) -> torch.Tensor:
    """A plain tensor for a sharded model's DTensor result (e.g. a gradient norm), else ``value`` itself."""
    return value.full_tensor() if hasattr(value, "full_tensor") else value


@contextmanager
def unsharded(model: nn.Module) -> Iterator[nn.Module]:
    """Inside: a sharded model keeps its full weights on every rank, so its forward needs no collective (evaluation,
    where ranks may run different numbers of batches). Any other model passes through."""
    root = unwrap(model)
    if not is_sharded(root):
        yield model
        return
    from torch.distributed.fsdp import FSDPModule
    units = [m for m in root.modules() if isinstance(m, FSDPModule)]
    root.set_reshard_after_forward(False)
    for unit in units:
        unit.unshard()
    try:
        yield model
    finally:
        for unit in units:
            unit.reshard()
        # Back to fully_shard's own choice: blocks reshard after forward, the root keeps its weights for backward.
        root.set_reshard_after_forward(True)
        root.set_reshard_after_forward(False, recurse=False)


def describe(model: nn.Module, world_size: int) -> str:
    """One line for the log, before ``shard_model``: the units and the share of the weights each rank will hold."""
    params = sum(p.numel() for p in model.parameters())
    units: Dict[str, int] = {}
    for block in transformer_blocks(model):
        units[type(block).__name__] = units.get(type(block).__name__, 0) + 1
    blocks = ", ".join(f"{n} {name}" for name, n in units.items()) or "no blocks"
    return (f"FSDP over {world_size} ranks: {blocks} + the root as units; each rank holds 1/{world_size} of the "
            f"{params:,} parameters, their gradients and optimizer state")
