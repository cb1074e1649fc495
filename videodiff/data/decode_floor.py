"""The decode floor: frame indices decoded by each library directly, with nothing of ours around it.

The loader benchmark (``loader_benchmark.py``) compares the training loader against this. Each raw decoder uses
the settings our backends use (one decoding thread) and leaves the frames in the library's own buffers
(decord's NDArray, torchcodec's tensor, PyAV's arrays): decoding, and nothing else.
"""
import multiprocessing
from typing import Callable, Dict, List, Tuple

import av
import decord

from videodiff.data.worker_memory import keep_freed_memory

Job = Tuple[str, str, List[int]]  # (backend, path, frame indices)


def _decode_decord(path: str, indices: List[int]):
    return decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1).get_batch(indices)


def _decode_pyav(path: str, indices: List[int]):
    """PyAV has no frame-index API: the plain loop decodes from the start to the last wanted frame."""
    wanted, last, found = set(indices), max(indices), {}
    with av.open(path) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in wanted:
                found[i] = frame.to_ndarray(format="rgb24")
            if i >= last:
                break
    return [found[i] for i in indices]


def _decode_torchcodec(path: str, indices: List[int]):
    from torchcodec.decoders import VideoDecoder  # lazily: optional, and needs the system FFmpeg (INSTALL.md)

    decoder = VideoDecoder(path, dimension_order="NHWC", num_ffmpeg_threads=1, seek_mode="exact")
    return decoder.get_frames_at(indices).data


RAW_DECODERS: Dict[str, Callable[[str, List[int]], object]] = {
    "decord": _decode_decord, "pyav": _decode_pyav, "torchcodec": _decode_torchcodec}


def _run_job(job: Job) -> None:
    backend, path, indices = job
    RAW_DECODERS[backend](path, indices)


def floor_jobs(plan, backend: str, separate_windows: bool = False) -> List[Job]:
    """One job per sample (the union of its windows), or one per window with ``separate_windows``."""
    if separate_windows:
        return [(backend, path, window) for path, windows in plan for window in windows]
    return [(backend, path, sorted(set().union(*windows))) for path, windows in plan]


class Decoders:
    """``processes`` forked decoding processes, started before timing (like the loader's workers);
    with ``processes`` <= 1 jobs run in this process, like a loader without workers."""

    def __init__(self, processes: int):
        self.processes = processes
        # Same malloc settings as loader workers (worker_memory.py), so only our own work differs.
        self.pool = (multiprocessing.get_context("fork").Pool(processes, initializer=keep_freed_memory)
                     if processes > 1 else None)

    def run(self, jobs: List[Job]) -> None:
        if self.pool is None:
            for job in jobs:
                _run_job(job)
        else:
            # About 8 chunks per process: little hand-over cost per job, yet balanced when costs differ.
            self.pool.map(_run_job, jobs, chunksize=max(1, len(jobs) // (8 * self.processes)))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
