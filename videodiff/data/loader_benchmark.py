"""Training-loader benchmark: the full loader against the decode floor, on the same videos and frames.

(a) loader: ``build_loader(cfg, "train")`` as training uses it (workers, decode, transforms, collate, and each
    batch's clip normalised on the training device, ``normalize.py``), in clips/s and original samples/s
    (clips / AUG.NUM_SAMPLE).
(b) decode floor: each sample's frame indices (the union of its R windows, drawn exactly as the loader drew
    them) decoded by the backend library itself, nothing else, in as many processes as the loader has workers.
(c) the same floor for every backend (those that cannot run here say why).
(d) where the loader's CPU goes: each stage of an item timed in this process (``loader_stages.py``).
With R = AUG.NUM_SAMPLE > 1, two ways of "decoding R times" for comparison: the floor of decoding each of the R
windows on its own, and the same loader with every clip decoding its own window (``shared_decode`` off).

Worker and decoding processes start before the clock, as in training (persistent workers). Quantities are
measured in alternating rounds and the best of each kept, which filters out other jobs on a shared machine;
between measurements the loader's workers finish their prefetched batches off the clock (``wait_until_idle``).
Next to wall-clock rates the report gives CPU milliseconds per sample (this process and its children, from
/proc), which other jobs disturb much less. ``loader_vs_floor`` = (a) / (b), wall clock, per original sample.
"""
import os
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch

from videodiff.data.decode_floor import Decoders, floor_jobs
from videodiff.data.decoding import BACKENDS, backend_problem, open_video
from videodiff.data.loader import build_loader, set_loader_epoch
from videodiff.data.loader_stages import stage_costs, stage_line
from videodiff.data.normalize import ClipNormalizer

Timing = Tuple[float, float]  # (wall seconds, CPU seconds)


def sample_plan(loader, num_samples: int) -> List[Tuple[str, List[List[int]]]]:
    """``(path, R windows)`` of the loader's first ``num_samples`` epoch-0 samples, as its items draw them."""
    dataset = loader.dataset
    set_loader_epoch(loader, 0)
    plan = []
    for index in list(loader.sampler)[:num_samples]:
        path, _ = dataset.videos[index]
        with open_video(path, dataset.backend) as video:
            plan.append((path, dataset.train_windows(video, dataset.rng.generator(index))))
    return plan


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and its live children, from /proc; 0.0 where there is none."""
    total, me, tick = 0.0, str(os.getpid()), os.sysconf("SC_CLK_TCK")
    for pid in os.listdir("/proc") if os.path.isdir("/proc") else ():
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # not a process, or it ended meanwhile
        if pid == me or fields[1] == me:  # fields[1]: the parent's pid
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def timed(run: Callable[[], None]) -> Timing:
    """(wall, CPU) seconds of ``run``; then, off the clock, waits until the worker processes are idle."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    run()
    timing = time.perf_counter() - wall, cpu_seconds() - cpu
    wait_until_idle()
    return timing


def wait_until_idle(poll_s: float = 0.2, timeout_s: float = 60.0) -> None:
    """Return once this process and its children use under a tenth of a core for ``poll_s``.

    A loader that stops after its timed batches still has ``PREFETCH_FACTOR x NUM_WORKERS`` batches in flight; its
    workers finish them in the background, which slowed the next measurement (the decode floor: measured 64-76
    instead of 209-238 samples/s on 16x224x224 clips) and put their CPU time into it.
    """
    deadline, last = time.perf_counter() + timeout_s, cpu_seconds()
    while time.perf_counter() < deadline:
        time.sleep(poll_s)
        now = cpu_seconds()
        if now - last < 0.1 * poll_s:
            return
        last = now


def warm_up(loader, num_batches: int = 2) -> None:
    """Start the loader's persistent workers (and fill page caches) before anything is timed."""
    set_loader_epoch(loader, 0)
    for i, _ in enumerate(loader):
        if i + 1 >= num_batches:
            break


