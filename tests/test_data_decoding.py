"""Decoding backends on real H.264 mp4 files written here: same frames everywhere, variable frame rate,
DATA.TARGET_FPS, short videos, torchcodec without FFmpeg, and files reached through iopath handlers.

Fixture frames: frame k is 12*k plus a fixed texture in [0, 8), so ``round((mean - 3.5) / 12)`` recovers k
and the texture makes "identical frames" a per-pixel claim, not a per-mean one.
"""
import os

import numpy as np
import pytest
import torch
from iopath.common.file_io import PathHandler, g_pathmgr

from test_data import IDENTITY, write_csv
from videodiff.data import decoding
from videodiff.data.decoding import BackendUnavailable, decode_frames, open_video
from videodiff.data.encoding import write_video
from videodiff.data.kinetics import KineticsDataset
from videodiff.data.sampling import Timeline, nearest_frames
from videodiff.data.transforms import TestTransform, TrainTransform

TEXTURE = np.random.default_rng(0).integers(0, 8, (32, 64, 1), dtype=np.uint8)
# A phone-like variable frame rate: mostly 25 fps with 120 ms gaps.
VFR_TIMES = np.cumsum([0.0] + [0.04 if k % 3 else 0.12 for k in range(19)])


def textured_ramp(path, num_frames=20, fps=10, times=None, width=64):
    frames = np.stack([np.broadcast_to(12 * k + TEXTURE[:, :width], (32, width, 3)) for k in range(num_frames)])
    write_video(str(path), np.ascontiguousarray(frames, dtype=np.uint8), fps=fps, times=times)
    return str(path)


def frame_ids(frames: torch.Tensor):
    return [round((float(f.float().mean()) - 3.5) / 12) for f in frames]


def backends():
    """Every backend; torchcodec is skipped, with the reason, where it cannot run, unless
    VIDEODIFF_REQUIRE_TORCHCODEC=1 (set by .ci/run once it installed FFmpeg): then it runs and fails with the reason."""
    required = os.environ.get("VIDEODIFF_REQUIRE_TORCHCODEC") == "1"
    params = []
    for name in decoding.BACKENDS:
        problem = decoding.backend_problem(name)
        marks = [pytest.mark.skip(reason=problem)] if problem and not (required and name == "torchcodec") else []
        params.append(pytest.param(name, marks=marks))
    return params


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("kind", ["constant", "variable"])
def test_every_backend_returns_the_same_frames_for_the_same_indices(tmp_path, backend, kind):
    times = VFR_TIMES if kind == "variable" else None
    path = textured_ramp(tmp_path / "v.mp4", times=times)
    indices = [5, 0, 5, 19, 12]
    reference = decode_frames(path, indices, "pyav")
    assert frame_ids(reference) == indices
    with open_video(path, backend) as video:
        assert video.num_frames == 20
        frames = video.decode(indices)
        stamps = video.timestamps()
    assert frames.dtype == torch.uint8 and frames.shape == (5, 32, 64, 3)
    assert torch.equal(frames, reference)
    expected = VFR_TIMES if times is not None else np.arange(20) / 10
    np.testing.assert_allclose(stamps, expected, atol=1e-3)


def test_decord_decodes_widths_its_frame_copy_rejects(tmp_path):
    path = textured_ramp(tmp_path / "narrow.mp4", width=48)  # decord 0.6 fails to copy 48-px-wide frames
    assert torch.equal(decode_frames(path, [3, 7], "decord"), decode_frames(path, [3, 7], "pyav"))


