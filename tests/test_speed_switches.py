"""Speed and memory switches (issue #14): gradient accumulation, activation checkpointing, torch.compile and fused
AdamW each train exactly as without them, or stay off with one logged reason where they are unsupported."""
import contextlib
import copy
import importlib
import logging
import os
import shutil

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from cli_helpers import make_tiny_demo, opts, run_net, train_steps

from videodiff.config import ConfigError, get_defaults, load_config
from videodiff.data.loader import per_rank_batch_size
from videodiff.data.samplers import ResumableDistributedSampler
from videodiff.engine import checkpoint as ckpt
from videodiff.engine import compile as compiling
from videodiff.engine.hooks import Hook, LRScheduleHook
from videodiff.engine.optim import LRSchedule, build_adamw
from videodiff.engine.preemption import IterCheckpointHook
from videodiff.engine.train import Trainer
from videodiff.models import act_checkpoint
from videodiff.models.build import build_model
from videodiff.models.classifier import VitClassifier
from videodiff.models.diffmae import DiffMAE
from videodiff.models.mae import MAE
from videodiff.state_dicts import unwrap

CFG = "configs/demo/vit_tiny_supervised.yaml"
TINY_VIT = dict(patch_size=4, t_patch=1, embed_dim=16, depth=2, num_heads=2)


@pytest.fixture
def logged():
    """The messages the ``videodiff`` logger emits during the test, at INFO and above."""
    messages, handler, log = [], logging.Handler(), logging.getLogger("videodiff")
    handler.emit = lambda record: messages.append(record.getMessage())
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    yield messages
    log.removeHandler(handler)
    log.setLevel(level)


class Recorder(Hook):
    def __init__(self):
        self.metrics, self.lrs = [], []

    def after_step(self, trainer, metrics):
        self.metrics.append({k: float(v) for k, v in metrics.items()})
        self.lrs.append(trainer.lr)


# ------------------------------------------------------------------------------------------ gradient accumulation
def clips(n, seed):
    g = torch.Generator().manual_seed(seed)
    return {"clip": torch.randn(n, 3, 2, 8, 8, generator=g), "label": torch.randint(0, 5, (n,), generator=g)}


def split(batch, k):
    return [{key: part for key, part in zip(batch, parts)} for parts in zip(*(v.chunk(k) for v in batch.values()))]


def train_one_epoch(model, loader, accum_steps, out, clip_grad):
    recorder = Recorder()
    trainer = Trainer(model, loader, torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9), max_epoch=1,
                      output_dir=str(out), clip_grad=clip_grad, accum_steps=accum_steps)
    trainer.register_hooks([recorder])
    trainer.train()
    return recorder.metrics


@pytest.mark.parametrize("clip_grad", [0.0, 0.05])  # 0.05 clips every step: once, after the last micro-step
def test_accumulated_micro_steps_give_the_step_of_the_whole_batch(tmp_path, clip_grad):
    torch.manual_seed(0)
    whole_model = VitClassifier(num_classes=5, **TINY_VIT)  # no dropout, no drop path: deterministic
    micro_model, initial = copy.deepcopy(whole_model), copy.deepcopy(whole_model)
    batches = [clips(8, seed) for seed in (1, 2)]
    whole = train_one_epoch(whole_model, batches, 1, tmp_path / "whole", clip_grad)
    micro = train_one_epoch(micro_model, [m for b in batches for m in split(b, 4)], 4, tmp_path / "micro", clip_grad)
    assert len(micro) == len(whole) == 2  # two optimizer steps, each of four micro-batches
    for a, b in zip(micro, whole):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)            # the mean over the micro-batches
        assert a["acc"] == pytest.approx(b["acc"])
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)  # each micro-loss was scaled by 1/k
    for (name, p), q in zip(micro_model.named_parameters(), whole_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=name)
    assert not torch.equal(micro_model.head.fc.weight, initial.head.fc.weight)  # the steps did change the weights


class SyncCounting(nn.Module):
    """A DDP stand-in: a linear model whose ``no_sync`` records each micro-step that skipped the all-reduce."""

    def __init__(self):
        super().__init__()
        self.fc, self.unsynced = nn.Linear(3, 1), 0

    @contextlib.contextmanager
    def no_sync(self):
        self.unsynced += 1
        yield

    def forward(self, clip, label):
        return {"loss": (self.fc(clip.mean(dim=(2, 3, 4))).squeeze(1) - label.float()).pow(2).mean()}