def run_loader(loader, num_batches: int, handover: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> None:
    """The first ``num_batches`` epoch-0 batches of a warmed-up loader, each clip passed to ``handover``."""
    set_loader_epoch(loader, 0)
    for i, batch in enumerate(loader):  # iter() resumes the persistent workers: no prefetch before the clock
        if handover is not None:
            handover(batch["clip"])
        if i + 1 == num_batches:
            break
    if torch.cuda.is_available():
        torch.cuda.synchronize()  # the device's normalisation is part of the time


def training_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_handover(cfg) -> Callable[[torch.Tensor], torch.Tensor]:
    """What training does with each batch's clip: copy it to the device (GPU when there is one), normalise it."""
    device, normalize = training_device(), ClipNormalizer.from_cfg(cfg)
    return lambda clip: normalize(clip, device)


def best(measure: Callable[[], None], repeats: int) -> Timing:
    """Smallest wall and smallest CPU time over ``repeats`` runs."""
    runs = [timed(measure) for _ in range(repeats)]
    return min(r[0] for r in runs), min(r[1] for r in runs)


def machine() -> str:
    model = ""
    if os.path.isfile("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cores} CPU cores{f' ({model})' if model else ''}"


def run_data_benchmark(cfg, num_batches: int, repeats: int = 3, log: Callable[[str], None] = print) -> dict:
    """Measure (a), (b), (c) as the module docstring says; log a report whose last line is ``loader_vs_floor=``."""
    loader, handover = build_loader(cfg, "train"), device_handover(cfg)
    num_batches = min(num_batches, len(loader))
    plan = sample_plan(loader, num_batches * loader.batch_size)
    processes, backend = max(cfg.DATA_LOADER.NUM_WORKERS, 1), cfg.DATA.DECODING_BACKEND
    _log_setup(cfg, loader, num_batches, len(plan), repeats, log)
    decoders = Decoders(processes)
    try:
        warm_up(loader)
        jobs = floor_jobs(plan, backend)
        rounds = [(timed(lambda: run_loader(loader, num_batches, handover)), timed(lambda: decoders.run(jobs)))
                  for _ in range(repeats)]  # alternating, so other jobs' load hits both alike
        result = {"R": cfg.AUG.NUM_SAMPLE, "samples": len(plan)}
        result["loader"] = _rates(min(r[0][0] for r in rounds), min(r[0][1] for r in rounds), len(plan))
        result["floor"] = _rates(min(r[1][0] for r in rounds), min(r[1][1] for r in rounds), len(plan))
        log(f"(a) loader: {result['loader']['samples_per_s'] * result['R']:.2f} clips/s = " + _line(result["loader"]))
        log(f"(b) decode floor ({backend} alone, same frame indices, {processes} process(es)): "
            + _line(result["floor"]))
        result["backends"] = _backend_floors(plan, decoders, repeats, log)
        result["stages"] = stage_costs(loader.dataset, plan, ClipNormalizer.from_cfg(cfg), training_device())
        log(stage_line(result["stages"], result["loader"]["cpu_ms"], result["R"]))
        if result["R"] > 1:
            result.update(_repeated_aug(cfg, plan, decoders, num_batches, repeats, result, log))
    finally:
        decoders.close()
    result["loader_vs_floor"] = result["loader"]["samples_per_s"] / result["floor"]["samples_per_s"]
    result["loader_vs_floor_cpu"] = result["floor"]["cpu_ms"] / result["loader"]["cpu_ms"]
    log(f"same ratio in CPU time per sample (less disturbed by other jobs): {result['loader_vs_floor_cpu']:.3f}")
    log(f"loader_vs_floor={result['loader_vs_floor']:.3f}")
    return result


def _rates(wall: float, cpu: float, samples: int) -> Dict[str, float]:
    return {"samples_per_s": samples / wall, "cpu_ms": 1000 * cpu / samples}


def _line(rates: Dict[str, float]) -> str:
    return f"{rates['samples_per_s']:.2f} original samples/s, {rates['cpu_ms']:.1f} CPU ms/sample"


def _log_setup(cfg, loader, num_batches: int, samples: int, repeats: int, log) -> None:
    d = cfg.DATA
    log(f"machine: {machine()}")
    o = cfg.DATA_LOADER
    log(f"setup: backend {d.DECODING_BACKEND}, AUG.NUM_SAMPLE R={cfg.AUG.NUM_SAMPLE}, {num_batches} batches x "
        f"{loader.batch_size} videos = {samples} samples, {o.NUM_WORKERS} workers, {d.NUM_FRAMES} "
        f"frames every {d.SAMPLING_RATE}, crop {d.TRAIN_CROP_SIZE}, RandAug {cfg.AUG.RAND_AUG or 'off'}; handover "
        f"{'uint8, normalised on the device' if o.UINT8_HANDOVER else 'float32, normalised by the workers'}, "
        f"prefetch {o.PREFETCH_FACTOR}; best of {repeats} alternating rounds; workers and decoding processes "
        f"started before the clock")


def _backend_floors(plan, decoders: Decoders, repeats: int, log) -> Dict[str, Dict[str, float]]:
    """(c): each backend's floor on the same indices; those that cannot run here say why."""
    floors = {}
    for backend in BACKENDS:
        problem = backend_problem(backend)
        if problem:
            log(f"(c) {backend}: not measured: {problem}")
            continue
        jobs = floor_jobs(plan, backend)
        floors[backend] = _rates(*best(lambda: decoders.run(jobs), repeats), len(plan))
        log(f"(c) {backend} decode floor: " + _line(floors[backend]))
    return floors


def _repeated_aug(cfg, plan, decoders: Decoders, num_batches: int, repeats: int, result: dict, log) -> dict:
    """Two ways of decoding R times: the bare decodes of each window, and the loader re-decoding per clip."""
    r, samples = result["R"], len(plan)
    jobs = floor_jobs(plan, cfg.DATA.DECODING_BACKEND, separate_windows=True)
    separate = _rates(*best(lambda: decoders.run(jobs), repeats), samples)
    naive_loader = build_loader(cfg, "train")
    naive_loader.dataset.shared_decode = False  # before its workers start, so they inherit it
    warm_up(naive_loader)
    naive = _rates(*best(lambda: run_loader(naive_loader, num_batches, device_handover(cfg)), repeats), samples)
    loader = result["loader"]
    log(f"decoding the R={r} windows separately (floor): " + _line(separate)
        + f" -> the loader is {loader['samples_per_s'] / separate['samples_per_s']:.2f}x that")
    log("the same loader decoding once per clip: " + _line(naive)
        + f" -> sharing one decode is {loader['samples_per_s'] / naive['samples_per_s']:.2f}x faster")
    return {"decode_r_times": separate, "loader_decoding_per_clip": naive}
