"""Repeated augmentation, RandAugment, multi-view test coverage over ranks, and images as one-frame clips.

Ramp videos (frame k is uniformly 12*k, test_data.py) let a clip's frames be identified whatever the crop.
"""
import numpy as np
import pytest
import torch

from test_data import IDENTITY, cfg_for, make_image_folder, ramp_video, write_csv
from videodiff.data import build_loader, collate_clips, set_loader_epoch, transforms
from videodiff.data.imagefolder import ImageFolderClips
from videodiff.data.kinetics import KineticsDataset
from videodiff.data.normalize import ClipNormalizer
from videodiff.data.randaug import parse_rand_aug
from videodiff.data.transforms import TestTransform, TrainTransform
from videodiff.engine.distributed import DistInfo
from videodiff.engine.evaluate import aggregate_views, collect_outputs, merge_rank_outputs
from videodiff.engine.optim import scaled_lr
from videodiff.models.build import build_model


def clip_frame_ids(clip: torch.Tensor):
    """Frame indices of a ramp clip [C, T, H, W] normalized with IDENTITY."""
    return [round(float(clip[:, t].mean()) * 255 / 12) for t in range(clip.shape[1])]


# ---------------------------------------------------------------- repeated augmentation
def test_repeated_clips_have_independent_windows_and_crops(tmp_path, monkeypatch):
    csv = write_csv(tmp_path, "train.csv", [f"{ramp_video(tmp_path / 'a.mp4', num_frames=21)} 1"])
    dataset = KineticsDataset(csv, "train", 4, 2, TrainTransform(16, scale=(0.1, 0.5), **IDENTITY), num_repeats=4)
    boxes = []
    box = transforms.random_resized_crop_box
    monkeypatch.setattr(transforms, "random_resized_crop_box", lambda *a: boxes.append(box(*a)) or boxes[-1])
    starts = []
    for epoch in range(3):
        dataset.set_epoch(epoch)
        item = dataset[0]
        assert item["clip"].shape == (4, 3, 4, 16, 16)
        ids = [clip_frame_ids(clip) for clip in item["clip"]]
        assert all(w == [w[0] + 2 * i for i in range(4)] for w in ids)  # each clip is its own strided window
        starts.append([w[0] for w in ids])
    assert all(len(set(s)) > 1 for s in starts)  # the R windows differ within an item
    assert len(set(boxes)) == len(boxes) == 12  # and so do the R crops


def test_loader_flattens_r_but_epochs_batches_and_lr_count_original_samples(tmp_path):
    write_csv(tmp_path, "train.csv", [f"{ramp_video(tmp_path / f'{i}.mp4')} {i % 3}" for i in range(4)])
    cfg = cfg_for(tmp_path, "AUG.NUM_SAMPLE", 3, "TRAIN.BATCH_SIZE", 2, "SOLVER.BASE_LR", 0.256)
    loader = build_loader(cfg, "train")
    set_loader_epoch(loader, 0)
    batches = list(loader)
    assert len(loader) == len(batches) == 2  # 4 videos / 2 per batch, whatever R
    assert batches[0]["clip"].shape == (6, 3, 4, 16, 16)
    index = batches[0]["index"].tolist()
    assert index[:3] == [index[0]] * 3 and index[3:] == [index[3]] * 3 and index[0] != index[3]
    assert scaled_lr(cfg) == pytest.approx(0.256 * 2 / 256)  # batch 2 originals, not 6 clips


# ---------------------------------------------------------------- RandAugment
def test_rand_aug_uses_the_same_ops_on_every_frame_and_the_items_generator():
    frames = torch.randint(0, 256, (1, 32, 32, 3), dtype=torch.uint8).expand(6, 32, 32, 3)
    plain = TrainTransform(32, scale=(1.0, 1.0), aspect=(1.0, 1.0), flip=False, **IDENTITY)
    augmented = TrainTransform(32, scale=(1.0, 1.0), aspect=(1.0, 1.0), flip=False, rand_aug="rand-m9-n2-mstd0.5",
                               **IDENTITY)
    global_state = torch.get_rng_state()
    outs = [augmented(frames, torch.Generator().manual_seed(seed)) for seed in range(8)]
    assert torch.equal(torch.get_rng_state(), global_state)  # draws come from the item's generator only
    for out in outs:
        assert all(torch.equal(out[:, 0], out[:, t]) for t in range(6))  # identical frames stay identical
    reference = plain(frames, torch.Generator())
    assert sum(not torch.allclose(out, reference) for out in outs) >= 4  # it does change clips
    assert torch.equal(outs[3], augmented(frames, torch.Generator().manual_seed(3)))


