"""Model benchmark: the config's real training step, timed on synthetic clips (``tools/benchmark.py model``).

One step is ``Trainer.step`` exactly as training runs it: forward under the config's precision (bf16 / fp16
autocast on CUDA when TRAIN.MIXED_PRECISION, fp32 on the CPU), backward, gradient norm (clipped to
SOLVER.CLIP_GRAD), the finiteness check, and the config's optimizer step. Clips are random normal
[B, C, DATA.NUM_FRAMES, DATA.TRAIN_CROP_SIZE, DATA.TRAIN_CROP_SIZE], labels random classes.

Timing: ``warmup`` steps (not timed), then ``repeats`` rounds of ``steps`` steps; each round gives seconds per step
and the MEDIAN round is reported (robust to a stray slow round on a shared machine; the best round is printed
next to it). CUDA is synchronised before each clock read.

Report lines (``key=value``, then what the number is):
  steps_per_s, clips_per_s   from the median round
  peak_mem_mb                CUDA: ``torch.cuda.max_memory_allocated`` over the warm-up and timed steps; CPU: the
                             process's peak resident set (``ru_maxrss``), which also holds Python, torch and whatever
                             ran before
  gflops_per_clip            forward multiply-adds per clip (``dry_run.count_flops``: torch's FlopCounterMode; fvcore's
                             jit trace fails on the masked models), the ViT papers' "FLOPs"
  mfu                        CUDA only: model FLOPs utilisation = 3 x 2 x multiply-adds x clips/s / dense bf16 peak
                             (backward = 2 x forward; recomputation by activation checkpointing is not counted)
"""
import gc
import resource
import time
from dataclasses import dataclass
from statistics import median
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple, Union

import torch
from fvcore.common.config import CfgNode
from torch import nn

from videodiff.engine.compile import compile_model
from videodiff.engine.distributed import DistInfo
from videodiff.engine.dry_run import count_flops
from videodiff.engine.logging import StatsWriter
from videodiff.engine.optim import build_optimizer
from videodiff.engine.precision import precision_from_cfg
from videodiff.engine.train import Trainer
from videodiff.models.build import build_model

