"""Optimizer, parameter groups and the per-iteration learning-rate schedule."""
import math
from dataclasses import dataclass

import torch
from fvcore.common.config import CfgNode
from timm.optim import Lars, param_groups_layer_decay, param_groups_weight_decay
from torch import nn

from videodiff.engine.logging import logger


def scaled_lr(cfg: CfgNode) -> float:
    """Linear scaling rule: BASE_LR x global batch / 256, the batch counted in original samples."""
    return cfg.SOLVER.BASE_LR * cfg.TRAIN.BATCH_SIZE / 256


OPTIMIZERS = ("adamw", "sgd", "lars")  # the allowed SOLVER.OPTIMIZING_METHOD values
# The allowed SOLVER.FUSED values (not on / off: YAML reads those as booleans).
FUSED_SETTINGS = ("auto", "always", "never")


def build_optimizer(model: nn.Module, cfg: CfgNode) -> torch.optim.Optimizer:
    """AdamW, SGD or LARS over groups: no weight decay on biases / norms / 1-d params; optional layer decay.

    Each group may carry an ``lr_scale`` (layer decay) that ``set_lr`` multiplies in.

    ``lars`` is MAE's LARS (facebookresearch/mae util/lars.py, its linear-probing optimizer), run by timm's ``Lars``:
    momentum SOLVER.MOMENTUM without Nesterov or dampening, and for a parameter with ndim > 1 the step
    ``g * LARS_TRUST_COEFF * ||w|| / ||g||`` (ratio 1 where either norm is 0) plus weight decay; biases and other
    1-d params get plain momentum SGD, no adaptation, no decay. MAE picks by ndim alone, so here too an ndim > 1
    param named in ``no_weight_decay()`` (pos_embed, cls_token) is adapted and decayed. Each group is split in
    two: ndim > 1 with ``always_adapt=True``, the rest with ``always_adapt=False`` and weight decay 0 (timm then
    skips the trust ratio). ``eps=0`` makes the ratio MAE's exactly. With WEIGHT_DECAY > 0 timm divides by
    ``||g|| + wd ||w||`` (the LARS paper) where MAE divides by ``||g + wd w||``; they agree at MAE's probing
    weight decay of 0.
    """
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    if cfg.SOLVER.LAYER_DECAY < 1.0:
        groups = param_groups_layer_decay(model, weight_decay=cfg.SOLVER.WEIGHT_DECAY,
                                          no_weight_decay_list=skip, layer_decay=cfg.SOLVER.LAYER_DECAY)
    else:
        groups = param_groups_weight_decay(model, weight_decay=cfg.SOLVER.WEIGHT_DECAY, no_weight_decay_list=skip)
    lr = scaled_lr(cfg)
    method = cfg.SOLVER.OPTIMIZING_METHOD
    if method == "adamw":
        return build_adamw(groups, lr, tuple(cfg.SOLVER.BETAS), cfg.SOLVER.FUSED)
    if cfg.SOLVER.FUSED == "always":
        logger.info(f"SOLVER.FUSED always applies to AdamW only; {method} runs unfused")
    if method == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.SOLVER.MOMENTUM, nesterov=True)
    if method == "lars":
        lars_groups = []
        for group in groups:
            rest = {k: v for k, v in group.items() if k not in ("params", "weight_decay")}  # keeps lr_scale
            for adapt in (True, False):
                params = [p for p in group["params"] if (p.ndim > 1) == adapt]
                if params:
                    lars_groups.append(dict(rest, params=params, always_adapt=adapt,
                                            weight_decay=cfg.SOLVER.WEIGHT_DECAY if adapt else 0.0))
        return Lars(lars_groups, lr=lr, momentum=cfg.SOLVER.MOMENTUM, dampening=0.0, nesterov=False,
                    trust_coeff=cfg.SOLVER.LARS_TRUST_COEFF, eps=0.0, trust_clip=False)
    raise ValueError(f"SOLVER.OPTIMIZING_METHOD {method!r}: one of {', '.join(OPTIMIZERS)}")


def build_adamw(groups: list, lr: float, betas: tuple, fused: str) -> torch.optim.AdamW:
    """AdamW, with torch's fused kernel per ``fused`` (SOLVER.FUSED): "auto" fuses on CUDA only, where it is the
    fastest; "always" asks for it wherever torch has the kernel. Where it is not used although asked for, one line says
    why (torch itself would only fail at the first step)."""
    params = [p for group in groups for p in group["params"]]
    device = params[0].device if params else torch.device("cpu")
    use = fused == "always" or (fused == "auto" and device.type == "cuda")
    if fused == "auto" and not use:
        logger.info(f"SOLVER.FUSED auto: fused AdamW is off on {device.type} (auto fuses on CUDA only)")
    reason = fused_adamw_unsupported(params) if use else ""
    if reason:
        logger.warning(f"SOLVER.FUSED {fused}: fused AdamW is unsupported here ({reason}); running unfused")
    # None, not False, when unfused: torch then picks its multi-tensor (foreach) path; False would loop per tensor.
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True if use and not reason else None)


def fused_adamw_unsupported(params: list) -> str:
    """Why torch's fused AdamW cannot update ``params``, or "" when it can."""
    try:  # the devices torch has fused kernels for (private; a torch without it is assumed to fuse on CUDA only)
        from torch.optim.optimizer import _get_fused_kernels_supported_devices
        devices = _get_fused_kernels_supported_devices()
    except ImportError:
        devices = ["cuda"]
    for p in params:
        if p.device.type not in devices:
            return f"torch has no fused kernel for {p.device.type} parameters"
        if not torch.is_floating_point(p):
            return f"a parameter is {p.dtype}, not floating point"
    return ""


LR_POLICIES = ("cosine", "constant")  # the allowed SOLVER.LR_POLICY values


@dataclass(frozen=True)
class LRSchedule:
    """Learning rate at a fractional epoch (per iteration): linear warmup from 0 to ``peak`` over ``warmup_epochs``,
    then ``policy`` "cosine" (half a cosine down to ``end`` at ``max_epoch``) or "constant".

    A pure function of the epoch position, so a resumed run follows the uninterrupted run's schedule.
    """
    peak: float
    warmup_epochs: float
    max_epoch: float
    end: float = 0.0
    policy: str = "cosine"

    def __call__(self, epoch: float) -> float:
        if epoch < self.warmup_epochs:
            return self.peak * epoch / self.warmup_epochs
        if self.policy == "constant":
            return self.peak
        progress = (epoch - self.warmup_epochs) / max(self.max_epoch - self.warmup_epochs, 1e-8)
        return self.end + (self.peak - self.end) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def lr_schedule(cfg: CfgNode) -> LRSchedule:
    s = cfg.SOLVER
    return LRSchedule(scaled_lr(cfg), s.WARMUP_EPOCHS, s.MAX_EPOCH, s.COSINE_END_LR, s.LR_POLICY)


def lr_at(epoch: float, cfg: CfgNode) -> float:
    """The config's schedule at fractional ``epoch`` (``LRSchedule``)."""
    return lr_schedule(cfg)(epoch)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
