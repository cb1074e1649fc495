"""Time and memory against tokens, pretraining vs fine-tuning (``tools/benchmark.py model --scaling``).

For every (frames, crop size), on the config's ViT: DiffMAE pretraining at the config's MASK.RATIO (random masking:
the encoder sees only the K visible of N tokens) and fine-tuning (VitClassifier: the encoder sees all N). Per row:

  enc GMAC       the encoder's forward multiply-adds per clip (on K tokens when pretraining, N when fine-tuning)
  enc ms         the encoder's forward + backward alone, per step of ``batch`` clips
  PT/FT enc      pretraining's encoder time over fine-tuning's: about K / N (= 1 - MASK.RATIO) once the linear
                 layers dominate, below it where attention's N^2 term weighs in, above it where fixed per-step
                 costs (tiny sizes on the CPU) dominate
  step ms        the whole ``Trainer.step`` (pretraining: encoder + decoder over the M masked tokens + optimizer)
  act MB/clip    tensors saved for backward during one forward (``saved_tensors_hooks``, parameters excluded, each
                 storage once) per clip: activation memory, measurable on the CPU too; of the encoder alone
                 ("enc act") and of the whole pretraining model ("PT all act": encoder + decoder + targets)
  peak MB        CUDA only: max_memory_allocated over the row's steps

All four timings of a row run in interleaved rounds (``model_benchmark.time_rounds``), median round reported.
The models are built once (sin-cos positions fit any grid); a config with learned positions is refused.
"""
from statistics import median
from typing import Callable, Dict, List, Sequence

import torch
from fvcore.common.config import CfgNode
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from videodiff.engine.dry_run import CPU_ATTENTION_FLOPS
from videodiff.engine.model_benchmark import (BenchOptions, Step, build_on, pick_device, reset_peak_memory,
                                              synthetic_batch, time_rounds, training_step)
from videodiff.engine.model_compare import ConfigVariant
from videodiff.models.masking import num_visible
from videodiff.models.vit import VisionTransformer


def encoder_pass(encoder: VisionTransformer, clip: torch.Tensor, mask_ratio: float) -> Callable[[], torch.Tensor]:
    """The encoder's forward on a fresh random set of visible tokens (``mask_ratio`` 0: all tokens) -> a scalar."""
    grid = encoder.patch_embed.grid_size(clip.shape)
    n = grid[0] * grid[1] * grid[2]

    def run() -> torch.Tensor:
        keep = None
        if mask_ratio > 0:
            keep = torch.rand(clip.shape[0], n, device=clip.device).argsort(1)[:, :num_visible(n, mask_ratio)]
        return encoder.forward_features(clip, keep).float().mean()

    return run


def backward_of(model: nn.Module, forward: Callable[[], torch.Tensor]) -> Step:
    def step() -> None:
        model.zero_grad(set_to_none=True)
        forward().backward()

    return step


def gmacs(forward: Callable[[], torch.Tensor], batch: int) -> float:
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        forward()
    return counter.get_total_flops() / 2 / batch / 1e9


