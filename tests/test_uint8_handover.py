"""uint8 handover (DATA_LOADER.UINT8_HANDOVER): workers send uint8 clips, the device normalises them, and every
consumer (the Trainer and its mixup hook, evaluation, the data benchmark) sees the float handover's exact tensors.

Fixture media are real: textured H.264 mp4s and PNGs written here and decoded as in training.
"""
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from timm.data import Mixup
from torch import nn

from test_data import cfg_for, write_csv
from videodiff.config import ConfigError, load_config
from videodiff.data import build_loader, set_loader_epoch
from videodiff.data.encoding import write_image, write_video
from videodiff.data.loader_benchmark import device_handover
from videodiff.data.normalize import ClipNormalizer
from videodiff.engine.distributed import DistInfo
from videodiff.engine.evaluate import evaluate
from videodiff.engine.hooks import Hook
from videodiff.engine.mixup_hook import MixupHook
from videodiff.engine.train import Trainer

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)  # distinct per channel, so a channel mix-up would show
COLOUR = ["DATA.MEAN", str(list(MEAN)), "DATA.STD", str(list(STD))]
IMAGES = ["TRAIN.DATASET", "imagefolder", "TEST.DATASET", "imagefolder", "DATA.NUM_FRAMES", 1,
          "VIT.TEMPORAL_PATCH_SIZE", 1]


def textured_video(path, seed, num_frames=12):
    """Noise frames [T, 32, 48, 3]: every crop, flip and resize changes the pixels."""
    frames = np.random.default_rng(seed).integers(0, 256, (num_frames, 32, 48, 3), dtype=np.uint8)
    write_video(str(path), frames)
    return str(path)


def media(tmp_path, num=3):
    """train/test lists of textured videos and train/test folders of textured PNGs (2 classes)."""
    lines = [f"{textured_video(tmp_path / f'v{i}.mp4', i)} {i % 2}" for i in range(num)]
    for split in ("train", "test"):
        write_csv(tmp_path, f"{split}.csv", lines)
        for i in range(num):
            image = np.random.default_rng(10 + i).integers(0, 256, (40, 48, 3), dtype=np.uint8)
            write_image(str(tmp_path / split / f"c{i % 2}" / f"{i}.png"), image)


def batches(tmp_path, split, uint8, *opts):
    loader = build_loader(cfg_for(tmp_path, *COLOUR, "DATA_LOADER.UINT8_HANDOVER", uint8, *opts), split)
    set_loader_epoch(loader, 0)
    return list(loader)


# ---------------------------------------------------------------- the batches themselves
@pytest.mark.parametrize("split, opts", [
    ("train", ["AUG.NUM_SAMPLE", 2]),
    ("test", ["TEST.NUM_ENSEMBLE_VIEWS", 2, "TEST.NUM_SPATIAL_CROPS", 3]),
    ("train", IMAGES + ["AUG.NUM_SAMPLE", 2]),
    ("test", IMAGES),
], ids=["video-train", "video-test-views", "image-train", "image-test"])
def test_uint8_batches_normalised_on_the_device_equal_the_float_handovers_bit_for_bit(tmp_path, split, opts):
    media(tmp_path)
    old, new = batches(tmp_path, split, False, *opts), batches(tmp_path, split, True, *opts)
    normalize = ClipNormalizer(MEAN, STD)
    benchmark = device_handover(cfg_for(tmp_path, *COLOUR))
    assert len(old) == len(new) > 0
    for before, after in zip(old, new):
        assert before["clip"].dtype == torch.float32 and after["clip"].dtype == torch.uint8
        assert after["clip"].nbytes * 4 == before["clip"].nbytes
        assert torch.equal(normalize(after["clip"]), before["clip"])       # the Trainer's and evaluation's step
        assert torch.equal(benchmark(after["clip"]).cpu(), before["clip"])  # the data benchmark's
        for key in ("label", "index", "view"):
            assert torch.equal(before[key], after[key])


