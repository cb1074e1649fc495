"""Video l-DAE: the spacetime and per-frame tokenizers (documented shapes, exact round trip, the noise's subspace, an
orthonormal full basis, an exact fold), the scope's config rules, every video l-DAE config, a tiny video l-DAE
through the real entry point (fit the PCA, train, resume, fine-tune + multi-view test), the folded encoder on clips,
and the video figures (PNG + MP4 with T/2 frames)."""
import glob
import importlib.util
import math
import os
import sys

import av
import numpy as np
import pytest
import torch
from PIL import Image

from cli_helpers import ROOT, TINY_OPTS, make_tiny_demo, read_stats, run_net

from videodiff.config import ConfigError, load_config
from videodiff.engine.build import pretrained_state
from videodiff.engine.checkpoint import save_checkpoint
from videodiff.engine.dry_run import dry_run
from videodiff.models.build import build_model
from videodiff.models.ldae import LDAE, affine_map
from videodiff.models.patchify import patchify, unpatchify
from videodiff.models.per_frame import PerFrameTokenizer
from videodiff.models.pretrained import load_pretrained
from videodiff.models.tokenizers import (PatchAETokenizer, PCAAccumulator, PCATokenizer, TokenizerFileError,
                                         save_pca)
from videodiff.models.vit import VisionTransformer
from videodiff.visualize import GAP

VIDEO_CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "K400", "ldae_*.yaml")) +
                       glob.glob(os.path.join(ROOT, "configs", "demo", "ldae_tiny_videos*.yaml")))
DEMO = os.path.join(ROOT, "configs", "demo", "ldae_tiny_videos.yaml")
LAYOUT = (2, 4, 3)                          # t_patch, p, C: D = 96 per token, 48 per frame