def saved_activation_mb(model: nn.Module, forward: Callable[[], torch.Tensor], batch: int) -> float:
    """MB per clip of the tensors autograd keeps for backward in one ``forward()`` (parameters excluded)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: Dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()  # saved tensors stay alive, so pointers are unique
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = forward()
    del out
    return sum(saved.values()) / 2 ** 20 / batch


HEADER = ("| frames x size | tokens N | visible K | PT enc GMAC | FT enc GMAC | PT enc ms | FT enc ms | PT/FT enc | "
          "PT step ms | FT step ms | PT enc act MB/clip | FT enc act MB/clip | PT all act MB/clip |")


def scaling_row(cfgs: Dict[str, CfgNode], models: Dict[str, nn.Module], batch: int, device: torch.device,
                opts: BenchOptions) -> str:
    """One table row for the clip size of ``cfgs`` (both configs share it)."""
    pt, ft, ratio = models["pt"], models["ft"], cfgs["pt"].MASK.RATIO
    data = synthetic_batch(cfgs["pt"], batch, device)
    n = pt.encoder.patch_embed.grid_size(data["clip"].shape)
    n = n[0] * n[1] * n[2]
    k = num_visible(n, ratio)
    enc = {"pt": encoder_pass(pt.encoder, data["clip"], ratio), "ft": encoder_pass(ft.encoder, data["clip"], 0.0)}
    whole_pt = lambda: pt(data["clip"], data["label"])["loss"]  # noqa: E731
    steps = {"pt_enc": backward_of(pt, enc["pt"]), "ft_enc": backward_of(ft, enc["ft"]),
             "pt_step": training_step(cfgs["pt"], pt, data, device),
             "ft_step": training_step(cfgs["ft"], ft, data, device)}
    reset_peak_memory(device)
    ms = {name: median(t) * 1e3 for name, t in
          time_rounds(steps, device, opts.warmup, opts.repeats, opts.steps).wall.items()}
    cells = [f"{cfgs['pt'].DATA.NUM_FRAMES}x{cfgs['pt'].DATA.TRAIN_CROP_SIZE}", n, k,
             f"{gmacs(enc['pt'], batch):.3f}", f"{gmacs(enc['ft'], batch):.3f}",
             f"{ms['pt_enc']:.1f}", f"{ms['ft_enc']:.1f}", f"{ms['pt_enc'] / ms['ft_enc']:.3f}",
             f"{ms['pt_step']:.1f}", f"{ms['ft_step']:.1f}", f"{saved_activation_mb(pt, enc['pt'], batch):.2f}",
             f"{saved_activation_mb(ft, enc['ft'], batch):.2f}", f"{saved_activation_mb(pt, whole_pt, batch):.2f}"]
    if device.type == "cuda":
        cells.append(f"{torch.cuda.max_memory_allocated(device) / 2 ** 20:.0f}")
    return "| " + " | ".join(str(c) for c in cells) + " |"


def run_scaling(variant: ConfigVariant, opts: BenchOptions, frames: Sequence[int], sizes: Sequence[int]) -> List[str]:
    """Print (and return) the table: one row per (frames, size), pretraining (PT) vs fine-tuning (FT)."""
    device = pick_device(opts.device)
    base = variant(["MODEL.MODEL_NAME", "DiffMAE"])
    if base.VIT.POS_EMBED != "sincos":
        raise ValueError("--scaling needs VIT.POS_EMBED sincos (one model for every clip size)")
    models = {"pt": build_on(base, device), "ft": build_on(variant(["MODEL.MODEL_NAME", "VitClassifier"]), device)}
    batch = 2 if opts.batch in (None, "auto") else int(opts.batch)
    v = base.VIT
    lines = [f"scaling: ViT {v.EMBED_DIM} wide, {v.DEPTH} blocks, {v.NUM_HEADS} heads, {v.TEMPORAL_PATCH_SIZE}x"
             f"{v.PATCH_SIZE}x{v.PATCH_SIZE} patches; DiffMAE {base.DIFFMAE.DECODER_TYPE} decoder "
             f"{base.DIFFMAE.DECODER_DEPTH}x{base.DIFFMAE.DECODER_EMBED_DIM}, mask {base.MASK.RATIO} "
             f"({base.MASK.TYPE}); batch {batch}, {device.type}, torch threads {torch.get_num_threads()}; median of "
             f"{opts.repeats} interleaved rounds x {opts.steps} steps",
             HEADER + (" peak MB |" if device.type == "cuda" else ""),
             "|" + "---|" * (HEADER.count("|") - 1 + (device.type == "cuda"))]
    for line in lines:
        print(line, flush=True)
    for f in frames:
        for s in sizes:
            size = ["DATA.NUM_FRAMES", str(f), "DATA.TRAIN_CROP_SIZE", str(s)]
            cfgs = {"pt": variant(["MODEL.MODEL_NAME", "DiffMAE"] + size),
                    "ft": variant(["MODEL.MODEL_NAME", "VitClassifier"] + size)}
            lines.append(scaling_row(cfgs, models, batch, device, opts))
            print(lines[-1], flush=True)
    return lines
