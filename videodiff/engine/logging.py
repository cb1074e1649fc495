"""Run logging: a console/file logger, ``json_stats.log`` lines, tensorboard scalars, a progress line.

Only the main rank writes; other ranks log warnings and errors to the console.
"""
import json
import logging
import os
import resource
import sys
import time
from typing import Dict, Optional

import torch

logger = logging.getLogger("videodiff")


def setup_logging(output_dir: str, is_main: bool, to_file: bool = True) -> logging.Logger:
    logger.handlers.clear()
    logger.setLevel(logging.INFO if is_main else logging.WARNING)
    logger.propagate = False
    fmt = logging.Formatter("[%(asctime)s %(levelname)s] %(message)s", datefmt="%m/%d %H:%M:%S")
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(fmt)
    logger.addHandler(console)
    if is_main and to_file:
        os.makedirs(output_dir, exist_ok=True)
        file_handler = logging.FileHandler(os.path.join(output_dir, "log.txt"))
        file_handler.setFormatter(fmt)
        logger.addHandler(file_handler)
    return logger


def log_to_file_only(message: str, level: int = logging.ERROR) -> None:
    """Record ``message`` in log.txt (when the run has one) without printing it again: for the final error line,
    which the console already shows on stderr."""
    record = logger.makeRecord(logger.name, level, __file__, 0, message, None, None)
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def memory_mb(device: torch.device) -> float:
    """Peak memory so far: GPU allocator peak on CUDA, process max RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class StatsWriter:
    """Appends one JSON object per line to ``json_stats.log`` and mirrors numbers to tensorboard."""

    def __init__(self, output_dir: str, is_main: bool, tensorboard: bool):
        self.enabled = is_main
        self.path = os.path.join(output_dir, "json_stats.log")
        if is_main:
            os.makedirs(output_dir, exist_ok=True)
        self.tb = None
        if is_main and tensorboard:
            # Lazily: importing tensorboard takes about a second; runs with TENSORBOARD.ENABLE False skip it.
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(os.path.join(output_dir, "tensorboard"))

    def write(self, stats: Dict, step: Optional[int] = None) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(stats, sort_keys=True) + "\n")
        if self.tb is not None and step is not None:
            split = stats.get("split", "train")
            for key, value in stats.items():
                if isinstance(value, (int, float)) and key not in ("epoch", "iter"):
                    self.tb.add_scalar(f"{split}/{key}", value, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_stats(output_dir: str) -> list:
    """Every line of a run's ``json_stats.log``, parsed."""
    with open(os.path.join(output_dir, "json_stats.log")) as f:
        return [json.loads(line) for line in f if line.strip()]


def final_test_result(output_dir: str) -> dict:
    """The last ``test_final`` line of a run (the multi-view test after training); LookupError if it has none."""
    found = [s for s in read_stats(output_dir) if s.get("split") == "test_final"]
    if not found:
        raise LookupError(f"{output_dir}/json_stats.log has no test_final line: did the run finish its test?")
    return found[-1]


class Timer:
    """Wall time since the last ``lap()``."""

    def __init__(self):
        self.last = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        elapsed, self.last = now - self.last, now
        return elapsed
