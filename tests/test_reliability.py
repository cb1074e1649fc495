"""What real clusters do to a run: signals to the whole process group, full or unwritable disks, a truncated newest
checkpoint, exploding updates, and rerunning into a finished run's folder. Nothing finished is lost, nothing is
silent."""
import os
import random
import signal
import subprocess
import sys

import pytest
import torch

from cli_helpers import CFG, ROOT, logged_steps, opts, read_stats, run_net, start, wait_for

from videodiff.data.demo import make_demo_dataset
from videodiff.engine import checkpoint as ckpt


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("reliability") / "demo")
    make_demo_dataset(out, seed=2, num_train=48, num_val=4, num_test=4)  # 12 steps per epoch at batch 4
    return out


def checkpoints(out):
    folder = ckpt.checkpoint_dir(out)
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


# ---------------------------------------------------------------------------------------------- process groups
@pytest.mark.parametrize("sig, seed", [(signal.SIGTERM, 0), (signal.SIGTERM, 1), (signal.SIGKILL, 3)])
def test_a_signal_to_the_process_group_with_workers_loses_nothing(sig, seed, data_dir, tmp_path):
    """Slurm / Kubernetes / `timeout` signal every process of the job, DataLoader workers included: SIGTERM
    checkpoints and exits 0; after SIGKILL (nothing can be saved) the newest checkpoint is whole. Either way the
    same command finishes the run."""
    out = str(tmp_path / "run")
    extra = ("DATA_LOADER.NUM_WORKERS", "2", "TRAIN.CHECKPOINT_ITER_PERIOD", "5")
    proc = start(opts(data_dir, out, 3, *extra), start_new_session=True)
    target = random.Random(seed).randint(2, 20)  # a random moment (seeds 0, 1, 3: steps 14, 6, 9)
    wait_for(lambda: logged_steps(out) >= target, proc, what=f"{target} logged steps")
    os.killpg(proc.pid, sig)
    stdout, stderr = proc.communicate(timeout=120)
    names = checkpoints(out)
    # SIGKILL may land during a save: its partial .tmp file stays (nothing can remove it) until the next start does
    assert names and (sig == signal.SIGKILL or not [n for n in names if ".tmp" in n])
    state = ckpt.load_state(ckpt.find_latest_checkpoint(out))
    if sig == signal.SIGTERM:
        assert proc.returncode == 0, stderr[-2000:]
        assert "pre-empted by SIGTERM" in stderr and "DataLoader worker" not in stderr
        assert 12 * state["epoch"] + state["iter"] >= target  # saved where it stopped, not at an older point
    run_net(CFG, opts(data_dir, out, 3, *extra))  # the same command finishes the run
    assert "checkpoint_epoch_00003.pyth" in checkpoints(out)
    assert not [n for n in checkpoints(out) if ".tmp" in n]


# ---------------------------------------------------------------------------------------------- where checkpoints go
def test_unwritable_checkpoint_folder_is_refused_before_any_work_and_config_is_untouched(data_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoints").write_text("a file where the checkpoint folder should be")
    (out / "config.yaml").write_text("a finished run's config\n")
    proc = run_net(CFG, opts(data_dir, str(out), 1), check=False)
    assert proc.returncode == 2
    assert f"checkpoints cannot be written to {out / 'checkpoints'}" in proc.stderr
    assert (out / "config.yaml").read_text() == "a finished run's config\n"
    assert "error: checkpoints cannot be written" in (out / "log.txt").read_text()  # the final line is logged too
    assert not os.path.exists(out / "json_stats.log")


def test_partial_files_of_killed_saves_are_removed_at_start_naming_each(data_dir, tmp_path):
    out = tmp_path / "run"
    folder = out / "checkpoints"
    folder.mkdir(parents=True)
    stale = folder / "checkpoint_epoch_00001.pyth.tmp.4242"
    stale.write_bytes(b"\0" * 1000)
    keep = folder / "notes.tmp.txt"  # not ours: never touched
    keep.write_text("x")
    proc = run_net(CFG, opts(data_dir, str(out), 1))
    assert not stale.exists() and keep.exists()
    assert f"removed {stale}: a partial checkpoint left by an interrupted save" in proc.stdout


def test_a_failed_save_removes_its_partial_file_keeps_earlier_ones_and_says_what_it_needs(tmp_path, monkeypatch):
    model = torch.nn.Linear(64, 64)
    first = ckpt.save_checkpoint(str(tmp_path), 1, model)

    def full_disk(state, f):
        f.write(b"\0" * 100)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(ckpt.CheckpointError) as info:
        ckpt.save_checkpoint(str(tmp_path), 2, model)
    message = str(info.value)
    assert message.startswith(f"cannot write checkpoint {ckpt.checkpoint_path(str(tmp_path), 2)}: No space left on "
                              f"device; it needs about 0 MB and ")
    assert "earlier checkpoint kept" in message and "\n" not in message
    assert checkpoints(str(tmp_path)) == ["checkpoint_epoch_00001.pyth"]
    monkeypatch.undo()
    assert ckpt.load_state(first)["epoch"] == 1


@pytest.fixture
def small_disk(tmp_path):
    """A real file system that fills up: a tmpfs mount (needs root and permission to mount)."""
    mount = tmp_path / "disk"
    mount.mkdir()

    def mount_with(size_kb: int) -> str:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(mount)],
                              capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'not root'}); the ENOSPC path is also "
                        f"covered by test_a_failed_save_removes_its_partial_file_keeps_earlier_ones...")
        return str(mount)

    yield mount_with
    subprocess.run(["umount", str(mount)], capture_output=True)


