"""Fault injection with real subprocesses and real signals: nothing finished is lost.

Pre-emption (SIGTERM / SIGUSR1 / kill -9), mid-epoch resume, determinism, NaN losses, elastic
restarts under torchrun, bad configs, and unsafe checkpoints / file names.
"""
import os
import signal
import subprocess
import sys

import pytest
import torch

from cli_helpers import (CFG, ROOT, RUNNER, TINY_OPTS, env_for_subprocess, free_port, logged_steps, opts, run_net,
                         start, train_steps, wait_for)

from videodiff.data.demo import make_demo_dataset
from videodiff.engine import checkpoint as ckpt



@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("faults") / "demo")
    make_demo_dataset(out, seed=1, num_train=48, num_val=4, num_test=4)  # 12 steps per epoch at batch 4
    return out


def final_params(out, epoch):
    return torch.load(ckpt.checkpoint_path(out, epoch), weights_only=True)["model"]


def assert_same_params(a, b, tol=1e-5):
    for key in b:
        torch.testing.assert_close(a[key], b[key], rtol=tol, atol=tol, msg=key)


@pytest.fixture(scope="module")
def reference_run(data_dir, tmp_path_factory):
    """An uninterrupted 3-epoch run to compare interrupted ones against."""
    out = str(tmp_path_factory.mktemp("ref") / "run")
    run_net(CFG, opts(data_dir, out, 3))
    return out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_scheduler_signal_checkpoints_mid_epoch_exits_cleanly_and_resume_matches(sig, data_dir, reference_run,
                                                                                 tmp_path):
    out = str(tmp_path / "run")
    proc = start(opts(data_dir, out, 3))
    wait_for(lambda: logged_steps(out) >= 16, proc, what="16 logged steps")  # inside epoch 2
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert f"pre-empted by {sig.name}" in stderr
    newest = ckpt.find_latest_checkpoint(out)
    assert "_iter_" in newest or newest.endswith("00003.pyth")
    stopped_at = len(train_steps(out))

    proc = start(opts(data_dir, out, 3))
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert "resumed from" in stdout
    stats = train_steps(out)
    steps = [(s["epoch"], s["iter"]) for s in stats]
    assert len(steps) == len(set(steps)) == 36, "the resumed epoch repeated or skipped steps"
    reference = {(s["epoch"], s["iter"]): s for s in train_steps(reference_run)}
    for s in stats[stopped_at:]:  # the resumed part reproduces the uninterrupted losses
        assert s["loss"] == pytest.approx(reference[(s["epoch"], s["iter"])]["loss"], rel=1e-4, abs=1e-6)
    assert_same_params(final_params(out, 3), final_params(reference_run, 3))


def test_kill_9_then_same_command_continues_from_newest_complete_checkpoint(data_dir, tmp_path):
    out = str(tmp_path / "run")
    args = opts(data_dir, out, 4)
    proc = start(args)
    wait_for(lambda: os.path.exists(ckpt.checkpoint_path(out, 1)), proc, what="the first checkpoint")
    proc.kill()
    proc.wait()
    newest = ckpt.find_latest_checkpoint(out)
    ckpt.load_state(newest)  # complete and loadable
    proc = start(args)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert f"resumed from {newest}" in stdout
    assert os.path.exists(ckpt.checkpoint_path(out, 4))


def test_kill_during_checkpoint_write_never_leaves_a_corrupt_newest_checkpoint(tmp_path):
    out = str(tmp_path)
    writer = (
        "import sys, torch\n"
        "from torch import nn\n"
        f"sys.path.insert(0, {ROOT!r})\n"
        "from videodiff.engine import checkpoint as ckpt\n"
        "ckpt.save_checkpoint(sys.argv[1], 1, nn.Linear(2, 2))\n"
        "print('first', flush=True)\n"
        "ckpt.save_checkpoint(sys.argv[1], 2, nn.Linear(8192, 8192))  # ~256 MB: slow to write\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", writer, out], env=env_for_subprocess(), stdout=subprocess.PIPE,
                            text=True)
    folder = ckpt.checkpoint_dir(out)
    first = ckpt.checkpoint_path(out, 1)
    wait_for(lambda: os.path.exists(first) and any(".tmp." in n for n in os.listdir(folder)), proc,
             what="the second checkpoint's temporary file")
    proc.kill()
    proc.wait()
    assert not os.path.exists(ckpt.checkpoint_path(out, 2))
    newest = ckpt.find_latest_checkpoint(out)
    assert newest == ckpt.checkpoint_path(out, 1)
    assert "weight" in ckpt.load_state(newest)["model"]


