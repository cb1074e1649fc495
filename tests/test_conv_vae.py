"""l-DAE's convolutional VAE tokenizer (Table 1, Table 2's first column): shapes per token (footnote 2), its file and
its refusals, the probe through its frozen encoder as a ViT stem, the perceptual and adversarial losses, and the fit
tool plus a tiny l-DAE through the real entry point."""
import math
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from cli_helpers import ROOT, TINY_OPTS, make_tiny_demo, read_stats, run_net

from videodiff.models.conv_vae import ConvVAE, ConvVAETokenizer, gaussian_kl_map, save_conv_vae
from videodiff.models.ldae import LDAE
from videodiff.models.patchify import patchify
from videodiff.models.tokenizer_losses import (PatchDiscriminator, PerceptualLoss, _vgg16_features,
                                               adaptive_weight, hinge_d_loss)
from videodiff.models.tokenizers import TokenizerFileError
from videodiff.models.vit import VisionTransformer


def tokenizer(c=4, stride=4, p=8, t_patch=1, seed=0):
    torch.manual_seed(seed)
    vae = ConvVAE(3, c, width=8, num_res_blocks=1, stride=stride)
    return ConvVAETokenizer(vae, torch.randn(c) * 0.1, torch.rand(c) + 0.5, p, t_patch)


def test_a_token_is_a_latent_cell_block_so_d_is_four_times_the_channels():
    tok = tokenizer(c=4, stride=4, p=8)                                         # 2x2 latent cells per 8x8 patch
    assert (tok.D, tok.d) == (192, 16)
    clip, grid = torch.randn(2, 3, 1, 16, 24), (1, 2, 3)
    z = tok.encode(patchify(clip, 1, 8), grid)
    assert z.shape == (2, 6, 16)
    latent = tok(clip)                                                          # the stem's normalised latent map
    assert latent.shape == (2, 4, 1, 4, 6)
    torch.testing.assert_close(z, patchify(latent, 1, 2))
    assert tok.decode(z, grid).shape == (2, 6, 192)
    video = tokenizer(c=4, stride=8, p=16, t_patch=2)                           # spacetime: t_patch 2, 2x2 cells
    assert video.d == 2 * 2 * 2 * 4 and video.encode(torch.randn(1, 1, 1536), (1, 1, 1)).shape == (1, 1, 32)
    with pytest.raises(ValueError, match="needs the token grid"):
        tok.encode(patchify(clip, 1, 8))
    with pytest.raises(ValueError, match="not a multiple of the conv VAE stride 8"):
        ConvVAETokenizer(ConvVAE(3, 4, 8, 1, 8), torch.zeros(4), torch.ones(4), 12)


def test_encode_is_the_normalised_posterior_mean_and_decode_inverts_the_normalisation():
    tok = tokenizer()
    clip, grid = torch.randn(1, 3, 1, 16, 16), (1, 2, 2)
    mean, _ = tok.vae.encode(clip[:, :, 0])
    expected = (mean - tok.latent_mean[:, None, None]) / tok.latent_scale[:, None, None]
    torch.testing.assert_close(tok(clip)[:, :, 0], expected)
    z = tok.encode(patchify(clip, 1, 8), grid)
    decoded = tok.decode(z, grid)
    torch.testing.assert_close(decoded, patchify(tok.vae.decode(mean)[:, :, None], 1, 8), atol=1e-5, rtol=1e-5)
    assert not any(p.requires_grad for p in tok.parameters())
    assert not tok.train().training                                             # frozen: always eval


