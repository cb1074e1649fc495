"""TRAIN.DRY_RUN: build any config on the CPU, count parameters and FLOPs, run one forward/backward, exit.

FLOPs are counted by torch's ``FlopCounterMode`` while the real forward runs, reported as multiply-adds
(fvcore's and the ViT papers' convention: one multiply-add = one flop). fvcore's FlopCountAnalysis was
the first choice, but it needs a jit trace, and tracing breaks on the data-dependent parts of masked
models (random masks built with in-place boolean scatters); counting eagerly has no such limit and
includes ``scaled_dot_product_attention``. On the CPU that needs ``CPU_ATTENTION_FLOPS``: torch's counter knows
the CUDA attention kernels only, and counted the CPU one as 0 (attention was missing from CPU counts until then).
"""
import time
import torch
from fvcore.common.config import CfgNode
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from videodiff.engine.logging import logger
from videodiff.models.build import build_model


def random_clip(cfg: CfgNode, batch: int = 1) -> torch.Tensor:
    size = cfg.DATA.TRAIN_CROP_SIZE
    return torch.randn(batch, cfg.VIT.IN_CHANNELS, cfg.DATA.NUM_FRAMES, size, size)


def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_attention_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                                  **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


# The CPU's fused attention kernel, counted with the formulas torch uses for the CUDA ones (given tensor shapes).
CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward_flops,
}


def count_flops(model: torch.nn.Module, clip: torch.Tensor, label: torch.Tensor) -> float:
    """Forward GFLOPs (multiply-adds) of ``model(clip, label)`` per clip."""
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        model(clip, label)
    return counter.get_total_flops() / 2 / clip.shape[0] / 1e9  # torch counts a multiply-add as 2


def dry_run(cfg: CfgNode) -> dict:
    model = build_model(cfg)
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    clip = random_clip(cfg, batch=2)  # two clips: a linear probe's BatchNorm needs more than one value per channel
    label = torch.zeros(2, dtype=torch.long)
    model.train()
    gflops = count_flops(model, clip, label)
    start = time.perf_counter()
    out = model(clip, label)
    out["loss"].backward()
    seconds = time.perf_counter() - start
    result = {"model": cfg.MODEL.MODEL_NAME, "params_M": params / 1e6, "trainable_M": trainable / 1e6,
              "gflops_per_clip": gflops, "clip_shape": list(clip.shape), "loss": float(out["loss"]),
              "forward_backward_s": seconds}
    logger.info("dry run: " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                        for k, v in result.items()))
    return result