def test_only_the_last_micro_step_all_reduces_the_gradients(tmp_path):
    model = SyncCounting()
    loader = [clips(2, seed) for seed in range(6)]
    Trainer(model, loader, torch.optim.SGD(model.parameters(), lr=0.1), max_epoch=1, output_dir=str(tmp_path),
            accum_steps=3).train()
    assert model.unsynced == 4  # two steps of three micro-steps: the first two of each skip the all-reduce


class Stop(Exception):
    pass


class StopAt(Hook):
    def __init__(self, epoch, iteration):
        self.at = (epoch, iteration)

    def after_step(self, trainer, metrics):
        if (trainer.epoch, trainer.iter + 1) == self.at:
            raise Stop


def accumulating_run(out, stop=None):
    """Two epochs of 4 optimizer steps (8 loader batches of 2, accumulated in pairs), a checkpoint every 2 steps."""
    items = [{"clip": c, "label": l} for b in [clips(16, 3)] for c, l in zip(b["clip"], b["label"])]
    sampler = ResumableDistributedSampler(items, num_replicas=1, rank=0, shuffle=True, seed=0, drop_last=True)
    loader = DataLoader(items, batch_size=2, sampler=sampler)
    torch.manual_seed(0)
    model = SyncCounting()
    recorder = Recorder()
    trainer = Trainer(model, loader, torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9), max_epoch=2,
                      output_dir=str(out), accum_steps=2)
    trainer.register_hooks([LRScheduleHook(LRSchedule(peak=0.1, warmup_epochs=1, max_epoch=2)),
                            IterCheckpointHook(2), recorder] + ([StopAt(*stop)] if stop else []))
    return trainer, recorder


def test_a_run_resumed_mid_epoch_with_accumulation_ends_where_an_uninterrupted_one_does(tmp_path):
    full, full_steps = accumulating_run(tmp_path / "full")
    assert full.iters_per_epoch == 4
    full.train()
    cut, _ = accumulating_run(tmp_path / "cut", stop=(1, 3))  # killed after step 3 of epoch 2
    with pytest.raises(Stop):
        cut.train()
    resumed, resumed_steps = accumulating_run(tmp_path / "cut")
    resumed.resume(ckpt.find_latest_checkpoint(str(tmp_path / "cut")))
    assert (resumed.start_epoch, resumed.start_iter) == (1, 2)  # checkpoint_epoch_00001_iter_000002: optimizer steps
    resumed.train()
    assert resumed_steps.lrs == full_steps.lrs[-2:]              # the schedule counts optimizer steps
    assert [m["loss"] for m in resumed_steps.metrics] == pytest.approx([m["loss"] for m in full_steps.metrics[-2:]])
    torch.testing.assert_close(resumed.model.fc.weight, full.model.fc.weight)


def test_the_batch_must_divide_over_ranks_and_accumulation_steps():
    cfg = get_defaults()
    cfg.TRAIN.BATCH_SIZE, cfg.TRAIN.ACCUM_STEPS = 16, 4
    assert per_rank_batch_size(cfg, "train", 2) == 2
    assert per_rank_batch_size(cfg, "test", 2) == cfg.TEST.BATCH_SIZE // 2  # evaluation does not accumulate
    cfg.TRAIN.BATCH_SIZE = 12
    with pytest.raises(ValueError, match=r"TRAIN.BATCH_SIZE = 12 is not divisible by the world size 2 x "
                                         r"TRAIN.ACCUM_STEPS 4; use a multiple of 8"):
        per_rank_batch_size(cfg, "train", 2)


@pytest.mark.parametrize("key, value, allowed", [("TRAIN.ACCUM_STEPS", "0", "an integer >= 1"),
                                                 ("SOLVER.FUSED", "sometimes", "one of auto, always, never"),
                                                 ("MODEL.COMPILE_MODE", "fast", "one of default, reduce-overhead")])
def test_switch_values_are_checked(key, value, allowed):
    with pytest.raises(ConfigError, match=f"{key} .* is not allowed: expected {allowed}"):
        load_config(None, [key, value])


