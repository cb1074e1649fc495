"""Optimizer, parameter groups and the per-iteration learning-rate schedule."""
import math

import torch
from fvcore.common.config import CfgNode
from timm.optim import param_groups_layer_decay, param_groups_weight_decay
from torch import nn


def scaled_lr(cfg: CfgNode) -> float:
    """Linear scaling rule: BASE_LR x global batch / 256, the batch counted in original samples."""
    return cfg.SOLVER.BASE_LR * cfg.TRAIN.BATCH_SIZE / 256


def build_optimizer(model: nn.Module, cfg: CfgNode) -> torch.optim.Optimizer:
    """AdamW (or SGD) over groups: no weight decay on biases / norms / 1-d params; optional layer decay.

    Each group may carry an ``lr_scale`` (layer decay) that ``set_lr`` multiplies in.
    """
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    if cfg.SOLVER.LAYER_DECAY < 1.0:
        groups = param_groups_layer_decay(model, weight_decay=cfg.SOLVER.WEIGHT_DECAY,
                                          no_weight_decay_list=skip, layer_decay=cfg.SOLVER.LAYER_DECAY)
    else:
        groups = param_groups_weight_decay(model, weight_decay=cfg.SOLVER.WEIGHT_DECAY, no_weight_decay_list=skip)
    lr = scaled_lr(cfg)
    if cfg.SOLVER.OPTIMIZING_METHOD == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.SOLVER.BETAS))
    return torch.optim.SGD(groups, lr=lr, momentum=cfg.SOLVER.MOMENTUM, nesterov=True)


def lr_at(epoch: float, cfg: CfgNode) -> float:
    """Learning rate at fractional ``epoch`` (per-iteration): linear warmup from 0, then cosine to COSINE_END_LR.

    A pure function of the epoch position, so a resumed run follows the uninterrupted run's schedule.
    """
    peak, end = scaled_lr(cfg), cfg.SOLVER.COSINE_END_LR
    warmup, total = cfg.SOLVER.WARMUP_EPOCHS, cfg.SOLVER.MAX_EPOCH
    if epoch < warmup:
        return peak * epoch / warmup
    if cfg.SOLVER.LR_POLICY == "constant":
        return peak
    progress = (epoch - warmup) / max(total - warmup, 1e-8)
    return end + (peak - end) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