def token_patches(n=4096, seed=0) -> torch.Tensor:
    """[n, 96] float64 spacetime patches whose two frames share most of their content (as a video's do)."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(48, 48, generator=g, dtype=torch.float64) / 48 ** 0.5
    shared = torch.randn(n, 48, generator=g, dtype=torch.float64) @ mix
    frames = [shared + 0.3 * torch.randn(n, 48, generator=g, dtype=torch.float64) for _ in range(2)]
    return torch.cat(frames, dim=1) + 0.2


def pca_of(x: torch.Tensor):
    acc = PCAAccumulator(x.shape[1])
    acc.update(x)
    return acc.finish()


@pytest.fixture(scope="module")
def fits():
    """(patches [n, 96], spacetime fit over D = 96, per-frame fit over the frames' 48-value slices)."""
    x = token_patches()
    return x, pca_of(x), pca_of(x.reshape(-1, 48))


def per_frame(fit, d_frame, whiten=True):
    return PerFrameTokenizer(PCATokenizer(*fit, d=d_frame, whiten=whiten), t_patch=2)


# ---------------------------------------------------------------------------------------------- tokenizers
def test_spacetime_pca_round_trips_a_clip_exactly_at_d_equal_D_and_its_noise_lies_in_the_first_d(fits):
    _, spacetime, _ = fits
    clip = torch.randn(2, 3, 4, 8, 8)
    x0, grid = patchify(clip, 2, 4), (2, 2, 2)                                  # [2, 8, 96]
    full = PCATokenizer(*spacetime, d=96)
    torch.testing.assert_close(unpatchify(full.decode(full.encode(x0, grid), grid), 2, 4, grid), clip,
                               atol=1e-4, rtol=0)
    model = LDAE(PCATokenizer(*spacetime, d=8), patch_size=4, t_patch=2, embed_dim=32, depth=2, num_heads=4,
                 num_steps=100)
    z0 = model.tokenizer.encode(x0)
    noisy = model.network_input(model.add_noise(z0, torch.tensor([90, 90]), torch.randn_like(z0)), grid)
    delta = model.tokenizer.full_coefficients(noisy - model.tokenizer.decode(z0))   # the noise, in the full basis
    assert delta[..., :8].abs().max() > 0.1 and delta[..., 8:].abs().max() < 1e-4


def test_per_frame_and_spacetime_tokenizers_have_the_documented_shapes(fits):
    x, spacetime, frame_fit = fits
    st, pf = PCATokenizer(*spacetime, d=8), per_frame(frame_fit, 4)
    assert (st.D, st.d, pf.D, pf.d) == (96, 8, 96, 8)                           # d per token = t_patch x d_frame
    tokens = x[:15].float().reshape(3, 5, 96)
    assert st.encode(tokens).shape == pf.encode(tokens, grid=(1, 1, 5)).shape == (3, 5, 8)
    assert pf.decode(pf.encode(tokens)).shape == (3, 5, 96)
    z = pf.encode(tokens)
    for k in range(2):                  # frame-major: frame k (values 48k ..) -> components 4k .. 4k + 3
        torch.testing.assert_close(z[..., 4 * k:4 * k + 4], pf.inner.encode(tokens[..., 48 * k:48 * (k + 1)]))
    exact = per_frame(frame_fit, 48)
    torch.testing.assert_close(exact.decode(exact.encode(tokens)), tokens, atol=1e-4, rtol=0)


def test_at_equal_d_per_token_the_spacetime_basis_keeps_at_least_what_the_per_frame_one_keeps(fits):
    """PCA's rank-d optimum: the per-frame map is another rank-d projection (on the fit patches, unwhitened)."""
    x, spacetime, frame_fit = fits
    tokens = x.float()[None]
    errors = [(tok.decode(tok.encode(tokens)) - tokens).pow(2).mean().item()
              for tok in (PCATokenizer(*spacetime, d=8, whiten=False), per_frame(frame_fit, 4, whiten=False))]
    assert errors[0] < errors[1]                 # redundant frames: the spacetime basis does not store them twice


@pytest.mark.parametrize("whiten", [True, False])
def test_the_per_frame_full_basis_is_orthonormal_keeps_its_latents_first_and_folds_exactly(fits, whiten):
    x, _, frame_fit = fits
    tok = per_frame(frame_fit, 4, whiten)
    eye = torch.eye(96)
    v = tok.full_coefficients(eye[None])[0].T                                  # rows: the basis directions
    torch.testing.assert_close(v @ v.T, eye, atol=1e-5, rtol=0)
    tokens = x[:10].float().reshape(2, 5, 96)
    kept = tok.full_coefficients(tokens - tok.inner.mean.repeat(2))[..., :8]    # the first d = the latents, unscaled
    scale = tok.inner._scale().repeat(2) if whiten else torch.ones(8)
    torch.testing.assert_close(kept, tok.encode(tokens) * scale, atol=1e-4, rtol=1e-4)
    a, c = affine_map(tok)                                                     # encode(x) = x A^T + c
    torch.testing.assert_close(tokens @ a.T + c, tok.encode(tokens), atol=1e-4, rtol=1e-4)


def test_a_per_frame_ldae_folds_into_a_plain_video_vit_exactly(fits):
    _, _, frame_fit = fits
    tok = per_frame(frame_fit, 4)
    model = LDAE(tok, patch_size=4, t_patch=2, embed_dim=32, depth=4, num_heads=4, num_steps=100, predict="z0",
                 input_space="latent", output_space="latent")
    for p in model.dit.parameters():                                            # no zero-init hides anything
        torch.nn.init.normal_(p, std=0.05)
    vit = VisionTransformer(patch_size=4, t_patch=2, embed_dim=32, depth=2, num_heads=4, norm_eps=1e-6,
                            final_norm=False)
    vit.load_state_dict(model.export_encoder(10))
    clip = torch.randn(2, 3, 4, 8, 8)
    expected = model.dit.forward_encoder(tok.encode(patchify(clip, 2, 4)), torch.tensor([10, 10]), (2, 2, 2))
    torch.testing.assert_close(vit.forward_features(clip), expected, atol=1e-4, rtol=1e-4)


def test_predicting_the_image_needs_a_full_basis_per_frame_too():
    g = torch.Generator().manual_seed(0)
    ae = PatchAETokenizer(torch.zeros(48), torch.randn(4, 48, generator=g), torch.randn(4, 48, generator=g),
                          torch.ones(4))
    assert not hasattr(PerFrameTokenizer(ae, 2), "full_coefficients")
    with pytest.raises(ValueError, match="which PerFrameTokenizer does not have"):
        LDAE(PerFrameTokenizer(ae, 2), patch_size=4, t_patch=2, embed_dim=32, depth=2, num_heads=4, predict="image")


# ---------------------------------------------------------------------------------------------- configs
def test_the_scope_is_checked_before_any_work_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match="LDAE.TOKENIZER_SCOPE.*one of spacetime, frame"):
        load_config(DEMO, ["LDAE.TOKENIZER_SCOPE", "clip"])
    with pytest.raises(ConfigError, match="LDAE.LATENT_DIM.*= 15 is d per token.*use a multiple of 2"):
        load_config(DEMO, ["LDAE.TOKENIZER_SCOPE", "frame", "LDAE.LATENT_DIM", "15"])
    with pytest.raises(ConfigError, match="LDAE.TOKENIZER_SCOPE.*the conv VAE already encodes frame by frame"):
        load_config(DEMO, ["LDAE.TOKENIZER_SCOPE", "frame", "LDAE.TOKENIZER", "conv_vae", "LDAE.LATENT_DIM", "8",
                           "LDAE.PREDICT", "z0", "LDAE.INPUT_SPACE", "latent", "LDAE.OUTPUT_SPACE", "latent"])
    spacetime_file = str(tmp_path / "st.pth")
    x = token_patches(n=512)
    save_pca(spacetime_file, *pca_of(x), layout=LAYOUT, num_patches=512, source="test")
    small = ["VIT.PATCH_SIZE", "4", "VIT.EMBED_DIM", "32", "VIT.NUM_HEADS", "4", "LDAE.TOKENIZER_FILE", spacetime_file]
    assert type(build_model(load_config(DEMO, small)).tokenizer) is PCATokenizer
    with pytest.raises(TokenizerFileError, match="fitted on 2x4x4x3 patches .* config's patches are 1x4x4x3"):
        build_model(load_config(DEMO, [*small, "LDAE.TOKENIZER_SCOPE", "frame"]))