def test_a_run_with_accumulation_trains_and_resumes_mid_epoch_through_the_entry_point(tmp_path):
    data = make_tiny_demo(tmp_path)
    full = str(tmp_path / "full")
    # 12 videos, TRAIN.BATCH_SIZE 4 over 2 micro-batches of 2: 3 optimizer steps per epoch.
    extra = ["TRAIN.ACCUM_STEPS", "2", "TRAIN.CHECKPOINT_ITER_PERIOD", "2", "TRAIN.EVAL_PERIOD", "0"]
    run_net(CFG, opts(data, full, 2, *extra))
    assert [(s["epoch"], s["iter"]) for s in train_steps(full)] == [(e, i) for e in (1, 2) for i in (1, 2, 3)]
    assert sorted(os.listdir(ckpt.checkpoint_dir(full))) == [
        "checkpoint_epoch_00000_iter_000002.pyth", "checkpoint_epoch_00001.pyth",
        "checkpoint_epoch_00001_iter_000002.pyth", "checkpoint_epoch_00002.pyth"]
    cut = str(tmp_path / "cut")  # as if killed in epoch 2 after its mid-epoch checkpoint
    shutil.copytree(full, cut)
    os.remove(ckpt.checkpoint_path(cut, 2))
    proc = run_net(CFG, opts(data, cut, 2, *extra))
    assert f"resumed from {ckpt.checkpoint_path(cut, 1, 2)}" in proc.stdout
    a, b = (ckpt.load_state(ckpt.checkpoint_path(out, 2))["model"] for out in (cut, full))
    for key in b:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)


# ------------------------------------------------------------------------------------- activation checkpointing
def tiny_ldae(act_checkpoint):
    from test_ldae import pca, tiny
    return tiny(pca(d=8, D=192), act_checkpoint=act_checkpoint)


MODELS = {
    "vit": lambda on: VitClassifier(num_classes=5, drop_path_rate=0.5, act_checkpoint=on, **TINY_VIT),
    "diffmae": lambda on: DiffMAE(**TINY_VIT, decoder_depth=2, decoder_embed_dim=16, decoder_num_heads=2,
                                  mask_ratio=0.5, num_steps=10, act_checkpoint=on),
    "diffmae_joint": lambda on: DiffMAE(**TINY_VIT, decoder_type="joint", decoder_depth=2, decoder_embed_dim=16,
                                        decoder_num_heads=2, mask_ratio=0.5, num_steps=10, act_checkpoint=on),
    "mae": lambda on: MAE(**TINY_VIT, decoder_depth=2, decoder_embed_dim=16, decoder_num_heads=2, mask_ratio=0.5,
                          act_checkpoint=on),
    "ldae": tiny_ldae,
}


def gradients(model, clip, label):
    torch.manual_seed(1)  # the same masks, steps, noise and drop-path draws in both models
    model(clip, label)["loss"].backward()
    return {name: p.grad for name, p in model.named_parameters() if p.requires_grad}


@pytest.fixture
def checkpoint_calls(monkeypatch):
    calls = []

    def counting(block, *inputs, **kwargs):
        calls.append(type(block).__name__)
        return torch.utils.checkpoint.checkpoint(block, *inputs, **kwargs)

    monkeypatch.setattr(act_checkpoint, "checkpoint", counting)
    return calls


@pytest.mark.parametrize("name", sorted(MODELS))
def test_checkpointed_blocks_give_the_gradients_of_plain_ones(name, checkpoint_calls):
    torch.manual_seed(0)
    plain = MODELS[name](False)
    checkpointed = MODELS[name](True)
    checkpointed.load_state_dict(plain.state_dict())
    clip, label = torch.randn(2, 3, 2, 16, 16), torch.tensor([1, 3])
    expected = gradients(plain.train(), clip, label)
    assert not checkpoint_calls
    got = gradients(checkpointed.train(), clip, label)
    assert len(checkpoint_calls) == sum(len(m) for n, m in checkpointed.named_modules()
                                        if n.endswith("blocks") and isinstance(m, nn.ModuleList))
    assert got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)


def test_blocks_are_not_checkpointed_in_eval_or_without_gradients(checkpoint_calls):
    model = MODELS["vit"](True)
    clip = torch.randn(1, 3, 2, 16, 16)
    model.eval()(clip)
    with torch.no_grad():
        model.train()(clip)
    assert not checkpoint_calls


