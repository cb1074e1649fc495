"""tools/visualize.py end to end on a tiny random-init DiffMAE checkpoint: the files it writes and their grid sizes
(images: rows x 5 columns; video: 3 rows x frames at stride 2, PNG + MP4 / GIF), and what the cells show."""
import os
import sys

import av
import numpy as np
import pytest
import torch
from PIL import Image

from cli_helpers import ROOT, TINY_OPTS, make_tiny_demo
from videodiff.config import load_config
from videodiff.engine.checkpoint import save_checkpoint
from videodiff.models.build import build_model
from videodiff.visualize import GAP, MASKED_GREY, pixel_mask, tile

sys.path.insert(0, os.path.join(ROOT, "tools"))
import visualize as tool  # noqa: E402

DIFFMAE = ["MODEL.MODEL_NAME", "DiffMAE", "DIFFMAE.DECODER_DEPTH", "1", "DIFFMAE.DECODER_EMBED_DIM", "32",
           "DIFFMAE.DECODER_NUM_HEADS", "4", "DIFFUSION.STEPS", "100", "MASK.RATIO", "0.75"]
IMAGES = ["TRAIN.DATASET", "imagefolder", "TEST.DATASET", "imagefolder", "DATA.NUM_FRAMES", "1",
          "VIT.TEMPORAL_PATCH_SIZE", "1"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_tiny_demo(tmp_path_factory.mktemp("vis"))


def checkpointed(tmp_path, opts):
    """A random-init DiffMAE saved as OUTPUT_DIR's newest checkpoint; returns the overrides that find it."""
    opts = TINY_OPTS + DIFFMAE + opts + ["OUTPUT_DIR", str(tmp_path / "run")]
    torch.manual_seed(0)
    save_checkpoint(str(tmp_path / "run"), 1, build_model(load_config(None, opts)))
    return opts


def cell(image, row, col, size=32):
    return image[row * (size + GAP):row * (size + GAP) + size, col * (size + GAP):col * (size + GAP) + size]


def test_image_grid_has_original_masked_and_three_steps_per_row(demo, tmp_path):
    opts = checkpointed(tmp_path, IMAGES + ["DATA.PATH_TO_DATA_DIR", os.path.join(demo, "images")])
    assert tool.main(["--cfg", os.path.join(ROOT, "configs/demo/diffmae_tiny.yaml"), "--num", "3", "--steps", "4",
                      *opts]) == 0
    image = np.asarray(Image.open(tmp_path / "run" / "vis" / "images.png"))
    assert image.shape == (3 * 32 + 2 * GAP, 5 * 32 + 4 * GAP, 3)          # 3 samples x 5 columns
    original, masked, output = cell(image, 0, 0), cell(image, 0, 1), cell(image, 0, 4)
    visible = ~(masked == MASKED_GREY).all(-1)
    assert 0 < visible.mean() < 0.5                                          # 75% of the tokens are grey
    assert np.array_equal(output[visible], original[visible])                # generation keeps visible pixels


def test_video_writes_png_and_mp4_with_frames_at_stride_two(demo, tmp_path):
    opts = checkpointed(tmp_path, ["DATA.PATH_TO_DATA_DIR", demo])
    out = tmp_path / "figs"
    assert tool.main(["--cfg", os.path.join(ROOT, "configs/demo/diffmae_tiny.yaml"), "--num", "2", "--steps", "3",
                      "--mask", "center", "--mask-ratio", "0.25", "--out", str(out), *opts]) == 0
    assert sorted(os.listdir(out)) == ["video_000.mp4", "video_000.png", "video_001.mp4", "video_001.png"]
    strip = np.asarray(Image.open(out / "video_000.png"))
    assert strip.shape == (3 * 32 + 2 * GAP, 2 * 32 + GAP, 3)               # rows orig / masked / output, T=4 / 2
    assert (cell(strip, 1, 0)[12:20, 12:20] == MASKED_GREY).all()            # the centre block is masked
    with av.open(str(out / "video_000.mp4")) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 2 and frames[0].shape == (3 * 32 + 2 * GAP, 32, 3)


def test_gif_option_and_errors(demo, tmp_path, capsys):
    opts = checkpointed(tmp_path, ["DATA.PATH_TO_DATA_DIR", demo])
    cfg = os.path.join(ROOT, "configs/demo/diffmae_tiny.yaml")
    assert tool.main(["--cfg", cfg, "--num", "1", "--steps", "2", "--video-format", "gif", *opts]) == 0
    assert Image.open(tmp_path / "run" / "vis" / "video_000.gif").n_frames == 2
    assert tool.main(["--cfg", cfg, "--num", "99", *opts]) == 2
    assert "the val split has 4 items" in capsys.readouterr().err
    assert tool.main(["--cfg", cfg, *opts[:-1], str(tmp_path / "empty")]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_grid_helpers_sizes_and_pixel_mask():
    cells = [[np.zeros((4, 6, 3), np.uint8)] * 3] * 2
    assert tile(cells).shape == (2 * 4 + GAP, 3 * 6 + 2 * GAP, 3)
    mask = pixel_mask(torch.tensor([True, False, False, True]), (2, 1, 2), t_patch=2, patch=3)
    assert mask.shape == (4, 3, 6) and mask[0, :, :3].all() and not mask[0, :, 3:].any() and mask[3, :, 3:].all()


def test_ldae_figures_noise_denoising_and_filters(demo, tmp_path):
    """An l-DAE checkpoint gets its paper's Figs. 6-8: clean | (pixel, latent) noise per sigma; clean | (noisy,
    denoised) per step; the PCA's first 32 directions as 8 x 8 x 3 filters."""
    from videodiff.models.tokenizers import PCAAccumulator, save_pca

    acc = PCAAccumulator(192)
    acc.update(torch.randn(1000, 192, dtype=torch.float64))
    pca = str(tmp_path / "pca.pth")
    save_pca(pca, *acc.finish(), layout=(1, 8, 3), num_patches=1000, source="test")
    opts = TINY_OPTS + IMAGES + ["MODEL.MODEL_NAME", "LDAE", "VIT.DEPTH", "2", "LDAE.TOKENIZER_FILE", pca,
                                 "LDAE.STEPS", "100",
                                 "DATA.PATH_TO_DATA_DIR", os.path.join(demo, "images"),
                                 "OUTPUT_DIR", str(tmp_path / "run")]
    torch.manual_seed(0)
    save_checkpoint(str(tmp_path / "run"), 1, build_model(load_config(None, opts)))
    assert tool.main(["--cfg", os.path.join(ROOT, "configs/demo/ldae_tiny_images.yaml"), "--num", "2",
                      "--sigmas", "0.5,1.0", "--ldae-steps", "0,50,99", *opts]) == 0
    vis = tmp_path / "run" / "vis"
    noise = np.asarray(Image.open(vis / "ldae_noise.png"))
    assert noise.shape == (2 * 32 + GAP, 5 * 32 + 4 * GAP, 3)                 # clean + 2 sigmas x (pixel, latent)
    assert np.array_equal(cell(noise, 0, 0), cell(np.asarray(Image.open(vis / "ldae_denoising.png")), 0, 0))
    assert not np.array_equal(cell(noise, 0, 1), cell(noise, 0, 2))          # pixel and latent noise differ
    denoising = np.asarray(Image.open(vis / "ldae_denoising.png"))
    assert denoising.shape == (2 * 32 + GAP, 7 * 32 + 6 * GAP, 3)             # clean + 3 steps x (noisy, denoised)
    assert np.asarray(Image.open(vis / "ldae_filters.png")).shape == (4 * 32 + 3 * GAP, 8 * 32 + 7 * GAP, 3)
