"""Our models against references of identical size, timed side by side (``tools/benchmark.py model --vs ...``).

``--vs timm``: our ``VitClassifier`` at the config's VIT.* and clip against timm's ``VisionTransformer`` of the same
depth, width, heads, MLP ratio, qkv bias, drop path, head dropout and token count. timm's model is 2-D, so it gets
the clip laid out the way our Conv3d tokenizer reads it: each t_patch x p x p tubelet becomes a p x p patch of an
image whose channels are the t_patch frames' C channels stacked (C·t_patch channels), and the T' tubelet rows sit
side by side (an image of H x T'·W). Its Conv2d then holds exactly our Conv3d's weights and makes the same N tokens,
so both models have the same parameters and FLOPs. Positions: timm's learned table is off (``pos_embed='none'``)
when ours are fixed sin-cos (no parameters; we pay one add), and on when ours are learned. A one-frame (image)
config needs no rearranging. Timed: forward + cross-entropy + backward, gradients set to None before each step,
no optimizer, the config's precision.

``--vs mae``: the pretraining step (``Trainer.step``) of DiffMAE against the MAE baseline, both built from the same
config with MODEL.MODEL_NAME set: same encoder, mask ratio, decoder depth / width / heads.

Both run in interleaved rounds (``model_benchmark.time_rounds``); the ratio printed last is the median over rounds
of (ours / theirs) within a round, wall clock, so slow drifts in a shared machine's load cancel. On the CPU the same
ratio of process CPU time is printed the line before (``cpu_ratio_...``): other jobs on shared cores stretch wall
time far more than CPU time.
"""
from statistics import median
from typing import Callable, Dict, List, Sequence

import torch
import torch.nn.functional as F
from fvcore.common.config import CfgNode
from timm.models.vision_transformer import VisionTransformer as TimmViT
from torch import nn

from videodiff.engine.dry_run import count_flops
from videodiff.engine.model_benchmark import (BenchOptions, Rounds, Step, build_on, choose_batch, pick_device,
                                              synthetic_batch, time_rounds, training_step)
from videodiff.engine.precision import precision_from_cfg

# Loads the benchmark's config again with extra KEY VALUE overrides (validated like the command line's).
ConfigVariant = Callable[[Sequence[str]], CfgNode]