def test_rand_aug_output_is_rounded_to_within_half_a_grey_level(tmp_path):
    media(tmp_path)
    opts = ["AUG.NUM_SAMPLE", 4, "AUG.RAND_AUG", "rand-m9-n2-mstd0.5"]
    old, new = batches(tmp_path, "train", False, *opts), batches(tmp_path, "train", True, *opts)
    normalize = ClipNormalizer(MEAN, STD)
    # In grey levels: (normalised difference) x std x 255, per channel.
    levels = torch.cat([((normalize(b["clip"]) - a["clip"]) * torch.tensor(STD).view(3, 1, 1, 1) * 255).flatten()
                        for a, b in zip(old, new)]).abs()
    assert levels.max() <= 0.5 + 1e-3                 # rounding to the nearest level, never more
    assert 0.02 < levels.mean() < 0.3                 # it does round some (RandAugment ran), mostly by little


def test_a_normalizer_passes_float_clips_through_and_checks_channels():
    normalize = ClipNormalizer(MEAN, STD)
    clip = torch.randn(2, 3, 1, 4, 4)
    assert normalize(clip) is clip  # the float handover is already normalised
    with pytest.raises(ValueError, match="1 channels but DATA.MEAN / STD give 3"):
        normalize(torch.zeros(2, 1, 1, 4, 4, dtype=torch.uint8))


# ---------------------------------------------------------------- the Trainer: mixup and the model
class InputRecorder(nn.Module):
    """Keeps each clip it is given; its loss only needs some gradient."""

    def __init__(self):
        super().__init__()
        self.w, self.seen = nn.Parameter(torch.zeros(())), []

    def forward(self, clip, label):
        self.seen.append(clip.detach().clone())
        return {"loss": self.w * clip.mean()}


class BeforeMixup(Hook):
    def __init__(self):
        self.seen = []

    def before_step(self, trainer, batch):
        self.seen.append(batch["clip"].clone())
        return batch


def train_one_epoch(tmp_path, uint8):
    cfg = cfg_for(tmp_path, *COLOUR, "DATA_LOADER.UINT8_HANDOVER", uint8, "AUG.NUM_SAMPLE", 2)
    model, before = InputRecorder(), BeforeMixup()
    trainer = Trainer(model, build_loader(cfg, "train"), torch.optim.SGD(model.parameters(), lr=0.0), max_epoch=1,
                      output_dir=str(tmp_path / f"out{int(uint8)}"), normalize=ClipNormalizer.from_cfg(cfg))
    mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=3)
    trainer.register_hooks([before, MixupHook(mixup)])
    trainer.train()  # seeds numpy per epoch: both runs draw the same mixup parameters
    return before.seen, model.seen


def test_mixup_and_the_model_see_the_float_handovers_exact_tensors(tmp_path):
    media(tmp_path)
    (old_mixup_in, old_model_in), (new_mixup_in, new_model_in) = (train_one_epoch(tmp_path, u) for u in (False, True))
    assert len(new_mixup_in) == len(new_model_in) == 1  # 3 videos, batch 2, drop_last
    for old, new in zip(old_mixup_in + old_model_in, new_mixup_in + new_model_in):
        assert new.dtype == torch.float32 and torch.equal(old, new)
    assert not torch.equal(new_mixup_in[0], new_model_in[0])  # mixup ran between the two