# Dense (no sparsity) bf16 tensor-core peaks, FLOP/s, matched in order against torch.cuda.get_device_name
# ("NVIDIA H100 80GB HBM3" is the SXM part). Others: pass --peak-tflops.
PEAK_BF16_FLOPS: Tuple[Tuple[str, float], ...] = (
    ("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("A100", 312e12))

Step = Callable[[], object]


@dataclass(frozen=True)
class BenchOptions:
    """How to time: ``batch`` clips per step (an int, or "auto": the largest of a doubling search from
    ``start_batch`` up to ``max_batch`` that fits), rounds and steps, device, and an optional peak override."""
    batch: Union[int, str, None] = None   # None: 2 on the CPU, 16 on CUDA
    warmup: int = 2
    repeats: int = 3
    steps: int = 5
    device: str = "auto"
    peak_tflops: Optional[float] = None
    start_batch: int = 1
    max_batch: int = 1024


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is visible to torch here")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_batch(cfg: CfgNode, batch: int, device: torch.device) -> dict:
    """{"clip": [B, C, T, S, S] standard normal (the normalised range), "label": [B] random classes}."""
    size = cfg.DATA.TRAIN_CROP_SIZE
    clip = torch.randn(batch, cfg.VIT.IN_CHANNELS, cfg.DATA.NUM_FRAMES, size, size, device=device)
    return {"clip": clip, "label": torch.randint(0, cfg.MODEL.NUM_CLASSES, (batch,), device=device)}


def build_on(cfg: CfgNode, device: torch.device) -> nn.Module:
    """The config's model in train mode on ``device``, initialised there (a ViT-L's init takes seconds on a CPU)."""
    with device:
        model = build_model(cfg)
    return model.to(device).train()


def training_step(cfg: CfgNode, model: nn.Module, batch: dict, device: torch.device) -> Step:
    """``Trainer.step`` on one fixed batch with the config's optimizer, precision, gradient clipping and
    MODEL.COMPILE, as ``engine/build.py`` sets the Trainer up (one micro-batch: TRAIN.ACCUM_STEPS is not applied)."""
    trainer = Trainer(model, [batch], build_optimizer(model, cfg), max_epoch=1, info=DistInfo(device=device),
                      precision=precision_from_cfg(cfg), clip_grad=cfg.SOLVER.CLIP_GRAD,
                      stats=StatsWriter(".", is_main=False, tensorboard=False))  # writes nothing
    if cfg.MODEL.COMPILE:
        trainer.model = compile_model(trainer.model, device, cfg.MODEL.COMPILE_MODE)
    return lambda: trainer.step(batch)


class Rounds(NamedTuple):
    """Seconds per step of each named step, one number per round: wall clock, and this process's CPU time (all its
    threads), which other jobs on a shared CPU disturb far less; on CUDA the CPU time means nothing."""
    wall: Dict[str, List[float]]
    cpu: Dict[str, List[float]]


def time_rounds(steps: Dict[str, Step], device: torch.device, warmup: int, repeats: int, per_round: int) -> Rounds:
    """Time each named step in rounds that interleave the steps and alternate their order (A B, B A, ...), so load
    from other jobs and warm caches fall on every side alike."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    synchronize(device)
    rounds = Rounds({name: [] for name in steps}, {name: [] for name in steps})
    names = list(steps)
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(per_round):
                steps[name]()
            synchronize(device)
            rounds.wall[name].append((time.perf_counter() - wall) / per_round)
            rounds.cpu[name].append((time.process_time() - cpu) / per_round)
    return rounds


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_line(device: torch.device) -> str:
    if device.type == "cuda":
        return (f"peak_mem_mb={torch.cuda.max_memory_allocated(device) / 2**20:.1f}  "
                f"(CUDA max_memory_allocated over the warm-up and timed steps)")
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    return (f"peak_mem_mb={rss_kb / 1024:.1f}  (CPU: peak RSS of this process, ru_maxrss; includes Python, "
            f"torch and everything run before, not the model alone)")


def peak_flops(device: torch.device, override_tflops: Optional[float]) -> Tuple[Optional[float], str]:
    """(dense bf16 peak in FLOP/s, where it came from), or (None, why) on the CPU or an unknown GPU."""
    if override_tflops:
        return override_tflops * 1e12, f"--peak-tflops {override_tflops:g}"
    if device.type != "cuda":
        return None, "CPU"
    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_BF16_FLOPS:
        if key in name:
            return flops, f"{name} dense bf16 peak"
    return None, f"no bf16 peak known for {name!r}; pass --peak-tflops"


def mfu_line(gmacs_per_clip: float, clips_per_s: float, device: torch.device,
             override_tflops: Optional[float]) -> str:
    peak, source = peak_flops(device, override_tflops)
    if peak is None:
        return f"mfu=n/a  ({source})"
    achieved = 3 * 2 * gmacs_per_clip * 1e9 * clips_per_s  # fwd + bwd (2x fwd); 2 FLOPs per multiply-add
    return (f"mfu={achieved / peak:.3g}  (3 x 2 x {gmacs_per_clip:.2f} GMAC x {clips_per_s:.2f} clips/s = "
            f"{achieved / 1e12:.1f} TFLOP/s of {peak / 1e12:.0f}: {source})")


def free_device_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def fits(cfg: CfgNode, model: nn.Module, batch: int, device: torch.device) -> bool:
    """Does a training step at ``batch`` clips run (two steps: the second has the optimizer's state)?"""
    try:
        step = training_step(cfg, model, synthetic_batch(cfg, batch, device), device)
        step()
        step()
        synchronize(device)
        ok = True
    except torch.OutOfMemoryError:
        ok = False
    step = None  # drop the optimizer and the batch before the next try
    model.zero_grad(set_to_none=True)
    free_device_memory(device)
    return ok


def largest_batch(cfg: CfgNode, model: nn.Module, device: torch.device, start: int, cap: int) -> Tuple[int, str]:
    """Doubling search: (the largest of start, 2 start, ... <= cap that fits, how the search ended)."""
    batch, good = start, 0
    while batch <= cap and fits(cfg, model, batch, device):
        good, batch = batch, batch * 2
    if not good:
        raise ValueError(f"a training step at batch {start} does not fit in {device.type} memory")
    ended = f"{batch} ran out of memory" if batch <= cap else f"capped at --max-batch {cap}"
    return good, f"largest of a doubling search from {start} ({ended})"


def choose_batch(cfg: CfgNode, model: nn.Module, device: torch.device, opts: BenchOptions) -> Tuple[int, str]:
    if opts.batch == "auto":
        return largest_batch(cfg, model, device, opts.start_batch, opts.max_batch)
    if opts.batch is None:
        return (16, "default on CUDA") if device.type == "cuda" else (2, "default on the CPU")
    return int(opts.batch), "--batch"


def describe(cfg: CfgNode, model: nn.Module, device: torch.device) -> str:
    params = sum(p.numel() for p in model.parameters()) / 1e6
    where = f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "cpu"
    precision = precision_from_cfg(cfg)
    amp = (f"{precision.dtype} autocast" if device.type == "cuda" and precision.enabled else "fp32")
    switches = "".join(f", {name}" for name, on in (("activation checkpointing", cfg.MODEL.ACT_CHECKPOINT),
                                                     ("torch.compile", cfg.MODEL.COMPILE)) if on)
    return (f"model: {cfg.MODEL.MODEL_NAME}, {params:.2f} M params, clip {cfg.VIT.IN_CHANNELS}x"
            f"{cfg.DATA.NUM_FRAMES}x{cfg.DATA.TRAIN_CROP_SIZE}x{cfg.DATA.TRAIN_CROP_SIZE}, device {where}, {amp}"
            f"{switches}, torch threads {torch.get_num_threads()}")


def run_model_benchmark(cfg: CfgNode, opts: BenchOptions) -> List[str]:
    """Time the config's training step and print (and return) the report lines of the module docstring."""
    device = pick_device(opts.device)
    model = build_on(cfg, device)
    head = describe(cfg, model, device)
    print(head, flush=True)  # before the FLOP count and the batch search, which take a while on big models
    gmacs = count_flops(model, synthetic_batch(cfg, 1, device)["clip"], torch.zeros(1, dtype=torch.long,
                                                                                   device=device))
    batch, why = choose_batch(cfg, model, device, opts)
    step = training_step(cfg, model, synthetic_batch(cfg, batch, device), device)
    reset_peak_memory(device)
    rounds = time_rounds({"step": step}, device, opts.warmup, opts.repeats, opts.steps).wall["step"]
    seconds = median(rounds)
    lines = [head, f"batch={batch}  ({why})",
             f"timing: median of {opts.repeats} rounds x {opts.steps} steps after {opts.warmup} warm-up steps "
             f"(Trainer.step: forward + backward + grad norm + optimizer); best round {min(rounds) * 1e3:.1f} ms/step",
             f"steps_per_s={1 / seconds:.3f}", f"clips_per_s={batch / seconds:.3f}", peak_memory_line(device),
             f"gflops_per_clip={gmacs:.4g}  (forward multiply-adds, torch FlopCounterMode)",
             mfu_line(gmacs, batch / seconds, device, opts.peak_tflops)]
    for line in lines[1:]:
        print(line, flush=True)
    return lines