def test_disk_full_during_training_stops_in_one_line_and_loses_nothing(data_dir, tmp_path, small_disk):
    probe = str(tmp_path / "probe")
    run_net(CFG, opts(data_dir, probe, 1))
    size_kb = os.path.getsize(ckpt.checkpoint_path(probe, 1)) // 1024
    out = os.path.join(small_disk(int(size_kb * 1.6) + 64), "run")  # room for one checkpoint and the logs
    proc = run_net(CFG, opts(data_dir, out, 3), check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot write checkpoint {ckpt.checkpoint_path(out, 2)}: No space left on device")
    assert checkpoints(out) == ["checkpoint_epoch_00001.pyth"]  # no partial file, the first one intact
    assert ckpt.load_state(ckpt.checkpoint_path(out, 1))["epoch"] == 1


def test_truncated_newest_checkpoint_falls_back_to_the_one_before_and_is_left_in_place(data_dir, tmp_path):
    out = str(tmp_path / "run")
    run_net(CFG, opts(data_dir, out, 2))
    newest = ckpt.checkpoint_path(out, 2)
    with open(newest, "r+b") as f:
        f.truncate(os.path.getsize(newest) // 3)
    proc = run_net(CFG, opts(data_dir, out, 2, "TRAIN.CHECKPOINT_PERIOD", "5"))  # epoch 2 again, then no new save
    assert f"cannot read checkpoint {newest}: truncated or corrupt" in proc.stdout + proc.stderr
    assert "left in place, trying the checkpoint before it" in proc.stdout + proc.stderr
    assert f"resumed from {ckpt.checkpoint_path(out, 1)}" in proc.stdout
    assert ckpt.load_state(newest)["epoch"] == 2  # epoch 2 was trained again and saved over the broken file


# ---------------------------------------------------------------------------------------------- silent wrong results
def test_exploding_updates_in_skip_mode_stop_instead_of_finishing_with_broken_weights(data_dir, tmp_path):
    out = str(tmp_path / "run")
    proc = run_net(CFG, opts(data_dir, out, 2, "TRAIN.SKIP_NONFINITE_LOSS", "True", "TRAIN.SKIP_NONFINITE_LIMIT", "3",
                             "SOLVER.BASE_LR", "1e36", "SOLVER.WARMUP_EPOCHS", "0.0", "TEST.ENABLE", "True"),
                   check=False)
    assert proc.returncode == 2
    assert "steps before it were skipped too: the weights are likely broken" in proc.stderr
    assert not [s for s in read_stats(out) if s.get("split") == "test_final"]
    assert checkpoints(out) == []  # non-finite weights are never saved


def test_test_of_a_checkpoint_with_non_finite_weights_is_refused(data_dir, tmp_path):
    out = str(tmp_path / "run")
    run_net(CFG, opts(data_dir, out, 1))
    state = ckpt.load_state(ckpt.checkpoint_path(out, 1))
    key = next(iter(state["model"]))
    state["model"][key] = state["model"][key] * float("nan")
    torch.save(state, ckpt.checkpoint_path(out, 1))
    proc = run_net(CFG, opts(data_dir, out, 1, "TRAIN.ENABLE", "False", "TEST.ENABLE", "True"), check=False)
    assert proc.returncode == 2 and "has non-finite weights" in proc.stderr and key in proc.stderr


def test_eval_period_without_a_val_split_says_so_at_start(tmp_path):
    data = tmp_path / "demo"
    make_demo_dataset(str(data), seed=3, num_train=8, num_val=2, num_test=2)
    os.remove(data / "val.csv")
    proc = run_net(CFG, opts(str(data), str(tmp_path / "run"), 1, "TRAIN.EVAL_PERIOD", "1"))
    assert "TRAIN.EVAL_PERIOD = 1 but" in proc.stdout and "has no val split" in proc.stdout


# ---------------------------------------------------------------------------------------------- findable errors
def test_random_bytes_as_a_checkpoint_get_our_message_not_torchs_unsafe_advice(data_dir, tmp_path):
    bad = tmp_path / "weights.pyth"
    bad.write_bytes(os.urandom(4096).replace(b"PK", b"pk").lstrip(b"\x80") or b"x")
    proc = run_net(CFG, opts(data_dir, str(tmp_path / "run"), 1, "TRAIN.CHECKPOINT_FILE_PATH", str(bad)), check=False)
    assert proc.returncode == 2
    assert f"cannot read checkpoint {bad}: not a PyTorch checkpoint" in proc.stderr
    assert "weights_only" not in proc.stderr


def test_runs_print_no_requires_grad_warning(data_dir, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env.pop("PYTHONWARNINGS", None)
    proc = subprocess.run([sys.executable, "tools/run_net.py", "--cfg", CFG, *opts(data_dir, str(tmp_path / "r"), 1)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "requires_grad" not in proc.stderr
