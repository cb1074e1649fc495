"""Data path: list files, decoding, window sampling, transforms, datasets, loader.

Fixture videos are tiny real H.264 mp4s. In a "ramp" video frame k is uniformly 12*k (so a decoded
frame's index is round(mean / 12)); in a "sweep" video pixel (k, y, x) is 5*k + x, so a crop's
frame index AND horizontal position can be recovered from its mean.
"""
import numpy as np
import pytest
import torch

import videodiff  # noqa: F401  (before pytorchvideo, see videodiff/compat.py)
from videodiff.config import load_config
from videodiff.data import build_dataset, build_loader, collate_clips, set_loader_epoch
from videodiff.data import decoding, sampling
from videodiff.data.decoding import VideoDecodeError, decode_frames
from videodiff.data.encoding import write_image, write_video
from videodiff.data.kinetics import KineticsDataset
from videodiff.data.loader import ShardSampler
from videodiff.data.transforms import TestTransform, TrainTransform
from videodiff.data.video_list import read_video_list

IDENTITY = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # clip values = pixels / 255


def ramp_video(path, num_frames=20, size=32):
    frames = np.stack([np.full((size, size, 3), 12 * k, np.uint8) for k in range(num_frames)])
    write_video(str(path), frames)
    return str(path)


def sweep_video(path, num_frames=20, height=32, width=48):
    k = np.arange(num_frames)[:, None, None, None]
    x = np.arange(width)[None, None, :, None]
    frames = np.broadcast_to(5 * k + x, (num_frames, height, width, 3)).astype(np.uint8)
    write_video(str(path), frames)
    return str(path)


def ramp_ids(frames: torch.Tensor):
    """Frame indices of uint8 [T, H, W, 3] ramp frames."""
    return [round(float(f.float().mean()) / 12) for f in frames]


def write_csv(tmp_path, name, lines):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def cfg_for(tmp_path, *opts):
    base = ["DATA.PATH_TO_DATA_DIR", str(tmp_path), "DATA.NUM_FRAMES", "4", "DATA.SAMPLING_RATE", "2",
            "DATA.TRAIN_CROP_SIZE", "16", "DATA.TEST_CROP_SIZE", "32", "MODEL.NUM_CLASSES", "3",
            "DATA_LOADER.NUM_WORKERS", "0", "TRAIN.BATCH_SIZE", "2", "TEST.BATCH_SIZE", "2"]
    return load_config(None, base + [str(o) for o in opts])


# ---------------------------------------------------------------- video list
def test_malformed_lines_are_all_reported_with_line_numbers(tmp_path):
    csv = write_csv(tmp_path, "train.csv", ["a.mp4 0", "lonely.mp4", "", "b.mp4 cat", "c.mp4 1 extra", "d.mp4 2"])
    with pytest.raises(ValueError) as err:
        read_video_list(csv)
    text = str(err.value)
    assert csv in text and "3 malformed" in text
    for number, line in [(2, "lonely.mp4"), (4, "b.mp4 cat"), (5, "c.mp4 1 extra")]:
        assert f"line {number}: '{line}'" in text
    assert "line 1:" not in text and "line 6:" not in text


def test_many_malformed_lines_show_first_ten_and_count_the_rest(tmp_path):
    csv = write_csv(tmp_path, "train.csv", [f"v{i}.mp4" for i in range(12)])
    text = str(pytest.raises(ValueError, read_video_list, csv).value)
    assert "12 malformed" in text and "line 10:" in text and "line 11:" not in text and "and 2 more" in text


def test_label_outside_num_classes_is_reported(tmp_path):
    csv = write_csv(tmp_path, "val.csv", ["a.mp4 7", "b.mp4 -1", "c.mp4 4"])
    text = str(pytest.raises(ValueError, read_video_list, csv, num_classes=5).value)
    assert "line 1: 'a.mp4 7': label 7 is outside [0, 5)" in text and "line 2:" in text and "line 3" not in text