SMALL = ["VIT.EMBED_DIM", "32", "VIT.NUM_HEADS", "4", "VIT.DEPTH", "4", "LDAE.ENCODER_DEPTH", "2",
         "DATA.NUM_FRAMES", "4", "DATA.TRAIN_CROP_SIZE", "64", "DATA.TEST_CROP_SIZE", "64"]


@pytest.mark.parametrize("path", VIDEO_CONFIGS, ids=lambda p: os.path.relpath(p, os.path.join(ROOT, "configs")))
def test_every_video_ldae_config_loads_and_dry_runs(path):
    """Full size: the model is built on the meta device (its arguments are right); the dry run's forward +
    backward at a small width, depth and clip, with every other key of the config."""
    cfg = load_config(path, ["TRAIN.DRY_RUN", "True"])
    assert cfg.VIT.TEMPORAL_PATCH_SIZE == 2 and cfg.DATA.NUM_FRAMES > 1
    if cfg.MODEL.MODEL_NAME != "LDAE":
        assert cfg.LDAE.PROBE_T == 10 and cfg.VIT.NORM_EPS == 1e-6                # folded at t = 10, DiT's eps
        result = dry_run(load_config(path, ["TRAIN.DRY_RUN", "True", *SMALL, "VIT.DEPTH", "2"]))
        assert math.isfinite(result["loss"]) and result["gflops_per_clip"] > 0
        return
    with torch.device("meta"):
        model = build_model(cfg)
    assert model.dit.encoder_depth == cfg.VIT.DEPTH // 2 and model.tokenizer.d == cfg.LDAE.LATENT_DIM
    assert isinstance(model.tokenizer, PerFrameTokenizer) == (cfg.LDAE.TOKENIZER_SCOPE == "frame")
    assert (cfg.LDAE.PREDICT, cfg.LDAE.SCHEDULE, cfg.LDAE.INPUT_SPACE) == ("image", "linear_sigma", "image")
    result = dry_run(load_config(path, ["TRAIN.DRY_RUN", "True", *SMALL]))
    assert result["model"] == "LDAE" and math.isfinite(result["loss"]) and result["gflops_per_clip"] > 0