# ---------------------------------------------------------------- evaluation
class ChannelMeans(nn.Module):
    """Logits = the clip's channel means: scores depend on the normalisation. Keeps each clip it is given."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, clip, label=None):
        self.seen.append(clip.clone())
        logits = clip.mean(dim=(2, 3, 4))
        return {"logits": logits, "loss": logits.sum()}


def test_evaluation_normalises_every_view_and_skips_uint8_placeholders(tmp_path):
    media(tmp_path)
    (tmp_path / "empty.mp4").write_bytes(b"")  # unreadable: a uint8 placeholder collated among uint8 clips
    write_csv(tmp_path, "test.csv", (tmp_path / "test.csv").read_text().splitlines() + [f"{tmp_path}/empty.mp4 1"])
    results, inputs = [], []
    for uint8 in (False, True):
        cfg = cfg_for(tmp_path, *COLOUR, "DATA_LOADER.UINT8_HANDOVER", uint8, "TEST.NUM_ENSEMBLE_VIEWS", 2,
                      "TEST.NUM_SPATIAL_CROPS", 3, "TEST.BATCH_SIZE", 4, "DATA.MAX_FAILED_FRACTION", 0.5)
        model = ChannelMeans()
        results.append(evaluate(model, build_loader(cfg, "test"), cfg, DistInfo(), "test", views_expected=6))
        inputs.append(model.seen)
    assert results[0] == results[1] and results[1]["failed_videos"] == 1 and results[1]["num_videos"] == 3
    assert all(new.dtype == torch.float32 and torch.equal(old, new) for old, new in zip(*inputs))


# ---------------------------------------------------------------- loader options
def test_loader_options_follow_the_config_and_workers_hand_over_uint8(tmp_path):
    media(tmp_path)
    off = build_loader(cfg_for(tmp_path, "DATA_LOADER.NUM_WORKERS", 1, "DATA_LOADER.PERSISTENT_WORKERS", False,
                               "DATA_LOADER.PREFETCH_FACTOR", 3, "DATA_LOADER.PIN_MEMORY", False), "train")
    assert (off.num_workers, off.persistent_workers, off.prefetch_factor, off.pin_memory) == (1, False, 3, False)
    default = build_loader(cfg_for(tmp_path, "DATA_LOADER.NUM_WORKERS", 1), "train")
    assert default.persistent_workers and default.prefetch_factor == 2
    assert default.pin_memory == torch.cuda.is_available()  # pinning needs CUDA
    in_process = build_loader(cfg_for(tmp_path), "train")  # torch refuses the two options without workers
    assert (in_process.persistent_workers, in_process.prefetch_factor) == (False, None)
    for loader in (off, in_process):
        set_loader_epoch(loader, 0)
    from_worker, reference = next(iter(off)), next(iter(in_process))
    assert from_worker["clip"].dtype == torch.uint8 and torch.equal(from_worker["clip"], reference["clip"])


FRESH_BATCH_FAULTS = textwrap.dedent("""
    import resource, sys, torch
    from videodiff.config import load_config
    from videodiff.data import build_loader

    def faults_of_a_float_batch():  # minor page faults of making (and freeing) a 40 MB float clip batch
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.ones(10 << 20)
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    default = min(faults_of_a_float_batch() for _ in range(3))
    build_loader(load_config(None, ["DATA.PATH_TO_DATA_DIR", sys.argv[1], "DATA_LOADER.NUM_WORKERS", "0",
                              "TRAIN.BATCH_SIZE", "2"]), "train")
    # The first few batches still grow the heap (how many depends on what else it holds): the steady state counts.
    print(default, min(faults_of_a_float_batch() for _ in range(12)))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc thresholds (worker_memory.py)")
def test_the_main_process_reuses_freed_batch_buffers_after_building_a_loader(tmp_path):
    """glibc maps a fresh 40 MB block, page by page, for every batch; once a loader is built the freed block is
    reused (a fresh process: the test process has long had the setting)."""
    media(tmp_path)
    run = subprocess.run([sys.executable, "-c", FRESH_BATCH_FAULTS, str(tmp_path)], capture_output=True, text=True,
                         check=True)
    default, kept = map(int, run.stdout.split()[-2:])
    if default < 2000:
        pytest.skip(f"this kernel maps fresh memory in large pages ({default} faults per 40 MB): nothing to save")
    assert kept < default / 20, (default, kept)


def test_a_prefetch_factor_below_one_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"DATA_LOADER.PREFETCH_FACTOR \(from command line\) = 0 .*>= 1"):
        load_config(None, ["DATA_LOADER.PREFETCH_FACTOR", "0"])
