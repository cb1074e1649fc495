"""Mixed precision: bf16 (or fp16) autocast on GPU when enabled; exact fp32 on CPU."""
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from fvcore.common.config import CfgNode

AMP_DTYPES = ("bfloat16", "float16")  # the values of TRAIN.AMP_DTYPE


@dataclass(frozen=True)
class Precision:
    """``enabled``: autocast on CUDA devices (never on the CPU); ``dtype``: one of ``AMP_DTYPES``."""
    enabled: bool = False
    dtype: str = "bfloat16"

    def autocast(self, device: torch.device):
        if device.type != "cuda" or not self.enabled:
            return nullcontext()
        return torch.autocast("cuda", dtype=getattr(torch, self.dtype))

    def needs_grad_scaler(self, device: torch.device) -> bool:
        """fp16 needs loss scaling; bf16 has fp32's exponent range and does not."""
        return device.type == "cuda" and self.enabled and self.dtype == "float16"


def precision_from_cfg(cfg: CfgNode) -> Precision:
    return Precision(cfg.TRAIN.MIXED_PRECISION, cfg.TRAIN.AMP_DTYPE)


def autocast_for(cfg: CfgNode, device: torch.device):
    return precision_from_cfg(cfg).autocast(device)
