"""CLIP-aided DiffMAE with a small random CLIP-shaped ViT: shapes inferred from the file, frozen and outside the state
dict, a trainable head, the extra loss reported; a missing file names the key and the path; off = pixel-only."""
from functools import partial

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer as TimmViT
from torch import nn

from videodiff.config import load_config
from videodiff.models.build import build_model
from videodiff.models.clip_target import clip_encoder_from_state, read_state_dict

TINY = ["MODEL.MODEL_NAME", "DiffMAE", "VIT.PATCH_SIZE", "8", "VIT.EMBED_DIM", "32", "VIT.DEPTH", "2",
        "VIT.NUM_HEADS", "2", "DIFFMAE.DECODER_DEPTH", "2", "DIFFMAE.DECODER_EMBED_DIM", "32",
        "DIFFMAE.DECODER_NUM_HEADS", "4", "DIFFUSION.STEPS", "50", "DATA.NUM_FRAMES", "4",
        "DATA.TRAIN_CROP_SIZE", "32", "DATA.TEST_CROP_SIZE", "32"]


def clip_shaped(path, act="quick_gelu"):
    """A random ViT laid out like timm's CLIP towers (pre-norm, class token, 64-wide heads, projection head)."""
    torch.manual_seed(0)
    model = TimmViT(img_size=32, patch_size=16, embed_dim=64, depth=2, num_heads=1, mlp_ratio=4.0, pre_norm=True,
                    class_token=True, global_pool="token", num_classes=16, act_layer=act,
                    norm_layer=partial(nn.LayerNorm, eps=1e-5))
    torch.save({"state_dict": model.state_dict()}, path)
    return model.eval()


def build(path, weight=1.0):
    return build_model(load_config(None, TINY + ["DIFFMAE.CLIP_CHECKPOINT", str(path),
                                                 "DIFFMAE.CLIP_LOSS_WEIGHT", str(weight),
                                                 "DIFFMAE.CLIP_ACT", "quick_gelu"]))


def test_encoder_is_rebuilt_from_the_file_with_identical_features(tmp_path):
    reference = clip_shaped(tmp_path / "clip.pth")
    rebuilt = clip_encoder_from_state(read_state_dict(str(tmp_path / "clip.pth")), act="quick_gelu")
    assert (rebuilt.embed_dim, len(rebuilt.blocks), rebuilt.patch_embed.img_size) == (64, 2, (32, 32))
    image = torch.randn(2, 3, 32, 32)
    assert torch.allclose(rebuilt.forward_features(image), reference.forward_features(image), atol=1e-6)
    assert not any(p.requires_grad for p in rebuilt.parameters())


def test_clip_loss_trains_the_head_only_and_stays_out_of_the_state_dict(tmp_path):
    clip_shaped(tmp_path / "clip.pth")
    model = build(tmp_path / "clip.pth", weight=0.5)
    out = model(torch.randn(2, 3, 4, 32, 32))
    assert set(out) == {"loss", "loss_pixel", "loss_clip"}
    assert torch.allclose(out["loss"], out["loss_pixel"] + 0.5 * out["loss_clip"])
    out["loss"].backward()
    assert model.clip_target.head.weight.grad.abs().sum() > 0
    keys = set(model.state_dict())
    assert {"clip_target.head.weight", "clip_target.head.bias"} <= keys
    assert not any(k.startswith("clip_target") and "head" not in k for k in keys)   # frozen CLIP not saved
    assert all(not n.startswith("clip_target") or ".head." in n for n, _ in model.named_parameters())
    targets = model.clip_target.targets(torch.randn(2, 3, 4, 32, 32), model.grid(torch.zeros(2, 3, 4, 32, 32)))
    assert targets.shape == (2, 2 * 4 * 4, 64)                                      # [B, N, D_clip]


def test_missing_file_names_the_key_and_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "clip_vitb16.pth"
    with pytest.raises(FileNotFoundError, match=r"DIFFMAE\.CLIP_CHECKPOINT.*nowhere/clip_vitb16\.pth"):
        build(missing)


def test_empty_key_is_pixel_only_diffmae():
    model = build_model(load_config(None, TINY))
    assert model.clip_target is None
    assert not any(k.startswith("clip_target") for k in model.state_dict())
    assert set(model(torch.randn(2, 3, 4, 32, 32))) == {"loss"}