def test_nan_loss_stops_naming_iteration_and_last_checkpoint_and_keeps_checkpoints(data_dir, tmp_path):
    out = str(tmp_path / "run")
    env = dict(env_for_subprocess(), NAN_FROM_STEP="15")  # epoch 2, iteration 3
    proc = start(opts(data_dir, out, 3, "MODEL.MODEL_NAME", "NanAfter"), env)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 2
    last = ckpt.checkpoint_path(out, 1)
    assert "loss is nan at epoch 2 iteration 3" in stderr and last in stderr
    assert os.listdir(ckpt.checkpoint_dir(out)) == ["checkpoint_epoch_00001.pyth"]
    ckpt.load_state(last)


def test_nan_loss_skip_mode_skips_the_bad_steps_and_finishes(data_dir, tmp_path):
    out = str(tmp_path / "run")
    env = dict(env_for_subprocess(), NAN_FROM_STEP="5", NAN_STEPS="3")
    proc = start(opts(data_dir, out, 2, "MODEL.MODEL_NAME", "NanAfter", "TRAIN.SKIP_NONFINITE_LOSS", "True"), env)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert stdout.count("step skipped") == 3
    params = final_params(out, 2)
    assert all(torch.isfinite(v.float()).all() for v in params.values())
    assert all(s["loss"] == s["loss"] for s in train_steps(out))  # no NaN was logged


