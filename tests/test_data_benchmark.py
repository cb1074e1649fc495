"""tools/benchmark.py data: one run reports the loader, the decode floor and every backend on the same frames,
and ends with ``loader_vs_floor=<ratio>``."""
import re
import subprocess
import sys

import torch

from cli_helpers import ROOT, env_for_subprocess, make_tiny_demo
from test_data import IDENTITY, write_csv
from test_data_decoding import textured_ramp
from videodiff.data.kinetics import KineticsDataset
from videodiff.data.transforms import TrainTransform

BENCHMARK = f"{ROOT}/tools/benchmark.py"


def test_data_benchmark_reports_loader_floor_backends_and_ends_with_the_ratio(tmp_path):
    data = make_tiny_demo(tmp_path)
    cmd = [sys.executable, BENCHMARK, "data", "--cfg", "configs/demo/base.yaml", "--batches", "2", "--repeats", "1",
           "DATA.PATH_TO_DATA_DIR", data, "TRAIN.BATCH_SIZE", "4", "DATA_LOADER.NUM_WORKERS", "1",
           "AUG.NUM_SAMPLE", "2"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env_for_subprocess(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert re.fullmatch(r"loader_vs_floor=\d+\.\d{3}", lines[-1])
    text = proc.stdout
    assert "(a) loader:" in text and "clips/s" in text and "(b) decode floor (decord alone" in text
    assert all(f"(c) {name}" in text for name in ("decord", "pyav", "torchcodec"))
    assert "decoding the R=2 windows separately" in text and "decoding once per clip" in text
    # (d): every stage of an item timed on its own, and what they leave of the loader's CPU for the hand-over
    stages = re.search(r"\(d\) stages in one process, CPU ms per original sample \(2 clip\(s\)\): open ([\d.]+), "
                       r"decode ([\d.]+), transform ([\d.]+), normalise ([\d.]+); the loader's ([\d.]+) leaves "
                       r"(-?[\d.]+) for the hand-over", text)
    assert stages, text
    open_ms, decode_ms, transform_ms, normalise_ms, loader_ms, rest_ms = map(float, stages.groups())
    assert decode_ms > 0 and transform_ms > 0 and loader_ms > 0
    assert abs(open_ms + decode_ms + transform_ms + normalise_ms + rest_ms - loader_ms) < 0.5


def test_benchmark_help_shows_an_example():
    proc = subprocess.run([sys.executable, BENCHMARK, "data", "--help"], cwd=ROOT, env=env_for_subprocess(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "Example: python tools/benchmark.py data --cfg" in proc.stdout


def test_clips_cut_from_the_shared_decode_equal_clips_decoded_on_their_own(tmp_path):
    csv = write_csv(tmp_path, "train.csv", [f"{textured_ramp(tmp_path / 'a.mp4')} 0"])  # texture: crops differ
    dataset = KineticsDataset(csv, "train", 4, 2, TrainTransform(16, **IDENTITY), num_repeats=3)
    shared = dataset[0]["clip"]
    dataset.shared_decode = False  # the benchmark's naive loader: one decode per clip
    torch.testing.assert_close(dataset[0]["clip"], shared)
