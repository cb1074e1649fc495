"""tools/check_data.py: every entry of the split lists opened in worker processes, the bad ones named with their
list line and reason, a cleaned list that the real dataset loads, and an exit status a launch script can gate on.
"""
import faulthandler
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from cli_helpers import ROOT, env_for_subprocess
from test_data import IDENTITY, cfg_for, ramp_video, write_csv
from test_data_decoding import backends
from test_media_failures import good_video, make_bad
from videodiff.data.check import Facts, check_paths, checker, list_entries
from videodiff.data.encoding import write_image
from videodiff.data.imagefolder import ImageFolderClips
from videodiff.data.kinetics import KineticsDataset
from videodiff.data.transforms import TestTransform

sys.path.insert(0, os.path.join(ROOT, "tools"))
import check_data  # noqa: E402

TOOL = os.path.join(ROOT, "tools", "check_data.py")
CFG = "configs/demo/base.yaml"


def video_data(root):
    """A Kinetics-style folder with relative paths: 3 good videos, 4 bad ones, a blank line; val.csv with 1 video."""
    videos = root / "videos"
    videos.mkdir(parents=True)
    ramp_video(videos / "good0.mp4")                                     # 20 frames, 32x32, 10 fps
    good_video(videos / "good1.mp4")                                     # 20 frames, 32x64
    make_bad("truncated_frames", str(videos / "cut.mp4"), str(videos / "good1.mp4"))  # header kept, frames lost
    make_bad("truncated", str(videos / "half.mp4"), str(videos / "good1.mp4"))       # no index at all
    (videos / "folder.mp4").mkdir()
    ramp_video(videos / "good2.mp4", num_frames=21)
    lines = ["videos/good0.mp4 0", "videos/good1.mp4 1", "", "videos/missing.mp4 0", "videos/cut.mp4 1",
             "videos/folder.mp4 2", "videos/half.mp4 0", "videos/good2.mp4 2"]
    write_csv(root, "train.csv", lines)
    write_csv(root, "val.csv", ["videos/good0.mp4 1"])
    return lines


def read_tsv(path):
    with open(path) as f:
        return [line.rstrip("\n").split("\t") for line in f]


