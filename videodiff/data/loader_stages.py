"""Where a training loader's CPU time goes, stage by stage: (d) of the data benchmark (``loader_benchmark.py``).

The loader's cost over the decode floor is the sum of what it does besides decoding. This times each stage of a
train item in this process, one thread (as in a DataLoader worker), on the benchmark's own samples and windows:
opening the file, decoding the union of the R windows (what the floor does), cropping, resizing and flipping the
R clips (the transform, uint8 or float as configured), and normalising them where training does (``normalize.py``:
on the device; with no GPU that is this CPU, in the main process). What the stages leave of the loader's CPU per
sample is the hand-over: collate into shared memory, receiving the batch, pinning.
"""
import time
from typing import Dict, List, Sequence, Tuple

import torch

from videodiff.data.decoding import open_video
from videodiff.data.kinetics import rows_in_union
from videodiff.data.normalize import ClipNormalizer

STAGES = ("open", "decode", "transform", "normalise")


def stage_costs(dataset, plan: Sequence[Tuple[str, List[List[int]]]], normalizer: ClipNormalizer,
                device: torch.device, repeats: int = 2) -> Dict[str, float]:
    """CPU ms per original sample of each stage in ``STAGES``, the smallest over ``repeats`` passes of ``plan``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        passes = [_one_pass(dataset, plan, normalizer, device) for _ in range(repeats)]
    finally:
        torch.set_num_threads(threads)
    return {stage: min(p[stage] for p in passes) * 1000 / len(plan) for stage in STAGES}


def _one_pass(dataset, plan, normalizer: ClipNormalizer, device: torch.device) -> Dict[str, float]:
    spent = dict.fromkeys(STAGES, 0.0)
    rng = torch.Generator().manual_seed(0)  # crop boxes only: their cost, not their values, is measured
    for path, windows in plan:
        tick = time.process_time()
        with open_video(path, dataset.backend) as video:
            opened = time.process_time()
            union = sorted(set().union(*windows))
            frames = video.decode(union)
        decoded = time.process_time()
        clips = [dataset.transform(frames, rng, rows=rows_in_union(union, window)) for window in windows]
        transformed = time.process_time()
        for clip in clips:
            normalizer(clip, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        marks = (tick, opened, decoded, transformed, time.process_time())  # the bounds of the STAGES, in order
        for stage, start, end in zip(STAGES, marks, marks[1:]):
            spent[stage] += end - start
    return spent


def stage_line(costs: Dict[str, float], loader_cpu_ms: float, r: int) -> str:
    """One report line: each stage's CPU ms per sample, and what the stages leave of the loader's CPU."""
    parts = ", ".join(f"{stage} {costs[stage]:.1f}" for stage in STAGES)
    rest = loader_cpu_ms - sum(costs.values())
    return (f"(d) stages in one process, CPU ms per original sample ({r} clip(s)): {parts}; the loader's "
            f"{loader_cpu_ms:.1f} leaves {rest:.1f} for the hand-over (collate, shared memory, receiving)")
