"""Helpers for tests that run the real entry point in subprocesses on a tiny demo set."""
import os
import socket
import subprocess
import sys
import time

from videodiff.engine.logging import read_stats  # noqa: F401  (the tests read run logs as the tools do)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_NET = os.path.join(ROOT, "tools", "run_net.py")
RUNNER = os.path.join(ROOT, "tests", "fault_runner.py")  # run_net plus test-only models
CFG = "configs/demo/vit_tiny_supervised.yaml"

# A model and clip small enough that an epoch takes about a second on one CPU core.
TINY_OPTS = [
    "VIT.EMBED_DIM", "32", "VIT.DEPTH", "1", "VIT.NUM_HEADS", "2", "VIT.PATCH_SIZE", "8",
    "DATA.NUM_FRAMES", "4", "DATA.SAMPLING_RATE", "2", "DATA.TRAIN_CROP_SIZE", "32", "DATA.TEST_CROP_SIZE", "32",
    "TRAIN.BATCH_SIZE", "4", "TEST.BATCH_SIZE", "4", "DATA_LOADER.NUM_WORKERS", "0", "TENSORBOARD.ENABLE", "False",
    "LOG_PERIOD", "1", "SOLVER.WARMUP_EPOCHS", "1.0", "SOLVER.BASE_LR", "1e-2",
]


def opts(data_dir, out, epochs, *extra):
    """TINY_OPTS for a run of ``epochs`` epochs on ``data_dir`` into ``out``, without the final test."""
    return [*TINY_OPTS, "DATA.PATH_TO_DATA_DIR", data_dir, "OUTPUT_DIR", out, "SOLVER.MAX_EPOCH", str(epochs),
            "TEST.ENABLE", "False", *map(str, extra)]


def make_tiny_demo(root) -> str:
    from videodiff.data.demo import make_demo_dataset

    out = os.path.join(str(root), "demo")
    make_demo_dataset(out, seed=0, num_train=12, num_val=4, num_test=4)
    return out


def env_for_subprocess() -> dict:
    env = dict(os.environ, PYTHONWARNINGS="ignore", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    return env


def run_net(cfg: str, opts, check: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, RUN_NET, "--cfg", cfg, *map(str, opts)], cwd=ROOT,
                          env=env_for_subprocess(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"run_net failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args, env=None, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, RUNNER, "--cfg", CFG, *args], cwd=ROOT, env=env or env_for_subprocess(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def wait_for(predicate, proc=None, timeout=120.0, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended before {what}: {proc.communicate()}")
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def logged_steps(out) -> int:
    path = os.path.join(out, "json_stats.log")
    return len(train_steps(out)) if os.path.exists(path) else 0


def train_steps(out):
    """The per-step training lines of json_stats.log (other lines: validation, epoch summaries)."""
    return [s for s in read_stats(out) if s.get("split") == "train" and "iter" in s]