def test_path_prefix_base_dir_and_separator(tmp_path):
    csv = write_csv(tmp_path, "train.csv", ["x/a.mp4 1", "b.mp4 0"])
    assert read_video_list(csv, path_prefix="/data/k400") == [("/data/k400/x/a.mp4", 1), ("/data/k400/b.mp4", 0)]
    assert read_video_list(csv, base_dir="/videos")[0] == ("/videos/x/a.mp4", 1)
    assert read_video_list(csv)[1] == (str(tmp_path / "b.mp4"), 0)  # default: the list's directory
    comma = write_csv(tmp_path, "c.csv", ["my video.mp4,2"])
    assert read_video_list(comma, separator=",", base_dir="/v") == [("/v/my video.mp4", 2)]


def test_missing_list_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.csv"):
        read_video_list(str(tmp_path / "nothere.csv"))


# ---------------------------------------------------------------- decoding
def test_decode_frames_returns_the_requested_frames_in_order(tmp_path):
    path = ramp_video(tmp_path / "v.mp4")
    assert decoding.count_frames(path) == 20
    frames = decode_frames(path, [5, 0, 5, 19])
    assert frames.dtype == torch.uint8 and frames.shape == (4, 32, 32, 3)
    assert ramp_ids(frames) == [5, 0, 5, 19]


def test_decord_gives_the_same_frames_as_pyav(tmp_path):
    path = ramp_video(tmp_path / "v.mp4")
    assert decoding.count_frames(path, "decord") == 20
    assert torch.equal(decode_frames(path, [3, 11, 3], "decord"), decode_frames(path, [3, 11, 3], "pyav"))


