"""Bad media loses nothing: every kind of unreadable file is named, skipped in training (bounded retries,
listed in skipped_videos.txt and the stats), excluded from test metrics with a count, and too many stop the
run with the count. Nothing ever reaches the collate as None.
"""
import os
import shutil

import av
import numpy as np
import pytest
import torch

from cli_helpers import TINY_OPTS, make_tiny_demo, read_stats, run_net
from test_data import IDENTITY, cfg_for, make_image_folder, ramp_video, write_csv
from test_data_decoding import backends
from videodiff.data import build_loader, set_loader_epoch
from videodiff.data.bad_media import drop_unreadable
from videodiff.data.decoding import open_video
from videodiff.data.encoding import write_video
from videodiff.data.imagefolder import ImageFolderClips
from videodiff.data.kinetics import KineticsDataset
from videodiff.data.media_errors import ImageDecodeError, TooManyBadFiles, VideoDecodeError
from videodiff.data.transforms import TestTransform, TrainTransform
from videodiff.engine.distributed import DistInfo
from videodiff.engine.evaluate import evaluate

CFG = "configs/demo/vit_tiny_supervised.yaml"


def good_video(path):
    frames = np.random.default_rng(0).integers(0, 255, (20, 32, 64, 3), dtype=np.uint8)
    write_video(str(path), frames)
    return str(path)


def faststart_copy(src, dst):
    """The same video with its index (moov) first, so a cut keeps the header and loses frames."""
    with av.open(src) as inp, av.open(dst, "w", options={"movflags": "faststart"}) as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(inp.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)