def test_the_file_round_trips_and_bad_files_are_refused_naming_the_path(tmp_path):
    tok, path = tokenizer(), str(tmp_path / "cv.pth")
    save_conv_vae(path, tok, {"recon_mse": 0.1}, 12, "test")
    loaded = ConvVAETokenizer.from_file(path, 16, 192, (1, 8, 3))
    clip, grid = torch.randn(1, 3, 1, 16, 16), (1, 2, 2)
    torch.testing.assert_close(loaded.encode(patchify(clip, 1, 8), grid), tok.encode(patchify(clip, 1, 8), grid))
    with pytest.raises(TokenizerFileError, match=r"gives d = 1 x 2\^2 x 4 = 16 .* asks for d = 32"):
        ConvVAETokenizer.from_file(path, 32, 192, (1, 8, 3))
    with pytest.raises(TokenizerFileError, match="for 3-channel images with stride 4"):
        ConvVAETokenizer.from_file(path, 16, 64, (1, 8, 1))
    with pytest.raises(FileNotFoundError, match="does not exist: fit a conv VAE"):
        ConvVAETokenizer.from_file(str(tmp_path / "missing.pth"), 16, 192, (1, 8, 3))
    data = torch.load(path, weights_only=True)
    data["state"].pop("decoder.0.weight")
    torch.save(data, path)
    with pytest.raises(TokenizerFileError, match="damaged conv VAE file"):
        ConvVAETokenizer.from_file(path, 16, 192, (1, 8, 3))
    torch.save({"kind": "pca"}, path)
    with pytest.raises(TokenizerFileError, match="is not a conv VAE tokenizer file"):
        ConvVAETokenizer.from_file(path, 16, 192, (1, 8, 3))


def test_the_exported_encoder_is_a_vit_on_the_frozen_conv_vae_latent_map():
    tok = tokenizer()
    model = LDAE(tok, patch_size=8, t_patch=1, embed_dim=32, depth=4, num_heads=4, num_steps=100,
                 schedule="linear_gamma2", predict="eps", input_space="latent", output_space="latent")
    for p in model.dit.parameters():
        nn.init.normal_(p, std=0.05)
    clip = torch.randn(2, 3, 1, 16, 16)
    out = model(clip)
    out["loss"].backward()
    assert math.isfinite(out["loss"].item()) and all(p.grad is None for p in tok.parameters())
    vit = VisionTransformer(patch_size=8, t_patch=1, embed_dim=32, depth=2, num_heads=4, norm_eps=1e-6,
                            final_norm=False, stem=tokenizer(seed=1))               # other weights: the load sets them
    vit.load_state_dict(model.export_encoder(10))                               # strict: stem + embedding + blocks
    grid = (1, 2, 2)
    expected = model.dit.forward_encoder(tok.encode(patchify(clip, 1, 8), grid), torch.tensor([10, 10]), grid)
    torch.testing.assert_close(vit.forward_features(clip), expected, atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in vit.parameters() if p.requires_grad) < sum(p.numel() for p in vit.parameters())


# ---------------------------------------------------------------------------------------------- tokenizer losses
def test_the_perceptual_loss_reads_only_a_local_vgg16_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="needs CONV_VAE.PERCEPTUAL_CHECKPOINT"):
        PerceptualLoss.from_file("", (0.5,) * 3, (0.25,) * 3)
    with pytest.raises(FileNotFoundError, match="does not exist .*nothing is downloaded"):
        PerceptualLoss.from_file(str(tmp_path / "vgg.pth"), (0.5,) * 3, (0.25,) * 3)
    torch.save({"0.weight": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="is not a torchvision VGG16 state dict"):
        PerceptualLoss.from_file(str(tmp_path / "bad.pth"), (0.5,) * 3, (0.25,) * 3)
    torch.manual_seed(0)
    features = _vgg16_features()
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, tmp_path / "vgg.pth")
    loss = PerceptualLoss.from_file(str(tmp_path / "vgg.pth"), (0.5,) * 3, (0.25,) * 3)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loss(x, x), torch.zeros(2))
    far, near = loss(x, torch.randn(2, 3, 32, 32)), loss(x, x + 0.01 * torch.randn(2, 3, 32, 32))
    assert (far > near).all() and (near > 0).all()
    assert loss(x[:, :1], x[:, :1] + 1).shape == (2,)                             # one channel: repeated to three


def test_the_hinge_loss_and_the_adaptive_weight_by_hand():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.0])
    expected = 0.5 * ((0 + 0.5 + 2) / 3 + (0 + 1 + 2) / 3)
    assert float(hinge_d_loss(real, fake)) == pytest.approx(expected)
    w = torch.randn(4, requires_grad=True)
    rec, g = (3 * w).sum(), (0.5 * w).sum()
    assert float(adaptive_weight(rec, g, w)) == pytest.approx(6.0 / (1.0 + 1e-4), rel=1e-5)
    disc = PatchDiscriminator(3)
    assert disc(torch.randn(2, 3, 64, 64)).shape == (2, 1, 6, 6)


