"""The entry point end to end on real mp4 files: train -> checkpoints -> auto-resume -> test; errors."""
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from cli_helpers import ROOT, TINY_OPTS, env_for_subprocess, free_port, make_tiny_demo, read_stats, run_net

CFG = "configs/demo/vit_tiny_supervised.yaml"


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    return make_tiny_demo(tmp_path_factory.mktemp("data"))


def opts_for(demo_dir, out, epochs, extra=()):
    return TINY_OPTS + ["DATA.PATH_TO_DATA_DIR", demo_dir, "OUTPUT_DIR", out, "SOLVER.MAX_EPOCH", str(epochs),
                        *extra]


def test_train_writes_config_checkpoints_stats_and_test_line(demo_dir, tmp_path):
    out = str(tmp_path / "run")
    run_net(CFG, opts_for(demo_dir, out, 2, ["TEST.NUM_ENSEMBLE_VIEWS", "2", "TEST.NUM_SPATIAL_CROPS", "3"]))
    assert os.path.isfile(os.path.join(out, "config.yaml"))
    assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == [
        "checkpoint_epoch_00001.pyth", "checkpoint_epoch_00002.pyth"]
    stats = read_stats(out)
    train_lines = [s for s in stats if s["split"] == "train"]
    assert {"epoch", "iter", "loss", "lr", "data_time", "step_time", "eta", "mem_mb"} <= set(train_lines[0])
    final = [s for s in stats if s["split"] == "test_final"]
    assert len(final) == 1
    assert final[0]["num_videos"] == 4 and final[0]["views_per_video_min"] == 6
    assert final[0]["views_per_video_expected"] == 6 and 0 <= final[0]["top1_acc"] <= 100


def test_auto_resume_continues_at_the_right_epoch_and_learning_rate(demo_dir, tmp_path):
    full = str(tmp_path / "full")
    run_net(CFG, opts_for(demo_dir, full, 3, ["TEST.ENABLE", "False"]))
    # Simulate a run killed after epoch 2: its folder holds checkpoints 1-2 and the stats of epochs 1-2.
    cut = str(tmp_path / "cut")
    shutil.copytree(full, cut)
    os.remove(os.path.join(cut, "checkpoints", "checkpoint_epoch_00003.pyth"))
    kept = [line for line in open(os.path.join(cut, "json_stats.log")) if '"epoch": 3' not in line]
    open(os.path.join(cut, "json_stats.log"), "w").writelines(kept)

    proc = run_net(CFG, opts_for(demo_dir, cut, 3, ["TEST.ENABLE", "False"]))
    assert "continuing at epoch 3" in proc.stdout
    resumed = [s for s in read_stats(cut) if s["epoch"] == 3]
    assert resumed, "the resumed run logged nothing for epoch 3"
    reference = [s for s in read_stats(full) if s["epoch"] == 3]
    assert [s["iter"] for s in resumed] == [s["iter"] for s in reference]
    for a, b in zip(resumed, reference):
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-12)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-5)  # same data order, same weights
    final_a = torch.load(os.path.join(cut, "checkpoints", "checkpoint_epoch_00003.pyth"), weights_only=True)
    final_b = torch.load(os.path.join(full, "checkpoints", "checkpoint_epoch_00003.pyth"), weights_only=True)
    for key in final_b["model"]:
        torch.testing.assert_close(final_a["model"][key], final_b["model"][key], rtol=1e-4, atol=1e-5)


def test_malformed_csv_lines_stop_the_run_with_their_line_numbers(demo_dir, tmp_path):
    data = str(tmp_path / "data")
    shutil.copytree(demo_dir, data)
    lines = open(os.path.join(data, "train.csv")).read().splitlines()
    lines[2] = "videos/train/train_00002.mp4"  # no label
    lines[5] = lines[5].split(" ")[0] + " seven"
    open(os.path.join(data, "train.csv"), "w").write("\n".join(lines) + "\n")
    proc = run_net(CFG, opts_for(data, str(tmp_path / "out"), 1), check=False)
    assert proc.returncode == 2
    assert "train.csv" in proc.stderr and "line 3" in proc.stderr and "line 6" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_config_key_fails_before_any_work(tmp_path):
    out = tmp_path / "never"
    proc = run_net(CFG, ["SOLVER.BASE_LRR", "0.1", "OUTPUT_DIR", str(out)], check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: unknown config key SOLVER.BASE_LRR")
    assert not out.exists()


def test_two_process_torchrun_leaves_identical_parameters(demo_dir, tmp_path):
    out = str(tmp_path / "ddp")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{free_port()}",
           os.path.join(ROOT, "tests", "ddp_worker.py"), "--cfg", CFG,
           *opts_for(demo_dir, out, 2, ["TEST.ENABLE", "False"])]
    proc = subprocess.run(cmd, cwd=ROOT, env=env_for_subprocess(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rank0 = torch.load(os.path.join(out, "params_rank0.pt"), weights_only=True)
    rank1 = torch.load(os.path.join(out, "params_rank1.pt"), weights_only=True)
    initial = torch.load(os.path.join(out, "checkpoints", "checkpoint_epoch_00001.pyth"), weights_only=True)
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    assert any(not torch.equal(rank0[k], initial["model"][k]) for k in rank0)  # epoch 2 trained


@pytest.mark.parametrize("cfg", ["configs/demo/diffmae_tiny.yaml", "configs/demo/mae_tiny.yaml", CFG])
def test_dry_run_counts_parameters_and_flops_without_data(cfg, tmp_path):
    proc = run_net(cfg, ["TRAIN.DRY_RUN", "True", "DATA.PATH_TO_DATA_DIR", "/nowhere", "OUTPUT_DIR", str(tmp_path)])
    line = [l for l in proc.stdout.splitlines() if "dry run:" in l][-1]
    params = float(re.search(r"params_M ([\d.]+)", line).group(1))
    gflops = float(re.search(r"gflops_per_clip ([\d.]+)", line).group(1))
    assert params > 0.1 and gflops > 0.01
    assert not os.path.exists(os.path.join(tmp_path, "checkpoints"))