def make_bad(kind, path, good):
    """Write one kind of unreadable video at ``path`` (``good``: a readable mp4 to damage)."""
    data = open(good, "rb").read()
    if kind == "zero_byte":
        open(path, "wb").close()
    elif kind == "truncated":  # the index (moov) is at the end: half a file has none
        open(path, "wb").write(data[:len(data) // 2])
    elif kind == "truncated_frames":  # index first: the header survives, the later frames do not
        faststart_copy(good, path + ".full.mp4")
        full = open(path + ".full.mp4", "rb").read()
        open(path, "wb").write(full[:int(len(full) * 0.6)])
    elif kind == "not_a_video":
        open(path, "w").write("this is a text file with a video's name\n" * 10)
    elif kind == "garbled":  # intact container, scrambled H.264 payload
        payload = bytearray(data)
        start = data.find(b"mdat") + 40
        for k in range(start, start + (len(data) - start) // 2):
            payload[k] = (payload[k] * 7 + 13) % 256
        open(path, "wb").write(bytes(payload))
    elif kind == "directory":  # a folder with a video's name (a half-copied data set, a stray mkdir)
        os.makedirs(path)
    elif kind == "audio_only":
        with av.open(path, "w") as out:
            stream = out.add_stream("aac", rate=16000)
            for k in range(4):
                frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
                frame.sample_rate, frame.pts = 16000, k * 1024
                out.mux(stream.encode(frame))
            out.mux(stream.encode())
    return path  # "missing": nothing written


KINDS = ["zero_byte", "truncated", "truncated_frames", "not_a_video", "garbled", "audio_only", "missing", "directory"]


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_of_bad_video_is_a_decode_error_naming_the_file(tmp_path, kind, backend):
    path = make_bad(kind, str(tmp_path / f"{kind}.mp4"), good_video(tmp_path / "good.mp4"))
    with pytest.raises(VideoDecodeError) as err:
        with open_video(path, backend) as video:
            video.decode(list(range(0, video.num_frames, 2)))
    assert err.value.path == path and path in str(err.value)


@pytest.mark.parametrize("kind", ["zero_byte", "truncated", "not_an_image", "missing", "directory"])
def test_every_kind_of_bad_image_is_skipped_in_training(tmp_path, kind):
    make_image_folder(tmp_path, "train", {"a": 2})
    bad = tmp_path / "train" / "a" / "0.png"
    if kind == "zero_byte":
        bad.write_bytes(b"")
    elif kind == "truncated":
        bad.write_bytes(bad.read_bytes()[:60])
    elif kind == "not_an_image":
        bad.write_text("not a png")
    elif kind == "directory":  # a folder named like an image: listed by its name, unreadable as an image
        bad.unlink()
        bad.mkdir()
    dataset = ImageFolderClips(str(tmp_path / "train"), "train", TrainTransform(16, **IDENTITY), max_retries=5)
    val = ImageFolderClips(str(tmp_path / "train"), "val", TestTransform(16, **IDENTITY))
    if kind == "missing":
        bad.unlink()  # listed when the datasets were built, gone since
    item = dataset[0]
    assert item["index"] == 1 and item["skipped"][0][0] == str(bad)
    with pytest.raises(ImageDecodeError, match=str(bad)):
        val._load(0)
    assert val[0]["valid"] is False and val[0]["clip"].shape == (1, 3, 1, 16, 16)


def broken_list(tmp_path, num_good=3):
    """A list of good ramp videos followed by one of each bad kind; returns (csv, bad paths)."""
    good = good_video(tmp_path / "source.mp4")
    lines = [f"{ramp_video(tmp_path / f'good{i}.mp4')} 0" for i in range(num_good)]
    bad = [make_bad(kind, str(tmp_path / f"{kind}.mp4"), good) for kind in KINDS]
    return lines + [f"{path} 1" for path in bad], bad


def test_training_retries_other_samples_and_lists_every_bad_file_exactly(tmp_path):
    lines, bad = broken_list(tmp_path)
    write_csv(tmp_path, "train.csv", lines)
    cfg = cfg_for(tmp_path, "TRAIN.BATCH_SIZE", 5, "DATA_LOADER.NUM_WORKERS", 1, "DATA.MAX_RETRIES", 30)
    loader = build_loader(cfg, "train")
    set_loader_epoch(loader, 0)
    skipped, labels = set(), []
    for batch in loader:  # a real worker process: the record travels in the batch
        assert batch["clip"].shape == (5, 3, 4, 16, 16) and bool(batch["valid"].all())
        skipped |= {path for path, _ in batch["skipped"]}
        labels += batch["label"].tolist()
    assert labels == [0] * 10  # every clip came from a good video (label 0); the bad ones are labelled 1
    assert skipped == set(bad)


def test_retries_are_bounded_and_the_error_says_how_many_failed(tmp_path):
    csv = write_csv(tmp_path, "train.csv", [f"{tmp_path / f'{i}.mp4'} 0" for i in range(3)])  # none exists
    dataset = KineticsDataset(csv, "train", 4, 2, TrainTransform(16), max_retries=4)
    with pytest.raises(TooManyBadFiles, match=r"5 files in a row could not be read \(DATA.MAX_RETRIES = 4\)"):
        dataset[0]


def test_test_views_of_a_bad_video_become_flagged_placeholders_and_are_dropped(tmp_path):
    lines, bad = broken_list(tmp_path, num_good=2)
    csv = write_csv(tmp_path, "test.csv", lines[:3])  # good0, good1, zero_byte
    dataset = KineticsDataset(csv, "test", 4, 2, TestTransform(32, **IDENTITY), num_views=2)
    items = [dataset[k] for k in range(len(dataset))]
    assert [it.get("valid", True) for it in items] == [True] * 4 + [False] * 2
    assert items[4]["clip"].shape == items[0]["clip"].shape == (1, 3, 4, 32, 32)
    assert items[4]["skipped"][0][0] == bad[0] and (items[5]["index"], items[5]["view"]) == (2, 1)
    failed = {}
    batch = drop_unreadable({"clip": torch.zeros(3, 1), "index": torch.tensor([1, 2, 2]),
                             "valid": torch.tensor([True, False, False]), "skipped": [(bad[0], "x")] * 2}, failed)
    assert failed == {2: bad[0]} and batch["index"].tolist() == [1]


def test_evaluation_excludes_failed_videos_with_a_count_and_stops_above_the_fraction(tmp_path):
    lines, bad = broken_list(tmp_path, num_good=3)
    write_csv(tmp_path, "val.csv", lines[:5])  # 3 good, zero_byte, truncated
    cfg = cfg_for(tmp_path, "DATA.MAX_FAILED_FRACTION", 0.5, "TEST.BATCH_SIZE", 2)
    model = torch.nn.Linear(1, 1)
    model.forward = lambda clip, label=None: {"logits": torch.zeros(len(clip), 3), "loss": torch.zeros(())}
    result = evaluate(model, build_loader(cfg, "val"), cfg, DistInfo(), split="val")
    assert result["failed_videos"] == 2 and result["num_videos"] == 3
    strict = cfg_for(tmp_path, "DATA.MAX_FAILED_FRACTION", 0.2, "TEST.BATCH_SIZE", 2)
    with pytest.raises(TooManyBadFiles, match=r"2 of 5 val videos \(40.0%\) could not be read"):
        evaluate(model, build_loader(strict, "val"), strict, DistInfo(), split="val")


# ---------------------------------------------------------------- end to end, through tools/run_net.py
BROKEN_TRAIN = {1: "zero_byte", 3: "truncated", 5: "not_a_video", 7: "missing", 9: "garbled"}


@pytest.fixture(scope="module")
def broken_demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("broken")
    data = make_tiny_demo(root)
    good = os.path.join(data, "videos", "train", "train_00000.mp4")
    shutil.copy(good, str(root / "good.mp4"))
    bad = []
    for i, kind in BROKEN_TRAIN.items():
        path = os.path.join(data, "videos", "train", f"train_{i:05d}.mp4")
        os.remove(path)
        bad.append(make_bad(kind, path, str(root / "good.mp4")))
    os.remove(os.path.join(data, "videos", "test", "test_00002.mp4"))  # one test video missing
    return data, bad


def opts(data, out, *extra):
    return TINY_OPTS + ["DATA.PATH_TO_DATA_DIR", data, "OUTPUT_DIR", out, "SOLVER.MAX_EPOCH", "2",
                        "DATA_LOADER.NUM_WORKERS", "1", "TEST.NUM_ENSEMBLE_VIEWS", "2", *extra]


def test_run_with_bad_files_finishes_and_lists_exactly_the_skipped_ones(broken_demo, tmp_path):
    data, bad = broken_demo
    out = str(tmp_path / "run")
    proc = run_net(CFG, opts(data, out, "DATA.MAX_FAILED_FRACTION", "0.5"))
    listed = [line.split("\t") for line in open(os.path.join(out, "skipped_videos.txt")).read().splitlines()]
    assert sorted(path for path, _ in listed) == sorted(bad) and all(reason for _, reason in listed)
    epochs = [s for s in read_stats(out) if s["split"] == "train_epoch"]
    assert [(s["epoch"], s["skipped_videos"], s["skipped_videos_total"]) for s in epochs] == [(1, 5, 5), (2, 5, 5)]
    final = [s for s in read_stats(out) if s["split"] == "test_final"][-1]
    assert final["failed_videos"] == 1 and final["num_videos"] == 3
    for path in bad + [os.path.join(data, "videos", "test", "test_00002.mp4")]:
        assert path in proc.stdout  # a warning names every file


def test_too_many_bad_files_stop_the_run_with_the_count_after_saving_the_epoch(broken_demo, tmp_path):
    data, _ = broken_demo
    out = str(tmp_path / "run")
    proc = run_net(CFG, opts(data, out), check=False)  # default DATA.MAX_FAILED_FRACTION 0.05
    assert proc.returncode == 2
    assert "5 of 12 training files (41.7%) could not be read" in proc.stderr
    assert "skipped_videos.txt" in proc.stderr and "Traceback" not in proc.stderr
    assert os.listdir(os.path.join(out, "checkpoints")) == ["checkpoint_epoch_00001.pyth"]


def test_a_directory_in_a_test_list_becomes_a_flagged_placeholder(tmp_path):
    good = ramp_video(tmp_path / "good.mp4")
    folder = make_bad("directory", str(tmp_path / "folder.mp4"), good)
    csv = write_csv(tmp_path, "test.csv", [f"{good} 0", f"{folder} 1"])
    dataset = KineticsDataset(csv, "test", 4, 2, TestTransform(32, **IDENTITY))
    item = dataset[1]
    assert item["valid"] is False and item["clip"].shape == dataset[0]["clip"].shape
    assert item["skipped"][0][0] == folder and "directory" in item["skipped"][0][1]


def test_a_directory_in_the_train_list_is_skipped_and_listed_across_a_resume(tmp_path):
    data = make_tiny_demo(tmp_path)
    folder = os.path.join(data, "videos", "train", "train_00002.mp4")
    os.remove(folder)
    os.makedirs(folder)
    test_folder = os.path.join(data, "videos", "test", "test_00001.mp4")
    os.remove(test_folder)
    os.makedirs(test_folder)
    out = str(tmp_path / "run")
    base = TINY_OPTS + ["DATA.PATH_TO_DATA_DIR", data, "OUTPUT_DIR", out, "DATA.MAX_FAILED_FRACTION", "0.5"]
    first = run_net(CFG, base + ["SOLVER.MAX_EPOCH", "1", "TEST.ENABLE", "False"], check=False)
    assert first.returncode == 0 and "Traceback" not in first.stderr, first.stderr[-2000:]
    resumed = run_net(CFG, base + ["SOLVER.MAX_EPOCH", "2"], check=False)  # resumes from epoch 1, then tests
    assert resumed.returncode == 0 and "Traceback" not in resumed.stderr, resumed.stderr[-2000:]
    listed = open(os.path.join(out, "skipped_videos.txt")).read().splitlines()
    assert [line.split("\t")[0] for line in listed] == [folder]  # once per run, across the restart
    final = [s for s in read_stats(out) if s["split"] == "test_final"][-1]
    assert final["failed_videos"] == 1 and final["num_videos"] == 3
    assert test_folder in resumed.stdout


@pytest.mark.parametrize("problem", ["folder", "not_utf8"])
def test_a_bad_split_list_stops_the_run_with_one_line_naming_it(tmp_path, problem):
    data = make_tiny_demo(tmp_path)
    listing = os.path.join(data, "train.csv")
    if problem == "folder":
        os.remove(listing)
        os.makedirs(listing)
    else:
        lines = open(listing, "rb").read().splitlines()
        lines[3] = lines[3].replace(b".mp4", b"\xe9.mp4")  # Latin-1, as some editors save it
        open(listing, "wb").write(b"\n".join(lines) + b"\n")
    proc = run_net(CFG, TINY_OPTS + ["DATA.PATH_TO_DATA_DIR", data, "OUTPUT_DIR", str(tmp_path / "run")], check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    message = proc.stderr.strip()
    assert len(message.splitlines()) == 1 and listing in message
    assert ("line 4" in message and "UTF-8" in message) if problem == "not_utf8" else "folder" in message