def test_elastic_restart_after_a_worker_is_killed_resumes_from_the_last_checkpoint(data_dir, tmp_path):
    out = str(tmp_path / "run")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--max-restarts", "1", "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{free_port()}",
           RUNNER, "--cfg", CFG, *opts(data_dir, out, 6)]
    agent = subprocess.Popen(cmd, cwd=ROOT, env=env_for_subprocess(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: os.path.exists(ckpt.checkpoint_path(out, 1)), agent, timeout=180, what="the first checkpoint")
    workers = subprocess.run(["pgrep", "-P", str(agent.pid)], capture_output=True, text=True).stdout.split()
    assert len(workers) == 2, workers
    os.kill(int(workers[1]), signal.SIGKILL)
    output, _ = agent.communicate(timeout=300)
    assert agent.returncode == 0, output[-6000:]
    assert "resumed from" in output
    assert os.path.exists(ckpt.checkpoint_path(out, 6))
    epochs = [s["epoch"] for s in train_steps(out)]
    assert max(epochs) == 6


@pytest.mark.parametrize("extra, message", [
    (["DATA.TRAIN_CROP_SIZE", "36"], "DATA.TRAIN_CROP_SIZE (from command line) = 36 is not divisible by VIT.PATCH_SIZE"),
    (["DATA.NUM_FRAMES", "5"], "DATA.NUM_FRAMES (from command line) = 5 is not divisible by VIT.TEMPORAL_PATCH_SIZE"),
    (["MASK.RATIO", "1.0"], "MASK.RATIO"),
    (["DIFFMAE.DECODER_DEPTH", "0"], "DIFFMAE.DECODER_DEPTH"),
    (["DATA.PATH_TO_DATA_DIR", "/no/such/folder"], "DATA.PATH_TO_DATA_DIR = '/no/such/folder' is not a folder"),
    (["OUTPUT_DIR", "__FILE__/out"], "cannot be written"),
    (["TRAIN.BATCH_SIZE", "3"], "TRAIN.BATCH_SIZE = 3 is not divisible by the world size 2"),
])
def test_bad_configs_are_refused_before_any_work(extra, message, data_dir, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    out = tmp_path / "out"
    extra = [str(blocker) + "/out" if e == "__FILE__/out" else e for e in extra]
    args = [*opts(data_dir, str(out), 1), *extra]
    env = dict(env_for_subprocess(), WORLD_SIZE="2", RANK="0", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(free_port())) if "world size" in message else None
    proc = start(args, env)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, last
    assert not (out / "checkpoints").exists()


def test_pickled_checkpoint_is_refused_unless_explicitly_trusted(data_dir, tmp_path):
    from videodiff.config import load_config
    from videodiff.models.build import build_model

    cfg = load_config(CFG, TINY_OPTS)
    legacy = str(tmp_path / "legacy.pyth")
    torch.save({"model": build_model(cfg).state_dict(), "note": os.getcwd}, legacy)  # pickles a function
    args = opts(data_dir, str(tmp_path / "out"), 1, "TRAIN.CHECKPOINT_FILE_PATH", legacy)
    proc = start(args)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "cannot read checkpoint" in stderr and "legacy.pyth" in stderr
    proc = start(args + ["TRAIN.CHECKPOINT_WEIGHTS_ONLY", "False", "OUTPUT_DIR", str(tmp_path / "out2")])
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert f"initialised from {legacy}" in stdout


def test_file_names_from_csv_never_reach_a_shell(data_dir, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    evil = "videos/train/x; touch PWNED $(touch PWNED2).mp4"
    shutil.copy(data / "videos/train/train_00000.mp4", data / evil)
    lines = (data / "train.csv").read_text().splitlines()
    (data / "train.csv").write_text("\n".join([f"{evil},1"] + [l.replace(" ", ",") for l in lines]) + "\n")
    run_net(CFG, [*opts(str(data), str(tmp_path / "out"), 1), "DATA.PATH_LABEL_SEPARATOR", ","])
    assert not list(tmp_path.rglob("PWNED*")) and not os.path.exists(os.path.join(ROOT, "PWNED"))
    assert not os.path.exists(os.path.join(ROOT, "PWNED2"))


def test_same_seed_and_world_size_give_the_same_losses(data_dir, reference_run, tmp_path):
    out = str(tmp_path / "again")
    run_net(CFG, opts(data_dir, out, 3))
    again = [(s["epoch"], s["iter"], s["loss"]) for s in train_steps(out)]
    first = [(s["epoch"], s["iter"], s["loss"]) for s in train_steps(reference_run)]
    assert again == first  # bit-identical on one CPU process
    assert_same_params(final_params(out, 3), final_params(reference_run, 3), tol=0)


def test_iteration_checkpoints_are_written_and_a_kill_resumes_from_the_newest(data_dir, tmp_path):
    out = str(tmp_path / "run")
    args = opts(data_dir, out, 2, "TRAIN.CHECKPOINT_ITER_PERIOD", "5")
    proc = start(args)
    mid = ckpt.checkpoint_path(out, 1, 5)  # epoch 2, after 5 of its 12 steps
    wait_for(lambda: os.path.exists(mid), proc, what="a mid-epoch checkpoint")
    proc.kill()
    proc.wait()
    newest = ckpt.find_latest_checkpoint(out)
    proc = start(args)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert f"resumed from {newest}" in stdout
    names = sorted(os.listdir(ckpt.checkpoint_dir(out)))
    assert {"checkpoint_epoch_00000_iter_000005.pyth", "checkpoint_epoch_00000_iter_000010.pyth",
            "checkpoint_epoch_00001.pyth", "checkpoint_epoch_00001_iter_000005.pyth",
            "checkpoint_epoch_00001_iter_000010.pyth", "checkpoint_epoch_00002.pyth"} <= set(names)
    steps = [(s["epoch"], s["iter"]) for s in train_steps(out)]
    assert sorted(set(steps)) == [(e, i) for e in (1, 2) for i in range(1, 13)]
