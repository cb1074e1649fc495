"""Mixed precision: bf16 (or fp16) autocast on GPU when TRAIN.MIXED_PRECISION; exact fp32 on CPU."""
from contextlib import nullcontext

import torch
from fvcore.common.config import CfgNode


def autocast_for(cfg: CfgNode, device: torch.device):
    if device.type != "cuda" or not cfg.TRAIN.MIXED_PRECISION:
        return nullcontext()
    return torch.autocast("cuda", dtype=getattr(torch, cfg.TRAIN.AMP_DTYPE))


def uses_grad_scaler(cfg: CfgNode, device: torch.device) -> bool:
    """fp16 needs loss scaling; bf16 has fp32's exponent range and does not."""
    return device.type == "cuda" and cfg.TRAIN.MIXED_PRECISION and cfg.TRAIN.AMP_DTYPE == "float16"
