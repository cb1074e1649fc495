"""The loop without a config: Trainer and hooks take plain arguments, so a test builds, trains and resumes one."""
import json
import os

import pytest
import torch
from torch import nn

from videodiff.engine import checkpoint as ckpt
from videodiff.engine.hooks import CheckpointHook, EvalHook, Hook, LoggingHook, LRScheduleHook
from videodiff.engine.optim import LRSchedule
from videodiff.engine.train import Trainer


class Regression(nn.Module):
    """(clip, label) -> {"loss"}: fit a linear map of the clip's mean to a fixed target."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 1)

    def forward(self, clip, label):
        pred = self.fc(clip.mean(dim=(2, 3, 4)))
        return {"loss": (pred.squeeze(1) - label.float()).pow(2).mean()}


def batches(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"clip": torch.randn(8, 3, 1, 2, 2, generator=g), "label": torch.full((8,), 2)} for _ in range(n)]


class Recorder(Hook):
    def __init__(self):
        self.lrs, self.losses = [], []

    def after_step(self, trainer, metrics):
        self.lrs.append(trainer.lr)
        self.losses.append(float(metrics["loss"]))


def make_trainer(out, max_epoch=4):
    torch.manual_seed(0)
    model = Regression()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    trainer = Trainer(model, batches(), optimizer, max_epoch=max_epoch, output_dir=str(out), config_text="x: 1")
    evals = []
    recorder = Recorder()
    schedule = LRSchedule(peak=0.1, warmup_epochs=1, max_epoch=max_epoch)
    trainer.register_hooks([LRScheduleHook(schedule), LoggingHook(period=2), CheckpointHook(period=2),
                            EvalHook(period=3, eval_fn=lambda: evals.append(trainer.epoch + 1) or {"score": 1.5}),
                            recorder])
    return trainer, evals, recorder, schedule


def test_trainer_and_hooks_run_without_a_config(tmp_path):
    trainer, evals, recorder, schedule = make_trainer(tmp_path)
    trainer.train()
    assert recorder.losses[-1] < 0.1 * recorder.losses[0]                      # it learns
    assert recorder.lrs[:4] == [schedule(i / 4) for i in range(4)]             # the schedule, per step
    assert evals == [3, 4]                                                     # every 3 epochs and the last
    names = sorted(os.listdir(ckpt.checkpoint_dir(str(tmp_path))))
    assert names == ["checkpoint_epoch_00002.pyth", "checkpoint_epoch_00004.pyth"]
    saved = ckpt.load_state(ckpt.checkpoint_path(str(tmp_path), 4))
    assert saved["cfg"] == "x: 1" and saved["epoch"] == 4
    with open(os.path.join(tmp_path, "json_stats.log")) as f:
        lines = [json.loads(line) for line in f]
    assert [line["iter"] for line in lines if line.get("split") == "train"][:2] == [2, 4]
    assert [line["epoch"] for line in lines if "score" in line] == [3, 4]


def test_resumed_trainer_ends_where_an_uninterrupted_one_does(tmp_path):
    full, _, _, _ = make_trainer(tmp_path / "full")
    full.train()
    first, _, _, _ = make_trainer(tmp_path / "cut", max_epoch=4)
    first.max_epoch = 2                                                        # stops after epoch 2's checkpoint
    first.train()
    resumed, evals, recorder, _ = make_trainer(tmp_path / "cut")
    resumed.resume(ckpt.find_latest_checkpoint(str(tmp_path / "cut")))
    assert resumed.start_epoch == 2
    resumed.train()
    assert len(recorder.losses) == 8 and evals == [3, 4]
    torch.testing.assert_close(resumed.model.fc.weight, full.model.fc.weight)


class NanGradient(nn.Module):
    """A finite loss (0) whose gradient is NaN: d sqrt(u)/du at u = 0 is inf, times du/dw = 0."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(3))

    def forward(self, clip, label):
        return {"loss": torch.sqrt(self.w.sum() - self.w.sum())}


def test_a_finite_loss_with_a_non_finite_gradient_is_caught(tmp_path):
    model = NanGradient()
    trainer = Trainer(model, batches(n=2), torch.optim.SGD(model.parameters(), lr=0.1), max_epoch=1,
                      output_dir=str(tmp_path))
    with pytest.raises(FloatingPointError, match="gradient norm is nan at epoch 1 iteration 1; no checkpoint"):
        trainer.train()
    skipping = Trainer(model, batches(n=5), torch.optim.SGD(model.parameters(), lr=0.1), max_epoch=1,
                       output_dir=str(tmp_path), skip_nonfinite_loss=True, max_consecutive_skips=3)
    with pytest.raises(FloatingPointError, match="iteration 4, and the 3 steps before it were skipped too"):
        skipping.train()
    assert skipping.skipped_steps == 4 and torch.equal(model.w.detach(), torch.ones(3))  # nothing was applied