def test_video_lists_are_checked_reported_and_cleaned_for_the_real_dataset(tmp_path):
    data, out = tmp_path / "data", tmp_path / "check"
    lines = video_data(data)
    proc = subprocess.run([sys.executable, TOOL, "--cfg", CFG, "--splits", "train", "--workers", "2", "--out",
                           str(out), "DATA.PATH_TO_DATA_DIR", str(data), "MODEL.NUM_CLASSES", "3"],
                          cwd=ROOT, env=env_for_subprocess(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # some entries unreadable
    text = proc.stdout
    assert f"train: 7 entries ({data / 'train.csv'}), 3 readable, 4 unreadable, 0 with warnings" in text
    assert "frames min/median/max: 20 / 20 / 21" in text
    assert "sizes (HxW): 32x32 (2); 32x64 (1)" in text and "fps: 10.00 (3)" in text
    assert "total duration: 0.00 h (6 s)" in text and "with 2 workers" in text
    assert "not checked, copied unchanged: val" in text

    bad = read_tsv(out / "train_unreadable.tsv")
    assert bad[0] == ["path", "line", "reason"]
    rows = {os.path.basename(path): (int(line), reason) for path, line, reason in bad[1:]}
    assert set(rows) == {"missing.mp4", "cut.mp4", "folder.mp4", "half.mp4"}
    assert rows["missing.mp4"] == (4, "file not found") and rows["folder.mp4"] == (6, "it is a directory, not a file")
    assert rows["cut.mp4"][0] == 5 and rows["half.mp4"][0] == 7
    assert all(reason for _, reason in rows.values())
    assert bad[1][0] == str(data / "videos" / "missing.mp4")  # the path the dataset opens

    report = read_tsv(out / "train_report.tsv")
    assert report[0][:4] == ["path", "line", "label", "status"] and len(report) == 8
    good2 = dict(zip(report[0], report[-1]))
    assert (good2["line"], good2["label"], good2["status"], good2["frames"]) == ("8", "2", "ok", "21")
    assert (good2["height"], good2["width"], good2["fps"], good2["duration_s"]) == ("32", "32", "10.000", "2.100")

    kept = [lines[0], lines[1], lines[7]]  # verbatim
    assert (out / "train.csv").read_text() == "".join(line + "\n" for line in kept)
    assert (out / "val.csv").read_text() == (data / "val.csv").read_text()
    hint = text.strip().splitlines()[-1].split(": ", 1)[1].split()
    assert hint == ["DATA.PATH_TO_DATA_DIR", str(out), "DATA.PATH_PREFIX", str(data)]
    cfg = cfg_for(tmp_path, *hint)
    cleaned = KineticsDataset.from_cfg(cfg, "train")
    assert cleaned.videos == [(str(data / "videos" / f"good{i}.mp4"), i) for i in range(3)]
    assert cleaned[2]["clip"].shape[2] == 4  # and they decode
    assert KineticsDataset.from_cfg(cfg, "val").videos == [(str(data / "videos" / "good0.mp4"), 1)]
    assert (out / "summary.txt").read_text().startswith("train: 7 entries")


def test_all_readable_exits_0_and_entries_are_numbered_like_the_list(tmp_path, capsys):
    ramp_video(tmp_path / "a.mp4")
    write_csv(tmp_path, "val.csv", ["", f"{tmp_path / 'a.mp4'} 0", "  ", f"{tmp_path / 'a.mp4'} 1"])
    cfg = cfg_for(tmp_path)
    kind, entries = list_entries(cfg, "val")
    assert kind == "video" and [(e.line, e.label) for e in entries] == [(2, 0), (4, 1)]
    code = check_data.main(["--cfg", CFG, "--workers", "1", "--out", str(tmp_path / "out"),
                            "DATA.PATH_TO_DATA_DIR", str(tmp_path)])
    assert code == 0
    text = capsys.readouterr().out
    assert "val: 2 entries" in text and "2 readable, 0 unreadable" in text and "all entries readable" in text
    assert read_tsv(tmp_path / "out" / "val_unreadable.tsv") == [["path", "line", "reason"]]
    assert not (tmp_path / "out" / "train.csv").exists()  # splits that do not exist are not invented


def image_data(root):
    """ImageNet-style train/: good JPEG + PNG, a 16-bit PNG, a corrupt file, a folder named like an image;
    class 'owl' holds only a corrupt image."""
    write_image(str(root / "train" / "cat" / "a.jpg"), np.full((40, 48, 3), 90, np.uint8))
    write_image(str(root / "train" / "cat" / "b.png"), np.full((20, 24, 3), 30, np.uint8))
    (root / "train" / "cat" / "c.png").write_bytes((root / "train" / "cat" / "b.png").read_bytes()[:60])
    (root / "train" / "dog").mkdir()
    Image.fromarray(np.full((16, 16), 40000, np.uint16)).save(root / "train" / "dog" / "deep.png")  # mode I;16
    (root / "train" / "dog" / "dir.jpg").mkdir()
    (root / "train" / "owl").mkdir()
    (root / "train" / "owl" / "x.jpg").write_text("not a jpeg")


def test_image_folders_are_checked_and_the_cleaned_folder_keeps_labels(tmp_path, capsys):
    data, out = tmp_path / "data", tmp_path / "check"
    image_data(data)
    code = check_data.main(["--cfg", CFG, "--workers", "2", "--out", str(out), "DATA.PATH_TO_DATA_DIR", str(data),
                            "TRAIN.DATASET", "imagefolder", "TEST.DATASET", "imagefolder", "MODEL.NUM_CLASSES", "3"])
    assert code == 1
    text = capsys.readouterr().out
    assert f"train: 6 entries ({data / 'train'}), 3 readable, 3 unreadable, 1 with warnings" in text
    assert "I;16: 16-bit image" in text and "modes: RGB (2); I;16 (1)" in text
    bad = {os.path.relpath(path, data / "train"): (line, reason)
           for path, line, reason in read_tsv(out / "train_unreadable.tsv")[1:]}
    assert set(bad) == {"cat/c.png", "dog/dir.jpg", "owl/x.jpg"}
    assert bad["dog/dir.jpg"] == ("", "it is a directory, not a file") and all(reason for _, reason in bad.values())
    report = {os.path.basename(row[0]): row for row in read_tsv(out / "train_report.tsv")[1:]}
    assert report["deep.png"][3:10] == ["ok", "1", "16", "16", "0.000", "0.000", "I;16"]
    assert "scaled to 8 bits by the loader" in report["deep.png"][10]
    assert report["a.jpg"][3:7] == ["ok", "1", "40", "48"] and report["a.jpg"][10] == ""
    assert text.strip().splitlines()[-1].endswith(f"DATA.PATH_TO_DATA_DIR {out}")  # no prefix for folders

    original = ImageFolderClips(str(data / "train"), "val", TestTransform(16, **IDENTITY))
    cleaned = ImageFolderClips(str(out / "train"), "val", TestTransform(16, **IDENTITY))
    assert cleaned.classes == original.classes == ["cat", "dog", "owl"]  # the emptied class keeps its label
    good = {("cat/a.jpg", 0), ("cat/b.png", 0), ("dog/deep.png", 1)}
    assert {(os.path.relpath(p, out / "train"), label) for p, label in cleaned.images} == good
    assert all(item["clip"].shape == (1, 3, 1, 16, 16) for item in cleaned)

    # A second check into the same folder replaces the links it wrote.
    (data / "train" / "cat" / "b.png").unlink()
    assert check_data.main(["--cfg", CFG, "--workers", "1", "--out", str(out), "DATA.PATH_TO_DATA_DIR", str(data),
                            "TRAIN.DATASET", "imagefolder", "MODEL.NUM_CLASSES", "3"]) == 1
    assert sorted(os.listdir(out / "train" / "cat")) == ["a.jpg"]


@pytest.mark.parametrize("backend", backends())
def test_header_only_damage_is_caught_by_decoding_the_last_frame(tmp_path, backend):
    good = good_video(tmp_path / "good.mp4")
    check = checker("video", backend)
    facts = check(good)
    assert (facts.ok, facts.frames, facts.height, facts.width) == (True, 20, 32, 64)
    assert facts.fps == pytest.approx(10.0) and facts.duration == pytest.approx(2.0)
    cut = make_bad("truncated_frames", str(tmp_path / "cut.mp4"), good)
    [verdict] = check_paths([cut], check, workers=1)
    assert not verdict.ok and verdict.reason


def crash_or_hang(path):
    """A stand-in decoder: segfaults on 'crash', hangs on 'hang', raises on 'odd', else reads one frame."""
    if path == "crash":
        faulthandler.disable()  # pytest's traceback dump would only add noise
        os.kill(os.getpid(), signal.SIGSEGV)
    if path == "hang":
        time.sleep(60)
    if path == "odd":
        raise KeyError("no such thing")
    return Facts(True, frames=1)


@pytest.mark.skipif(not hasattr(signal, "SIGALRM"), reason="per-entry timeouts need SIGALRM")
def test_a_file_that_crashes_or_hangs_its_worker_is_named_and_the_rest_goes_on(tmp_path):
    paths = [f"ok{i}" for i in range(6)] + ["crash"] + [f"ok{i}" for i in range(6, 12)] + ["hang", "odd", "ok12"]
    done = []
    facts = check_paths(paths, crash_or_hang, workers=2, timeout=1, progress=done.append)
    verdicts = dict(zip(paths, facts))
    assert verdicts["crash"].ok is False and verdicts["crash"].reason == "the decoder crashed its process (SIGSEGV)"
    assert verdicts["hang"].ok is False and verdicts["hang"].reason.startswith("no answer within 1 s")
    assert verdicts["odd"].reason == "KeyError: 'no such thing'"
    assert all(f.ok for p, f in verdicts.items() if p.startswith("ok")) and done


def test_usage_and_config_errors_exit_2_with_one_line(tmp_path, capsys):
    write_csv(tmp_path, "train.csv", ["a.mp4 0", "b.mp4"])
    assert check_data.main(["--cfg", CFG, "DATA.PATH_TO_DATA_DIR", str(tmp_path / "nowhere")]) == 2
    assert "no split to check" in capsys.readouterr().err
    assert check_data.main(["--cfg", CFG, "DATA.PATH_TO_DATA_DIR", str(tmp_path), "DATA.NO_SUCH_KEY", "1"]) == 2
    assert "DATA.NO_SUCH_KEY" in capsys.readouterr().err
    assert check_data.main(["--cfg", CFG, "--out", str(tmp_path), "DATA.PATH_TO_DATA_DIR", str(tmp_path)]) == 2
    assert "would overwrite the originals" in capsys.readouterr().err
    assert check_data.main(["--cfg", CFG, "--out", str(tmp_path / "o"), "DATA.PATH_TO_DATA_DIR", str(tmp_path)]) == 2
    assert "line 2: 'b.mp4'" in capsys.readouterr().err  # the dataset's own list error, before any work
    with pytest.raises(SystemExit) as exit_:
        check_data.main(["--cfg", CFG, "--splits", "trian"])
    assert exit_.value.code == 2 and "unknown split 'trian'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        check_data.main(["--help"])
    assert exit_.value.code == 0 and "Example" in capsys.readouterr().out