@pytest.mark.parametrize("name", ["VitClassifier", "DiffMAE", "MAE", "LDAE"])
def test_the_config_key_reaches_every_model(name):
    cfg = load_config(None, ["MODEL.MODEL_NAME", name, "MODEL.ACT_CHECKPOINT", "True", "VIT.EMBED_DIM", "16",
                             "VIT.DEPTH", "2", "VIT.NUM_HEADS", "2", "VIT.PATCH_SIZE", "8", "DATA.TRAIN_CROP_SIZE",
                             "32", "DATA.TEST_CROP_SIZE", "32", "DIFFMAE.DECODER_EMBED_DIM", "16",
                             "DIFFMAE.DECODER_NUM_HEADS", "2", "DIFFMAE.DECODER_DEPTH", "1", "LDAE.TOKENIZER",
                             "pixel", "LDAE.LATENT_DIM", "384"])
    model = build_model(cfg)
    owners = [m for m in model.modules() if hasattr(m, "act_checkpoint")]
    assert owners and all(m.act_checkpoint for m in owners)


# ---------------------------------------------------------------------------------------------------- compile
class Regression(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 1)

    def forward(self, clip, label):
        return {"loss": (self.fc(clip.mean(dim=(2, 3, 4))).squeeze(1) - label.float()).pow(2).mean()}


def test_compile_runs_eagerly_with_one_line_where_inductor_has_no_cxx_compiler(monkeypatch, logged):
    monkeypatch.setattr(compiling.shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    model = Regression()
    assert compiling.compile_model(model, torch.device("cpu")) is model
    assert logged == ["MODEL.COMPILE True but the model runs eagerly: inductor needs a C++ compiler for CPU code "
                      "and none was found (set CXX or install g++)"]


def test_compile_runs_eagerly_where_torch_compile_raises(monkeypatch, logged):
    def refuse(*args, **kwargs):
        raise RuntimeError("Windows not yet supported for torch.compile\nmore detail")

    monkeypatch.setattr(compiling, "compile_unsupported", lambda device, backend="inductor": "")
    monkeypatch.setattr(torch, "compile", refuse)
    model = Regression()
    assert compiling.compile_model(model, torch.device("cpu")) is model
    assert logged == ["MODEL.COMPILE True but the model runs eagerly: torch.compile raised RuntimeError: Windows not "
                      "yet supported for torch.compile"]


def test_a_compiled_model_trains_and_saves_the_bare_models_keys(tmp_path):
    torch.manual_seed(0)
    model = Regression()
    compiled = compiling.compile_model(model, torch.device("cpu"), backend="eager")  # no C++ build: fast
    assert compiled is not model and unwrap(compiled) is model
    trainer = Trainer(compiled, [clips(4, 0)], torch.optim.SGD(compiled.parameters(), lr=0.1), max_epoch=1,
                      output_dir=str(tmp_path))
    trainer.register_hooks([Recorder()])
    before = model.fc.weight.detach().clone()
    trainer.train()
    assert not torch.equal(model.fc.weight, before)  # the compiled module trained the bare one's weights
    trainer.save_checkpoint(1)
    saved = ckpt.load_state(ckpt.checkpoint_path(str(tmp_path), 1))["model"]
    assert sorted(saved) == ["fc.bias", "fc.weight"]  # no "_orig_mod." prefix
    ckpt.resume(ckpt.checkpoint_path(str(tmp_path), 1), compiled)  # and they load back into the compiled model


# ------------------------------------------------------------------------------------------------- fused AdamW
def adamw(fused):
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    return model, build_adamw([{"params": list(model.parameters())}], 1e-2, (0.9, 0.999), fused)


def test_fused_adamw_auto_is_off_on_the_cpu_and_says_why(logged):
    _, optimizer = adamw("auto")
    assert not optimizer.defaults["fused"]
    assert logged == ["SOLVER.FUSED auto: fused AdamW is off on cpu (auto fuses on CUDA only)"]


def test_fused_adamw_always_takes_the_unfused_step_on_the_cpu(logged):
    results = []
    for fused in ("always", "never"):
        model, optimizer = adamw(fused)
        model(torch.ones(3, 4)).sum().backward()
        optimizer.step()
        results.append((optimizer.defaults["fused"], model.weight.detach()))
    assert results[0][0] and not results[1][0] and not logged  # torch has a CPU kernel: used, nothing to report
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-5, atol=1e-7)


def test_fused_adamw_always_falls_back_with_a_reason_where_torch_has_no_kernel(monkeypatch, logged):
    optimizer_module = importlib.import_module("torch.optim.optimizer")  # torch.optim hides it as an attribute
    monkeypatch.setattr(optimizer_module, "_get_fused_kernels_supported_devices", lambda: ["cuda"])
    _, optimizer = adamw("always")
    assert not optimizer.defaults["fused"]
    assert logged == ["SOLVER.FUSED always: fused AdamW is unsupported here (torch has no fused kernel for cpu "
                      "parameters); running unfused"]