def clip_as_image(clip: torch.Tensor, t_patch: int) -> torch.Tensor:
    """[B, C, T, H, W] -> [B, C·t, H, T'·W] with T' = T / t: pixel (c, j·t + k, h, w) goes to
    (c·t + k, h, j·W + w), so a p x p patch of the image is exactly one t x p x p tubelet, its channels in the
    order of Conv3d's weight (c, k)."""
    b, c, t, h, w = clip.shape
    image = clip.reshape(b, c, t // t_patch, t_patch, h, w).permute(0, 1, 3, 4, 2, 5)  # [B, C, t, H, T', W]
    return image.reshape(b, c * t_patch, h, (t // t_patch) * w).contiguous()


class TimmWithLoss(nn.Module):
    """timm's classifier behind our model interface: (image, label) -> {"loss"}."""

    def __init__(self, vit: TimmViT, label_smoothing: float):
        super().__init__()
        self.vit, self.label_smoothing = vit, label_smoothing

    def forward(self, image: torch.Tensor, label: torch.Tensor) -> Dict[str, torch.Tensor]:
        logits = self.vit(image)
        return {"loss": F.cross_entropy(logits.float(), label, label_smoothing=self.label_smoothing)}


def timm_twin(cfg: CfgNode) -> TimmWithLoss:
    """timm's VisionTransformer of our VitClassifier's size for this config's clip (see the module docstring)."""
    v, size, frames = cfg.VIT, cfg.DATA.TRAIN_CROP_SIZE, cfg.DATA.NUM_FRAMES
    vit = TimmViT(img_size=(size, size * (frames // v.TEMPORAL_PATCH_SIZE)), patch_size=v.PATCH_SIZE,
                  in_chans=v.IN_CHANNELS * v.TEMPORAL_PATCH_SIZE, num_classes=cfg.MODEL.NUM_CLASSES,
                  global_pool="avg", embed_dim=v.EMBED_DIM, depth=v.DEPTH, num_heads=v.NUM_HEADS,
                  mlp_ratio=v.MLP_RATIO, qkv_bias=v.QKV_BIAS, class_token=v.CLS_TOKEN,
                  pos_embed="learn" if v.POS_EMBED == "learned" else "none", drop_rate=cfg.MODEL.DROPOUT_RATE,
                  drop_path_rate=v.DROP_PATH_RATE)
    return TimmWithLoss(vit, cfg.MODEL.LABEL_SMOOTHING)


def forward_backward(model: nn.Module, inputs: torch.Tensor, label: torch.Tensor, cfg: CfgNode,
                     device: torch.device) -> Step:
    precision = precision_from_cfg(cfg)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        with precision.autocast(device):
            loss = model(inputs, label)["loss"]
        loss.backward()

    return step


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def ratio_of_rounds(ours: List[float], theirs: List[float]) -> float:
    return median(a / b for a, b in zip(ours, theirs))


def timing_lines(names: Dict[str, str], rounds: Rounds, batch: int, opts: BenchOptions,
                 ratio_key: str, device: torch.device) -> List[str]:
    """Each side's median ms/step and clips/s, every round, then the CPU-time ratio (on the CPU) and the wall ratio
    ``ratio_key=<first / second>``, last."""
    lines = [f"timing: {opts.repeats} interleaved rounds x {opts.steps} steps after {opts.warmup} warm-up steps "
             f"each, batch {batch}, torch threads {torch.get_num_threads()}; median round"]
    for key, label in names.items():
        ms = median(rounds.wall[key]) * 1e3
        lines.append(f"{label}: {ms:.1f} ms/step, {batch / ms * 1e3:.2f} clips/s "
                     f"(rounds {', '.join(f'{t * 1e3:.1f}' for t in rounds.wall[key])} ms)")
    first, second = names
    if device.type == "cpu":
        lines.append(f"cpu_{ratio_key}={ratio_of_rounds(rounds.cpu[first], rounds.cpu[second]):.3f}  "
                     f"(process CPU time)")
    lines.append(f"{ratio_key}={ratio_of_rounds(rounds.wall[first], rounds.wall[second]):.3f}")
    return lines


def compare_timm(variant: ConfigVariant, opts: BenchOptions) -> List[str]:
    """Print our classifier vs timm's at identical size; the last line is ``ratio_vs_timm=<ours/timm time>``."""
    cfg = variant(["MODEL.MODEL_NAME", "VitClassifier"])
    device = pick_device(opts.device)
    ours, theirs = build_on(cfg, device), timm_twin(cfg).to(device).train()
    batch, _ = choose_batch(cfg, ours, device, opts)
    data = synthetic_batch(cfg, batch, device)
    image = clip_as_image(data["clip"], cfg.VIT.TEMPORAL_PATCH_SIZE)
    one = torch.zeros(1, dtype=torch.long, device=device)
    n_ours, n_theirs = ours.encoder.patch_embed.grid_size(data["clip"].shape), theirs.vit.patch_embed.grid_size
    lines = [f"ours: VitClassifier, {count_params(ours)} params, tokens {n_ours[0] * n_ours[1] * n_ours[2]}, "
             f"{count_flops(ours, data['clip'][:1], one):.4g} GMAC/clip",
             f"timm: VisionTransformer, {count_params(theirs)} params, tokens {n_theirs[0] * n_theirs[1]}, "
             f"{count_flops(theirs, image[:1], one):.4g} GMAC/clip (image {tuple(image.shape[1:])}: the clip's "
             f"tubelets as patches)"]
    steps = {"ours": forward_backward(ours, data["clip"], data["label"], cfg, device),
             "timm": forward_backward(theirs, image, data["label"], cfg, device)}
    rounds = time_rounds(steps, device, opts.warmup, opts.repeats, opts.steps)
    lines += timing_lines({"ours": "ours (forward + backward)", "timm": "timm (forward + backward)"}, rounds,
                          batch, opts, "ratio_vs_timm", device)
    for line in lines:
        print(line, flush=True)
    return lines


def compare_mae(variant: ConfigVariant, opts: BenchOptions) -> List[str]:
    """Print DiffMAE's vs MAE's pretraining step at identical size; the last line is ``ratio_diffmae_vs_mae=``."""
    cfgs = {name: variant(["MODEL.MODEL_NAME", name]) for name in ("DiffMAE", "MAE")}
    device = pick_device(opts.device)
    models = {name: build_on(cfg, device) for name, cfg in cfgs.items()}
    batch, _ = choose_batch(cfgs["DiffMAE"], models["DiffMAE"], device, opts)
    data = synthetic_batch(cfgs["DiffMAE"], batch, device)
    one = torch.zeros(1, dtype=torch.long, device=device)
    lines = [f"{name}: {count_params(model)} params, {count_flops(model, data['clip'][:1], one):.4g} GMAC/clip"
             for name, model in models.items()]
    steps = {name: training_step(cfgs[name], model, data, device) for name, model in models.items()}
    rounds = time_rounds(steps, device, opts.warmup, opts.repeats, opts.steps)
    lines += timing_lines({name: f"{name} (Trainer.step)" for name in models}, rounds, batch, opts,
                          "ratio_diffmae_vs_mae", device)
    for line in lines:
        print(line, flush=True)
    return lines