# ---------------------------------------------------------------------------------------------- the real entry point
def fit_pca_tool():
    spec = importlib.util.spec_from_file_location("fit_pca", os.path.join(ROOT, "tools", "fit_pca.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_tiny_demo(tmp_path_factory.mktemp("ldae_video"))


def test_fit_pca_fits_spacetime_and_per_frame_files_from_video_configs(demo, tmp_path, capsys):
    """The train loader's clips, cut into 2x8x8x3 tokens or into 1x8x8x3 patches of every frame; a K400-sized
    TRAIN.BATCH_SIZE with repeated augmentation is read in small batches (bounded memory)."""
    tool, files = fit_pca_tool(), {}
    for scope in ("spacetime", "frame"):
        files[scope] = str(tmp_path / f"{scope}.pth")
        assert tool.main(["--cfg", DEMO, "--num-patches", "600", "--out", files[scope], *TINY_OPTS, "VIT.DEPTH", "2",
                          "TRAIN.BATCH_SIZE", "512", "AUG.NUM_SAMPLE", "4", "DATA.PATH_TO_DATA_DIR", demo,
                          "LDAE.TOKENIZER_SCOPE", scope]) == 0
    out = capsys.readouterr().out
    assert "D = 384 (2x8x8x3 patches)" in out and "D = 192 (1x8x8x3 patches)" in out
    assert [torch.load(files[s], weights_only=True)["layout"] for s in files] == [(2, 8, 3), (1, 8, 3)]
    cfg = load_config(DEMO, [*TINY_OPTS, "VIT.DEPTH", "2", "LDAE.TOKENIZER_SCOPE", "frame",
                             "LDAE.TOKENIZER_FILE", files["frame"]])
    model = build_model(cfg)
    assert isinstance(model.tokenizer, PerFrameTokenizer) and model.tokenizer.inner.d == 16
    assert math.isfinite(model(torch.randn(2, 3, 4, 32, 32))["loss"].item())


@pytest.mark.parametrize("scope", ["spacetime", "frame"])
def test_fit_tokenizer_fits_a_patch_ae_on_video_that_the_builder_loads(demo, tmp_path, scope):
    spec = importlib.util.spec_from_file_location("fit_tokenizer", os.path.join(ROOT, "tools", "fit_tokenizer.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    opts = [*TINY_OPTS, "VIT.DEPTH", "2", "DATA.PATH_TO_DATA_DIR", demo, "LDAE.TOKENIZER", "ae",
            "LDAE.TOKENIZER_SCOPE", scope, "LDAE.TOKENIZER_FILE", str(tmp_path / "ae.pth"), "LDAE.PREDICT", "z0",
            "LDAE.OUTPUT_SPACE", "latent"]
    assert tool.main(["--cfg", DEMO, "--kind", "ae", "--steps", "20", "--num-patches", "500", *opts]) == 0
    saved = torch.load(str(tmp_path / "ae.pth"), weights_only=True)
    assert (saved["layout"], saved["d"]) == (((2, 8, 3), 32) if scope == "spacetime" else ((1, 8, 3), 16))
    model = build_model(load_config(DEMO, opts))
    assert model.tokenizer.d == 32 and math.isfinite(model(torch.randn(2, 3, 4, 32, 32))["loss"].item())


def test_a_tiny_video_ldae_fits_its_pca_trains_resumes_and_is_fine_tuned(demo, tmp_path):
    pca_file, out = str(tmp_path / "pca.pth"), str(tmp_path / "ldae")
    small = [*TINY_OPTS, "VIT.DEPTH", "2", "DATA.PATH_TO_DATA_DIR", demo, "LDAE.TOKENIZER_FILE", pca_file,
             "OUTPUT_DIR", out]
    assert fit_pca_tool().main(["--cfg", DEMO, "--num-patches", "1000", *small]) == 0   # writes LDAE.TOKENIZER_FILE
    run_net(DEMO, [*small, "SOLVER.MAX_EPOCH", "1"])
    run_net(DEMO, [*small, "SOLVER.MAX_EPOCH", "2"])                              # resumes after epoch 1
    log = open(os.path.join(out, "log.txt")).read()
    assert "resumed from" in log and "checkpoint_epoch_00001.pyth" in log
    steps = [s for s in read_stats(out) if s.get("split") == "train"]
    assert {s["epoch"] for s in steps} == {1, 2} and all(math.isfinite(s["loss"]) for s in steps)
    ft = str(tmp_path / "ft")
    run_net("configs/demo/ldae_tiny_videos_ft.yaml", [
        *TINY_OPTS, "VIT.DEPTH", "1", "DATA.PATH_TO_DATA_DIR", demo, "OUTPUT_DIR", ft, "SOLVER.MAX_EPOCH", "1",
        "TEST.ENABLE", "True", "TRAIN.CHECKPOINT_FILE_PATH", os.path.join(out, "checkpoints",
                                                                           "checkpoint_epoch_00002.pyth")])
    log = open(os.path.join(ft, "log.txt")).read()
    assert "folded at t = 10 into a plain ViT" in log and "the first 1 of 2 DiT blocks" in log
    final = [s for s in read_stats(ft) if s.get("split") == "test_final"]
    assert final and final[0]["num_videos"] == 4 and math.isfinite(final[0]["top1_acc"])


def saved_ldae(tmp_path, scope: str, *extra):
    """A random-init tiny video l-DAE (its PCA fitted on random patches) saved with its config, as training does."""
    layout = (2, 8, 3) if scope == "spacetime" else (1, 8, 3)
    pca = str(tmp_path / f"pca_{scope}.pth")
    acc = PCAAccumulator(layout[0] * 192)
    acc.update(torch.randn(2000, layout[0] * 192, dtype=torch.float64))
    save_pca(pca, *acc.finish(), layout=layout, num_patches=2000, source="test")
    cfg = load_config(DEMO, [*TINY_OPTS, "VIT.DEPTH", "2", "LDAE.TOKENIZER_SCOPE", scope, "LDAE.TOKENIZER_FILE",
                             pca, "LDAE.STEPS", "100", "OUTPUT_DIR", str(tmp_path / "run"), *extra])
    torch.manual_seed(0)
    model = build_model(cfg)
    for p in model.dit.parameters():                                            # no zero-init hides anything
        torch.nn.init.normal_(p, std=0.05)
    return model, cfg, save_checkpoint(cfg.OUTPUT_DIR, 1, model, cfg_yaml=cfg.dump())


@pytest.mark.parametrize("scope, input_space", [("spacetime", "image"), ("frame", "latent")])
def test_the_checkpoint_adapter_folds_a_video_ldae_into_the_probe_encoder(tmp_path, scope, input_space):
    ldae, _, path = saved_ldae(tmp_path, scope, "LDAE.INPUT_SPACE", input_space)
    probe_cfg = load_config(os.path.join(ROOT, "configs", "demo", "ldae_tiny_videos_linprobe.yaml"),
                            [*TINY_OPTS, "VIT.DEPTH", "1"])
    probe = build_model(probe_cfg)
    report = load_pretrained(probe, pretrained_state(probe_cfg, path), path)
    assert all(k.startswith("head.") for k in report.missing) and not report.unexpected and not report.resized
    clip = torch.randn(2, 3, 4, 32, 32)
    tokens = patchify(clip, 2, 8)
    tokens = ldae.tokenizer.encode(tokens) if input_space == "latent" else tokens
    expected = ldae.dit.forward_encoder(tokens, torch.tensor([10, 10]), (2, 4, 4))
    torch.testing.assert_close(probe.encoder.forward_features(clip), expected, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------- figures
@pytest.mark.parametrize("scope", ["spacetime", "frame"])
def test_video_figures_are_a_png_and_an_mp4_per_clip_with_frames_at_stride_two(demo, tmp_path, scope):
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import visualize as tool

    _, cfg, _ = saved_ldae(tmp_path, scope, "DATA.PATH_TO_DATA_DIR", demo)
    opts = [*TINY_OPTS, "VIT.DEPTH", "2", "LDAE.TOKENIZER_SCOPE", scope, "LDAE.TOKENIZER_FILE",
            cfg.LDAE.TOKENIZER_FILE, "LDAE.STEPS", "100", "DATA.PATH_TO_DATA_DIR", demo, "OUTPUT_DIR", cfg.OUTPUT_DIR]
    assert tool.main(["--cfg", DEMO, "--num", "2", "--ldae-steps", "20,99", *opts]) == 0
    vis = os.path.join(cfg.OUTPUT_DIR, "vis")
    assert sorted(os.listdir(vis)) == ["ldae_denoising.png", "ldae_filters.png", "ldae_noise.png",
                                       "ldae_video_000.mp4", "ldae_video_000.png", "ldae_video_001.mp4",
                                       "ldae_video_001.png"]
    rows, cols = 1 + 2 * 2, 4 // 2                     # original + (noisy, denoised) x 2 steps; T = 4 at stride 2
    grid = np.asarray(Image.open(os.path.join(vis, "ldae_video_000.png")))
    assert grid.shape == (rows * 32 + (rows - 1) * GAP, cols * 32 + (cols - 1) * GAP, 3)
    original, noisy = grid[:32, :32].astype(int), grid[3 * (32 + GAP):3 * (32 + GAP) + 32, :32].astype(int)
    assert np.abs(original - noisy).mean() > 5                                   # t = 99: visibly noised
    with av.open(os.path.join(vis, "ldae_video_000.mp4")) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == cols and frames[0].shape == (rows * 32 + (rows - 1) * GAP, 32, 3)
    filters = np.asarray(Image.open(os.path.join(vis, "ldae_filters.png")))
    width = 32 * (2 if scope == "spacetime" else 1)      # a spacetime direction: its 2 frames side by side
    assert filters.shape == (4 * 32 + 3 * GAP, 8 * width + 7 * GAP, 3)
