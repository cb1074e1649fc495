"""Behaviour of the moving-digits demo set and of the frame writers it uses."""
import os

import av
import numpy as np
import pytest
import torch
from PIL import Image

from videodiff.data.demo import (SPLITS, load_mnist, make_demo_dataset, mnist_rows_by_split,
                                 plan_split, render_clip)
from videodiff.data.encoding import write_image, write_video

SMALL = dict(num_train=12, num_val=4, num_test=4)


def _decode(path: str) -> np.ndarray:
    """All frames of a video as [T, H, W, 3] uint8 RGB."""
    with av.open(path) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def _read_csv(out_dir: str, split: str) -> list:
    with open(os.path.join(out_dir, f"{split}.csv")) as f:
        return f.read().splitlines()


def _labels(out_dir: str, split: str) -> np.ndarray:
    return np.array([int(line.split(" ")[1]) for line in _read_csv(out_dir, split)])


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("demo"))
    make_demo_dataset(out, seed=0, **SMALL)
    return out


@pytest.fixture(scope="module")
def mnist():
    return load_mnist()


def test_csv_lines_are_well_formed_and_every_listed_file_exists(demo_dir):
    for split in SPLITS:
        lines = _read_csv(demo_dir, split)
        assert len(lines) == SMALL[f"num_{split}"]
        for i, line in enumerate(lines):
            path, label = line.split(" ")
            assert path == f"videos/{split}/{split}_{i:05d}.mp4"
            assert 0 <= int(label) <= 9
            assert os.path.isfile(os.path.join(demo_dir, path))
            image = os.path.join(demo_dir, "images", split, label, f"{split}_{i:05d}.png")
            assert os.path.isfile(image)


def test_decoded_clip_has_the_right_shape_and_matches_its_first_frame_image(demo_dir):
    path, label = _read_csv(demo_dir, "train")[0].split(" ")
    frames = _decode(os.path.join(demo_dir, path))
    assert 16 <= frames.shape[0] <= 32
    assert frames.shape[1:] == (64, 64, 3)
    # The PNG is the lossless first frame, so it is the reference for the lossy H.264 one.
    image = np.asarray(Image.open(os.path.join(demo_dir, "images", "train", label,
                                               "train_00000.png")).convert("RGB"))
    assert image.shape == (64, 64, 3)
    assert np.abs(frames[0].astype(int) - image).mean() < 3
    stroke, background = image.max(-1) > 200, image.max(-1) == 0
    assert frames[0].max(-1)[stroke].mean() > 180
    assert frames[0][background].mean() < 10


def test_write_video_round_trips_a_rendered_clip_within_codec_tolerance(tmp_path, mnist):
    images, _ = mnist
    frames = render_clip(images[0], np.random.default_rng(1))
    path = str(tmp_path / "nested" / "clip.mp4")
    write_video(path, torch.from_numpy(frames), fps=10)
    decoded = _decode(path)
    assert decoded.shape == frames.shape
    assert np.abs(decoded.astype(int) - frames).mean() < 3


def test_rendered_digit_stays_whole_inside_the_canvas_and_moves(mnist):
    images, _ = mnist
    for seed in range(5):
        frames = render_clip(images[seed * 500], np.random.default_rng(seed))
        assert 16 <= len(frames) <= 32
        sums = frames.reshape(len(frames), -1).sum(1)
        assert np.all(sums == sums[0])  # never clipped by an edge
        assert np.any(frames[0] != frames[-1])
        assert all(frames[..., c].max() > 80 for c in range(3))  # tint keeps all channels


def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path, demo_dir):
    again, other = str(tmp_path / "again"), str(tmp_path / "other")
    make_demo_dataset(again, seed=0, **SMALL)
    make_demo_dataset(other, seed=1, **SMALL)
    for split in SPLITS:
        assert _read_csv(again, split) == _read_csv(demo_dir, split)
    for line in _read_csv(demo_dir, "val"):
        path = line.split(" ")[0]
        a, b = os.path.join(demo_dir, path), os.path.join(again, path)
        assert np.array_equal(_decode(a), _decode(b))
        with open(a, "rb") as fa, open(b, "rb") as fb:
            assert fa.read() == fb.read()
    first = "videos/train/train_00000.mp4"
    frames_0, frames_1 = (_decode(os.path.join(d, first)) for d in (demo_dir, other))
    assert frames_0.shape != frames_1.shape or not np.array_equal(frames_0, frames_1)


def test_splits_draw_from_disjoint_mnist_rows(demo_dir, mnist):
    _, labels = mnist
    pools = mnist_rows_by_split(labels)
    assert len(np.intersect1d(pools["train"], pools["val"])) == 0
    assert len(np.intersect1d(pools["train"], pools["test"])) == 0
    assert len(np.intersect1d(pools["val"], pools["test"])) == 0
    for split in SPLITS:
        assert set(labels[pools[split]]) == set(range(10))
        rows = plan_split(labels, split, SMALL[f"num_{split}"], seed=0)
        assert np.isin(rows, pools[split]).all()
        # The written labels are the labels of the planned rows.
        assert np.array_equal(_labels(demo_dir, split), labels[rows])


def test_plan_balances_classes(mnist):
    _, labels = mnist
    rows = plan_split(labels, "val", 100, seed=3)
    assert np.array_equal(np.bincount(labels[rows], minlength=10), np.full(10, 10))
    assert len(np.unique(rows)) == 100


def test_complete_set_is_reused_and_changed_arguments_regenerate(tmp_path):
    out = str(tmp_path / "demo")
    assert make_demo_dataset(out, seed=0, **SMALL)["reused"] is False
    assert make_demo_dataset(out, seed=0, **SMALL)["reused"] is True
    os.remove(os.path.join(out, "videos", "val", "val_00001.mp4"))
    assert make_demo_dataset(out, seed=0, **SMALL)["reused"] is False
    result = make_demo_dataset(out, seed=0, num_train=10, num_val=2, num_test=2)
    assert result["reused"] is False
    assert len(os.listdir(os.path.join(out, "videos", "train"))) == 10  # no stale clips


def test_write_video_rejects_odd_sizes_naming_the_path(tmp_path):
    path = str(tmp_path / "odd.mp4")
    with pytest.raises(ValueError, match="odd.mp4") as error:
        write_video(path, np.zeros((4, 63, 64, 3), dtype=np.uint8))
    assert "(4, 63, 64, 3)" in str(error.value)


def test_write_image_saves_png_losslessly_and_picks_format_by_extension(tmp_path):
    frame = np.random.default_rng(0).integers(0, 256, (64, 48, 3), dtype=np.uint8)
    png, jpg = str(tmp_path / "a" / "f.png"), str(tmp_path / "b" / "f.jpg")
    write_image(png, frame)
    write_image(jpg, torch.from_numpy(frame))
    with Image.open(png) as image:
        assert image.format == "PNG"
        assert np.array_equal(np.asarray(image.convert("RGB")), frame)
    with Image.open(jpg) as image:
        assert image.format == "JPEG" and image.size == (48, 64)