def test_rand_aug_setting_is_parsed_like_timm_and_rejects_unknown_tokens():
    assert parse_rand_aug("rand-m9-n2-mstd0.5") == {"m": 9.0, "n": 2.0, "mstd": 0.5, "p": 0.5}
    assert parse_rand_aug("") is None and parse_rand_aug("rand")["m"] == 10.0
    with pytest.raises(ValueError, match="unknown token 'inc1'"):
        parse_rand_aug("rand-m9-inc1")
    with pytest.raises(ValueError, match="'m12' is out of range"):
        parse_rand_aug("rand-m12")


# ---------------------------------------------------------------- multi-view testing
def test_every_video_view_is_seen_exactly_once_over_two_ranks_and_averaged_once(tmp_path):
    lines = [f"{ramp_video(tmp_path / f'{i}.mp4', num_frames=12 + i)} {i}" for i in range(3)]
    write_csv(tmp_path, "test.csv", lines)
    cfg = cfg_for(tmp_path, "TEST.NUM_ENSEMBLE_VIEWS", 2, "TEST.NUM_SPATIAL_CROPS", 3, "TEST.BATCH_SIZE", 4)
    pairs, gathered = [], []
    model = _ConstantClassifier(3)
    for rank in range(2):
        loader = build_loader(cfg, "test", rank, 2)
        pairs += [p for batch in loader for p in zip(batch["index"].tolist(), batch["view"].tolist())]
        gathered.append(collect_outputs(model, loader, cfg, DistInfo(rank, 2)))
    assert sorted(pairs) == [(v, k) for v in range(3) for k in range(6)]  # 18 items, no padding duplicates
    scores, _, count = merge_rank_outputs(gathered)
    result = aggregate_views(scores, 6)
    assert count == 18 and result["num_videos"] == 3
    assert result["views_per_video_min"] == result["views_per_video_max"] == 6


class _ConstantClassifier(torch.nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.num_classes = num_classes

    def forward(self, clip, label=None):
        logits = torch.zeros(len(clip), self.num_classes)
        return {"logits": logits, "loss": logits.sum()}


# ---------------------------------------------------------------- images as one-frame clips
def test_image_test_transform_resizes_to_crop_over_0875_and_centre_crops(tmp_path):
    make_image_folder(tmp_path, "val", {"a": 2})
    image = torch.from_numpy(np.full((40, 48, 3), 60, np.uint8))
    dataset = ImageFolderClips.from_cfg(cfg_for(tmp_path, "TEST.DATASET", "imagefolder", "DATA.TEST_CROP_SIZE", 16,
                                                "VIT.PATCH_SIZE", 8), "val")
    assert dataset.transform.resize_size == 18  # round(16 / 0.875)
    item = dataset[1]
    assert item["clip"].shape == (1, 3, 1, 16, 16) and item["view"] == 0
    expected = TestTransform(16, 18, dataset.transform.mean, dataset.transform.std)(image[None])
    normalize = ClipNormalizer(dataset.transform.mean, dataset.transform.std)  # the uint8 handover's last step
    torch.testing.assert_close(normalize(item["clip"][0]), expected)


def test_image_folder_trains_and_evaluates_through_the_video_model_code(tmp_path):
    make_image_folder(tmp_path, "train", {"cat": 2, "dog": 2})
    make_image_folder(tmp_path, "val", {"cat": 1, "dog": 1})
    cfg = cfg_for(tmp_path, "TRAIN.DATASET", "imagefolder", "TEST.DATASET", "imagefolder", "DATA.NUM_FRAMES", 1,
                  "VIT.TEMPORAL_PATCH_SIZE", 1, "VIT.PATCH_SIZE", 8, "VIT.EMBED_DIM", 16, "VIT.DEPTH", 1,
                  "VIT.NUM_HEADS", 2, "AUG.NUM_SAMPLE", 2, "AUG.RAND_AUG", "rand-m9-n2-mstd0.5")
    model, normalize = build_model(cfg), ClipNormalizer.from_cfg(cfg)
    batch = next(iter(build_loader(cfg, "train")))
    assert batch["clip"].shape == (4, 3, 1, 16, 16)  # C x 1 x H x W clips, R = 2 copies
    out = model(normalize(batch["clip"]), batch["label"])
    out["loss"].backward()
    assert out["logits"].shape == (4, 3) and torch.isfinite(out["loss"])
    val = collate_clips([build_loader(cfg, "val").dataset[i] for i in range(2)])
    assert model(normalize(val["clip"]))["logits"].shape == (2, 3)