def test_the_kl_of_the_prior_is_zero_and_grows_with_the_mean():
    zeros = torch.zeros(2, 4, 3, 3)
    assert torch.equal(gaussian_kl_map(zeros, zeros), torch.zeros(2))
    assert float(gaussian_kl_map(torch.ones(1, 4, 3, 3), torch.zeros(1, 4, 3, 3))[0]) == pytest.approx(18.0)


# ---------------------------------------------------------------------------------------------- the real tools
def test_fit_train_and_probe_a_tiny_conv_vae_ldae_through_the_tools(tmp_path):
    data = make_tiny_demo(tmp_path)
    images = os.path.join(data, "images")
    vae_file, out = str(tmp_path / "cv.pth"), str(tmp_path / "ldae")
    small = [*TINY_OPTS, "VIT.DEPTH", "2", "DATA.PATH_TO_DATA_DIR", images, "LDAE.TOKENIZER_FILE", vae_file,
             "CONV_VAE.WIDTH", "8", "OUTPUT_DIR", out]
    fit = subprocess.run([sys.executable, "tools/fit_tokenizer.py", "--cfg", "configs/demo/ldae_tiny_conv_vae.yaml",
                          "--kind", "conv_vae", "--steps", "3", "--stat-images", "8", *small, "CONV_VAE.ADVERSARIAL_WEIGHT",
                          "0.5"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert fit.returncode == 0, fit.stderr[-2000:]
    assert "g_adv" in fit.stdout and "d_loss" in fit.stdout and f"wrote {vae_file}" in fit.stdout
    saved = torch.load(vae_file, weights_only=True)
    assert saved["kind"] == "conv_vae" and saved["num_images"] == 8 and (saved["latent_scale"] > 0).all()
    run_net("configs/demo/ldae_tiny_conv_vae.yaml", [*small, "SOLVER.MAX_EPOCH", "1"])
    assert all(math.isfinite(s["loss"]) for s in read_stats(out) if s.get("split") == "train")
    probe = [*TINY_OPTS, "VIT.DEPTH", "1", "DATA.PATH_TO_DATA_DIR", images, "OUTPUT_DIR", str(tmp_path / "probe"),
             "SOLVER.MAX_EPOCH", "1", "TRAIN.CHECKPOINT_FILE_PATH",
             os.path.join(out, "checkpoints", "checkpoint_epoch_00001.pyth")]
    refused = run_net("configs/demo/ldae_tiny_linprobe.yaml", probe, check=False)
    assert refused.returncode != 0 and f"set VIT.STEM_FILE {vae_file}" in refused.stdout + refused.stderr
    run_net("configs/demo/ldae_tiny_linprobe.yaml", [*probe, "VIT.STEM_FILE", vae_file])
    log = open(os.path.join(tmp_path / "probe", "log.txt")).read()
    assert "folded at t = 10 into a plain ViT" in log


def test_fig8_shows_the_rows_of_v_for_patch_wise_tokenizers_only():
    from videodiff.models.tokenizers import PatchAETokenizer, PCATokenizer, PixelTokenizer
    from videodiff.visualize_ldae import filter_figure, tokenizer_filters

    D = 192
    pca = PCATokenizer(torch.zeros(D), torch.eye(D), torch.ones(D), 8)
    ae = PatchAETokenizer(torch.zeros(D), torch.randn(8, D), torch.randn(8, D), torch.ones(8))
    assert torch.equal(tokenizer_filters(pca), pca.basis) and torch.equal(tokenizer_filters(ae), ae.encoder)
    assert tokenizer_filters(PixelTokenizer(D)) is None and tokenizer_filters(tokenizer()) is None
    image = filter_figure(ae.encoder, 1, 8, 3, count=8, per_row=4, zoom=2)
    assert image.ndim == 3 and image.shape[2] == 3 and image.dtype.name == "uint8"
