"""tools/run_demo.py: every stage of `make demo` end to end at test size (--quick), and its table and plot."""
import json
import os
import subprocess
import sys

from cli_helpers import ROOT, env_for_subprocess, read_stats

sys.path.insert(0, os.path.join(ROOT, "tools"))
import run_demo  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _summary(k=5):
    return {"labels_per_class": k, "seed": 0, "num_train": 400, "pretrain_steps": 100, "loss_steps": [5, 10, 100],
            "losses": [0.9, 0.5, 0.2], "times_s": {}, "num_test": 100, "views": 2,
            "top1": {"finetune": {"pretrained": 61.0, "scratch": 40.0}, "probe": {"pretrained": 50.0, "scratch": 30.0}},
            "top5": {"finetune": {"pretrained": 95.0, "scratch": 80.0}, "probe": {"pretrained": 90.0, "scratch": 70.0}}}


def test_table_puts_both_inits_side_by_side_with_the_gap():
    text = run_demo.table(_summary())
    assert "5 labelled clips per class (50 of 400)" in text
    finetune = next(line for line in text.splitlines() if line.startswith("fine-tuning"))
    assert finetune.split() == ["fine-tuning", "61", "(95)", "40", "(80)", "+21"]


def test_plot_writes_a_png(tmp_path):
    path = str(tmp_path / "summary.png")
    run_demo.plot(_summary(), path)
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC


def test_quick_demo_runs_every_stage_and_reports_both_inits(tmp_path):
    out, data = str(tmp_path / "out"), str(tmp_path / "data")
    proc = subprocess.run([sys.executable, "tools/run_demo.py", "--quick", "--data", data, "--out", out], cwd=ROOT,
                          env=env_for_subprocess(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    assert set(summary["top1"]) == {"finetune", "probe"}
    assert all(set(by_init) == {"pretrained", "scratch"} for by_init in summary["top1"].values())
    # Pretraining read all 20 clips (batch 4: 5 steps); the downstream runs 1 labelled clip of each of 10 classes.
    assert summary["pretrain_steps"] == 5 and summary["labels_per_class"] == 1
    for run in ("finetune_pretrained", "finetune_scratch", "probe_pretrained", "probe_scratch"):
        with open(os.path.join(out, run, "log.txt")) as f:
            assert "10 of 20 entries, 1 per class of 10" in f.read()
        assert [s["num_videos"] for s in read_stats(os.path.join(out, run)) if s.get("split") == "test_final"] == [4]
    with open(os.path.join(out, "summary.png"), "rb") as f:
        assert f.read(8) == PNG_MAGIC
    assert os.path.isfile(os.path.join(out, "pretrain", "vis", "video_000.png"))
    assert "fine-tuning" in proc.stdout and "linear probe" in proc.stdout and "random init" in proc.stdout


def test_pretrain_epochs_lengthen_only_the_pretraining(monkeypatch):
    commands = {}
    monkeypatch.setattr(run_demo, "stage", lambda title, args, times: commands.setdefault(title, args))
    monkeypatch.setattr(run_demo, "newest_checkpoint", lambda output_dir: "ckpt.pyth")
    run_demo.run_stages(run_demo.parse_args(["--pretrain-epochs", "1200", "--out", "o"]))
    pretrain = commands["DiffMAE pretraining"]
    assert pretrain[pretrain.index("SOLVER.MAX_EPOCH") + 1] == "1200"
    downstream = [args for title, args in commands.items() if "from" in title]
    assert len(downstream) == 4 and all("SOLVER.MAX_EPOCH" not in args for args in downstream)
    assert all(args[args.index("TRAIN.CHECKPOINT_FILE_PATH") + 1] == "ckpt.pyth"
               for title, args in commands.items() if "pretrained" in title)