def test_target_fps_ticks_map_to_the_nearest_frame_in_time():
    assert nearest_frames(np.arange(30) / 30 + 0.003, 30.0).tolist() == list(range(30))  # jitter: identity
    assert nearest_frames(np.arange(30) / 30, 15.0).tolist() == list(range(0, 30, 2))
    assert nearest_frames(np.arange(10) / 10, 20.0).tolist() == [k // 2 for k in range(20)]  # frames repeat
    # Variable rate: ticks every 40 ms land on the frame shown nearest in time, skipping across the gaps.
    assert nearest_frames(VFR_TIMES, 25.0)[:8].tolist() == [0, 0, 1, 1, 2, 3, 3, 4]
    assert len(Timeline(20)) == 20 and Timeline(20).frames([3, 19]) == [3, 19]


def test_target_fps_windows_are_even_in_time_on_variable_frame_rate_video(tmp_path):
    path = textured_ramp(tmp_path / "vfr.mp4", times=VFR_TIMES)
    csv = write_csv(tmp_path, "val.csv", [f"{path} 0"])
    dataset = KineticsDataset(csv, "val", 4, 5, TestTransform(32, **IDENTITY), target_fps=25.0)
    clip = dataset[0]["clip"][0]  # [C, T, H, W]: ticks 5 apart = 200 ms apart
    ids = [round((float(clip[:, t].mean()) * 255 - 3.5) / 12) for t in range(4)]
    times = VFR_TIMES[ids]
    assert np.allclose(np.diff(times), 0.2, atol=0.045)  # within one source frame of even spacing
    native = KineticsDataset(csv, "val", 4, 5, TestTransform(32, **IDENTITY))[0]["clip"][0]
    assert not torch.equal(native, clip)  # without TARGET_FPS windows step over frames, not seconds


@pytest.mark.parametrize("target_fps", [0.0, 10.0])
def test_video_shorter_than_the_window_gives_a_clip_ending_on_its_last_frame(tmp_path, target_fps):
    path = textured_ramp(tmp_path / "short.mp4", num_frames=3)
    csv = write_csv(tmp_path, "train.csv", [f"{path} 0"])
    dataset = KineticsDataset(csv, "train", 4, 2, TrainTransform(16, scale=(1.0, 1.0), aspect=(2.0, 2.0),
                                                                 flip=False, **IDENTITY), target_fps=target_fps)
    clip = dataset[0]["clip"][0]
    assert clip.shape == (3, 4, 16, 16)
    ids = [round((float(clip[:, t].mean()) * 255 - 3.5) / 12) for t in range(4)]
    assert ids == [0, 2, 2, 2]


def test_torchcodec_without_ffmpeg_says_what_to_install(tmp_path, monkeypatch):
    torchcodec = pytest.importorskip("torchcodec")
    monkeypatch.setattr(torchcodec, "ffmpeg_major_version", None)  # what torchcodec reports without FFmpeg
    with pytest.raises(BackendUnavailable, match="torchcodec needs the FFmpeg shared libraries.*apt-get install"):
        decoding.check_backend("torchcodec")
    csv = write_csv(tmp_path, "train.csv", ["never_opened.mp4 0"])
    with pytest.raises(BackendUnavailable, match="DATA.DECODING_BACKEND"):  # at construction, not per file
        KineticsDataset(csv, "train", 4, 2, TrainTransform(16), backend="torchcodec")


def test_unknown_backend_lists_the_choices():
    with pytest.raises(ValueError, match="unknown DATA.DECODING_BACKEND 'ffmpeg'.*decord, pyav, torchcodec"):
        decoding.check_backend("ffmpeg")


class FolderHandler(PathHandler):
    """``vdtest://name`` -> a file in ``root``: a stand-in for a remote store registered by a user."""

    PREFIX = "vdtest://"
    root = ""

    def _get_supported_prefixes(self):
        return [self.PREFIX]

    def _local(self, path):
        return os.path.join(self.root, path[len(self.PREFIX):])

    def _exists(self, path, **kwargs):
        return os.path.exists(self._local(path))

    def _isfile(self, path, **kwargs):
        return os.path.isfile(self._local(path))

    def _open(self, path, mode="r", buffering=-1, **kwargs):
        return open(self._local(path), mode)


@pytest.fixture
def store(tmp_path):
    if FolderHandler.PREFIX not in g_pathmgr._path_handlers:  # iopath cannot unregister: register once
        g_pathmgr.register_handler(FolderHandler())
    FolderHandler.root = str(tmp_path)
    return tmp_path


@pytest.mark.parametrize("backend", backends())
def test_list_and_videos_are_read_through_a_registered_path_handler(store, backend):
    textured_ramp(store / "a.mp4")
    (store / "train.csv").write_text("a.mp4 1\n")
    dataset = KineticsDataset("vdtest://train.csv", "val", 4, 2, TestTransform(32, **IDENTITY), backend=backend)
    assert dataset.videos == [("vdtest://a.mp4", 1)]
    clip = dataset[0]["clip"][0]
    assert [round((float(clip[:, t].mean()) * 255 - 3.5) / 12) for t in range(4)] == [6, 8, 10, 12]