def test_missing_empty_and_too_short_videos_raise_video_decode_error_naming_the_file(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    for path in [str(tmp_path / "missing.mp4"), str(empty)]:
        with pytest.raises(VideoDecodeError, match=path):
            decode_frames(path, [0])
    short = ramp_video(tmp_path / "short.mp4", num_frames=4)
    with pytest.raises(VideoDecodeError, match="asked for frame 9"):
        decode_frames(short, [9])


# ---------------------------------------------------------------- sampling
def test_train_window_is_strided_and_inside_the_video():
    rng = torch.Generator().manual_seed(0)
    starts = set()
    for _ in range(50):
        window = sampling.train_window(20, 4, 3, rng)
        assert window == [window[0] + 3 * i for i in range(4)] and window[-1] <= 19
        starts.add(window[0])
    assert starts == set(range(20 - 9))


def test_short_video_is_clamped_to_its_last_frame():
    assert sampling.train_window(5, 4, 4, torch.Generator()) == [0, 4, 4, 4]
    assert sampling.test_window(5, 4, 4, view=1, num_views=2) == [0, 4, 4, 4]


def test_test_windows_are_uniformly_spaced_and_one_view_is_centred():
    assert sampling.test_window(20, 4, 2, view=0, num_views=1) == [6, 8, 10, 12]
    assert sampling.test_window(20, 4, 2, view=0, num_views=2) == [0, 2, 4, 6]
    assert sampling.test_window(20, 4, 2, view=1, num_views=2) == [13, 15, 17, 19]


# ---------------------------------------------------------------- transforms
def test_train_transform_crops_every_frame_alike():
    frames = torch.randint(0, 256, (1, 40, 48, 3), dtype=torch.uint8).expand(5, 40, 48, 3)  # identical frames
    out = TrainTransform(16, scale=(0.2, 0.5), **IDENTITY)(frames, torch.Generator().manual_seed(1))
    assert out.shape == (3, 5, 16, 16)
    assert all(torch.equal(out[:, 0], out[:, t]) for t in range(5))


def test_test_transform_resizes_short_side_and_crops_left_centre_right():
    frames = (4 * torch.arange(64)).to(torch.uint8)[None, None, :, None].expand(2, 32, 64, 3)  # pixel = 4 * column
    transform = TestTransform(16, **IDENTITY)  # short side 32 -> 16, so 16 x 32
    crops = [transform(frames, j, 3) for j in range(3)]
    assert all(c.shape == (3, 2, 16, 16) for c in crops)
    columns = [float(c.mean()) * 255 / 4 for c in crops]  # mean source column of each crop
    assert abs(columns[0] - 15.5) < 1 and abs(columns[1] - 31.5) < 1 and abs(columns[2] - 47.5) < 1


# ---------------------------------------------------------------- kinetics dataset
def kinetics_train(tmp_path, num_repeats=2, seed=0):
    csv = write_csv(tmp_path, "train.csv", [f"{ramp_video(tmp_path / 'a.mp4')} 1"])
    return KineticsDataset(csv, "train", 4, 2, TrainTransform(16, scale=(0.1, 0.3), **IDENTITY),
                           num_repeats=num_repeats, seed=seed)


def test_train_item_has_r_independent_clips_from_one_decode(tmp_path, monkeypatch):
    dataset = kinetics_train(tmp_path)
    calls = []
    decode = decoding.Video.decode

    def counting_decode(video, indices):
        calls.append(list(indices))
        return decode(video, indices)

    monkeypatch.setattr(decoding.Video, "decode", counting_decode)
    item = dataset[0]
    assert len(calls) == 1
    assert item["clip"].shape == (2, 3, 4, 16, 16) and item["clip"].dtype == torch.float32
    assert (item["label"], item["index"], item["view"]) == (1, 0, 0)
    assert not torch.equal(item["clip"][0], item["clip"][1])


def test_same_seed_and_epoch_give_the_same_clip_and_a_new_epoch_changes_it(tmp_path):
    first, second = kinetics_train(tmp_path), kinetics_train(tmp_path)
    first.set_epoch(3)
    second.set_epoch(3)
    clip = first[0]["clip"]
    assert torch.equal(clip, second[0]["clip"])
    second.set_epoch(4)
    assert not torch.equal(clip, second[0]["clip"])


def test_short_video_gives_a_clip_instead_of_crashing(tmp_path):
    csv = write_csv(tmp_path, "train.csv", [f"{ramp_video(tmp_path / 's.mp4', num_frames=3)} 0"])
    dataset = KineticsDataset(csv, "train", 4, 4, TrainTransform(16, **IDENTITY))
    assert dataset[0]["clip"].shape == (1, 3, 4, 16, 16)


def test_test_views_cover_every_window_and_crop_once(tmp_path):
    video = sweep_video(tmp_path / "w.mp4")  # 20 frames, 32 x 48: crops at x = 0, 8, 16
    csv = write_csv(tmp_path, "test.csv", [f"{video} 2", f"{video} 0"])
    dataset = KineticsDataset(csv, "test", 4, 2, TestTransform(32, **IDENTITY), num_views=2, num_crops=3)
    assert len(dataset) == 12
    items = [dataset[k] for k in range(12)]
    assert sorted((it["index"], it["view"]) for it in items) == [(i, v) for i in range(2) for v in range(6)]
    windows = [[0, 2, 4, 6], [13, 15, 17, 19]]
    for it in items[:6]:
        temporal, spatial = divmod(it["view"], 3)
        assert it["clip"].shape == (1, 3, 4, 32, 32) and it["label"] == 2
        pixel_means = it["clip"][0].mean(dim=(0, 2, 3)) * 255  # per frame: 5 * k + mean column
        frame_ids = [round(float(m - (8 * spatial + 15.5)) / 5) for m in pixel_means]
        assert frame_ids == windows[temporal]


def test_centre_crop_matches_the_decoded_frames(tmp_path):
    video = sweep_video(tmp_path / "w.mp4")
    csv = write_csv(tmp_path, "val.csv", [f"{video} 0"])
    clip = KineticsDataset(csv, "val", 4, 2, TestTransform(32, **IDENTITY))[0]["clip"][0]
    frames = decode_frames(video, [6, 8, 10, 12]).permute(3, 0, 1, 2).float() / 255
    torch.testing.assert_close(clip, frames[..., 8:40])


# ---------------------------------------------------------------- image folder, build, loader
def make_image_folder(root, split, counts):
    for name, count in counts.items():
        for i in range(count):
            write_image(str(root / split / name / f"{i}.png"), np.full((40, 48, 3), 60 * i, np.uint8))


def test_image_folder_end_to_end_gives_one_frame_clips_labelled_by_folder(tmp_path):
    make_image_folder(tmp_path, "train", {"dog": 1, "cat": 2})
    cfg = cfg_for(tmp_path, "TRAIN.DATASET", "imagefolder", "AUG.NUM_SAMPLE", 2, "TRAIN.BATCH_SIZE", 3)
    batch = next(iter(build_loader(cfg, "train")))
    assert batch["clip"].shape == (6, 3, 1, 16, 16)
    labels = dict(zip(batch["index"].tolist(), batch["label"].tolist()))
    assert labels == {0: 0, 1: 0, 2: 1}  # cat/0.png, cat/1.png, dog/0.png


def test_collate_flattens_repeats_into_the_batch():
    items = [{"clip": torch.full((2, 3, 4, 8, 8), float(i)), "label": 10 + i, "index": i, "view": 0}
             for i in range(3)]
    batch = collate_clips(items)
    assert batch["clip"].shape == (6, 3, 4, 8, 8)
    assert batch["label"].tolist() == [10, 10, 11, 11, 12, 12] and batch["label"].dtype == torch.long
    assert batch["index"].tolist() == [0, 0, 1, 1, 2, 2] and batch["clip"][3].eq(1).all()


def test_eval_sampler_gives_every_item_exactly_once_over_ranks():
    shares = [list(ShardSampler(7, rank, 2)) for rank in range(2)]
    assert sorted(shares[0] + shares[1]) == list(range(7)) and not set(shares[0]) & set(shares[1])


def test_eval_loaders_of_two_ranks_see_each_image_once(tmp_path):
    make_image_folder(tmp_path, "test", {"a": 4, "b": 3})
    cfg = cfg_for(tmp_path, "TEST.DATASET", "imagefolder")
    seen = [i for rank in range(2) for batch in build_loader(cfg, "test", rank, 2) for i in batch["index"].tolist()]
    assert sorted(seen) == list(range(7))


def test_batch_size_must_divide_over_ranks(tmp_path):
    with pytest.raises(ValueError, match="TRAIN.BATCH_SIZE = 3 .*world size 2"):
        build_loader(cfg_for(tmp_path, "TRAIN.BATCH_SIZE", 3), "train", 0, 2)


def test_unknown_dataset_names_the_key_and_the_choices(tmp_path):
    # Config validation now refuses it at load (before any work), from the same registry build_dataset uses.
    with pytest.raises(ValueError, match="TEST.DATASET .*= 'ucf'.*(imagefolder, kinetics|kinetics, imagefolder)"):
        build_dataset(cfg_for(tmp_path, "TEST.DATASET", "ucf"), "val")


def test_persistent_workers_follow_the_epoch(tmp_path):
    lines = [f"{ramp_video(tmp_path / f'{i}.mp4')} {i}" for i in range(2)]
    write_csv(tmp_path, "train.csv", lines)
    cfg = cfg_for(tmp_path, "DATA_LOADER.NUM_WORKERS", 1, "TRAIN.BATCH_SIZE", 1)
    loader = build_loader(cfg, "train")
    reference = build_dataset(cfg, "train")
    for epoch in (0, 1):
        set_loader_epoch(loader, epoch)
        reference.set_epoch(epoch)
        for batch in loader:
            torch.testing.assert_close(batch["clip"][0], reference[int(batch["index"][0])]["clip"][0])


# ---------------------------------------------------------------- lists and images that used to fail loudly
def test_a_list_that_is_a_folder_is_one_line_naming_it(tmp_path):
    (tmp_path / "train.csv").mkdir()
    with pytest.raises((ValueError, FileNotFoundError)) as err:
        read_video_list(str(tmp_path / "train.csv"))
    text = str(err.value)
    assert str(tmp_path / "train.csv") in text and "folder" in text and "\n" not in text


def test_a_list_that_is_not_utf8_names_the_file_and_every_bad_line(tmp_path):
    csv = tmp_path / "train.csv"
    csv.write_bytes(b"a.mp4 0\ncaf\xe9.mp4 1\nb.mp4 2\n\xff\xfe.mp4 0\nc.mp4 1\n")  # Latin-1 and stray bytes
    with pytest.raises(ValueError) as err:
        read_video_list(str(csv))
    text = str(err.value)
    assert str(csv) in text and "UTF-8" in text and "lines 2, 4" in text and "\n" not in text
    assert "line 1" not in text and "line 3" not in text


def test_a_list_with_a_utf8_byte_order_mark_and_non_ascii_paths_reads(tmp_path):
    csv = tmp_path / "train.csv"
    csv.write_bytes("\ufeffcafé.mp4 1\nb.mp4 0\n".encode("utf-8"))
    assert read_video_list(str(csv), base_dir="/v") == [("/v/café.mp4", 1), ("/v/b.mp4", 0)]


def _png_16bit(path, pixels: np.ndarray) -> None:
    """A 16-bit PNG written byte by byte (Pillow reads, but cannot write, 16-bit RGB): ``pixels`` uint16
    ``[H, W]`` (grey) or ``[H, W, 3]`` (RGB)."""
    import struct
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    height, width = pixels.shape[:2]
    colour = 0 if pixels.ndim == 2 else 2
    rows = pixels.astype(">u2").reshape(height, -1).tobytes()
    stride = len(rows) // height
    raw = b"".join(b"\x00" + rows[y * stride:(y + 1) * stride] for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, colour, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


@pytest.mark.parametrize("layout", ["grey_pil", "grey", "rgb"])
def test_a_16_bit_png_decodes_like_its_8_bit_version(tmp_path, layout):
    from PIL import Image

    from videodiff.data.imagefolder import ImageFolderClips

    ramp = np.arange(32 * 40, dtype=np.int64).reshape(32, 40) * 65535 // (32 * 40 - 1)  # 0 .. 65535
    sixteen = ramp.astype(np.uint16)
    if layout == "rgb":
        sixteen = np.stack([sixteen, sixteen[::-1], 65535 - sixteen], -1)
    eight = np.round(sixteen / 257).astype(np.uint8)
    for split, image in (("16", sixteen), ("8", eight)):
        path = tmp_path / split / "a" / "0.png"
        path.parent.mkdir(parents=True)
        if split == "16" and layout == "grey_pil":
            Image.fromarray(image).save(path)  # Pillow's own 16-bit greyscale PNG
        elif split == "16":
            _png_16bit(path, image)
        else:
            Image.fromarray(image).save(path)
    if layout == "grey_pil":
        assert Image.open(tmp_path / "16" / "a" / "0.png").mode.startswith("I")
    clips = [ImageFolderClips(str(tmp_path / split), "val", TestTransform(32, **IDENTITY))[0]["clip"]
             for split in ("16", "8")]
    assert clips[0].shape == clips[1].shape == (1, 3, 1, 32, 32)
    assert (clips[0] - clips[1]).abs().max().item() <= 1 / 255 + 1e-6
    assert 0.4 < clips[0].mean().item() < 0.6  # a ramp is half grey, not (as before) nearly white


@pytest.mark.parametrize("mode, dtype", [("I;16", "<u2"), ("I;16L", "<u2"), ("I;16B", ">u2"), ("I;16N", "=u2"),
                                         ("I", "=i4")])
def test_16_bit_image_modes_scale_to_8_bit_grey(mode, dtype):
    from PIL import Image

    from videodiff.data.imagefolder import rgb_uint8

    values = np.array([[0, 128, 257, 32767], [32896, 65279, 65534, 65535]])
    image = Image.frombytes(mode, (4, 2), values.astype(dtype).tobytes())
    assert image.mode == mode and (np.asarray(image) == values).all()
    rgb = rgb_uint8(image)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 4, 3)
    np.testing.assert_array_equal(rgb[..., 0], [[0, 0, 1, 127], [128, 254, 255, 255]])  # round(v / 257)
    assert (rgb == rgb[..., :1]).all()
