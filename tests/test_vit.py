"""The ViT over clips: token grid, fixed positions, masking-aware encoding, head init, registry."""
import pytest
import torch

from videodiff.config import load_config
from videodiff.models.build import build_model
from videodiff.models.classifier import VitClassifier, classification_loss
from videodiff.models.patch_embed import PatchEmbed3d
from videodiff.models.pos_embed import sincos_3d
from videodiff.models.vit import VisionTransformer

TINY = dict(patch_size=8, t_patch=2, embed_dim=32, depth=2, num_heads=4)


def test_patch_embed_token_count_and_order():
    embed = PatchEmbed3d(patch_size=8, t_patch=2, in_chans=3, embed_dim=16)
    clip = torch.zeros(1, 3, 4, 16, 24)
    clip[:, :, 2:4, 8:16, 16:24] = 1.0  # only the patch at (t=1, h=1, w=2) differs
    tokens = embed(clip)
    assert tokens.shape == (1, 2 * 2 * 3, 16)
    changed = (tokens - tokens[:, :1]).abs().sum(-1)[0]
    assert changed.nonzero().flatten().tolist() == [(1 * 2 + 1) * 3 + 2]  # (t, h, w) row-major


def test_patch_embed_rejects_sizes_that_do_not_divide():
    embed = PatchEmbed3d(patch_size=16, t_patch=2)
    with pytest.raises(ValueError, match="height 280 is not divisible by its patch size 16"):
        embed(torch.zeros(1, 3, 2, 280, 224))
    with pytest.raises(ValueError, match="frames 3"):
        embed(torch.zeros(1, 3, 3, 32, 32))
    with pytest.raises(ValueError, match=r"expected a clip \[B, C, T, H, W\]"):
        embed(torch.zeros(3, 32, 32))


def test_sincos_positions_are_distinct_and_fixed():
    emb = sincos_3d(64, (2, 3, 4))
    assert emb.shape == (24, 64)
    assert torch.cdist(emb, emb).add(torch.eye(24) * 10).min() > 1e-3  # every position distinct
    assert torch.equal(emb, sincos_3d(64, (2, 3, 4)))
    # The same spatial position in two frames differs only in the temporal channels (first quarter).
    assert torch.equal(emb[0, 16:], emb[12, 16:]) and not torch.equal(emb[0, :16], emb[12, :16])


def test_vit_encodes_video_and_image_clips_with_one_set_of_weights():
    video_vit = VisionTransformer(**TINY)
    image_vit = VisionTransformer(**dict(TINY, t_patch=1))
    image_vit.load_state_dict({k: v for k, v in video_vit.state_dict().items() if "patch_embed" not in k},
                              strict=False)
    assert video_vit(torch.randn(2, 3, 4, 16, 16)).shape == (2, 2 * 2 * 2, 32)
    assert image_vit(torch.randn(2, 3, 1, 16, 16)).shape == (2, 4, 32)


def test_kept_tokens_are_encoded_as_if_the_others_did_not_exist():
    vit = VisionTransformer(**TINY).eval()
    clip = torch.randn(1, 3, 4, 16, 16)
    ids_keep = torch.tensor([[0, 3, 5]])
    part = vit.forward_features(clip, ids_keep=ids_keep)
    # Reference: embed all, keep the same tokens, run the blocks by hand.
    tokens, _ = vit.embed(clip)
    x = tokens[:, [0, 3, 5]]
    for block in vit.blocks:
        x = block(x)
    torch.testing.assert_close(part, vit.norm(x))
    per_block = vit.block_features(clip, ids_keep, [0, 1])
    assert sorted(per_block) == [0, 1] and per_block[1].shape == (1, 3, 32)
    torch.testing.assert_close(per_block[1], part)


def test_classifier_head_init_and_outputs():
    model = VitClassifier(num_classes=7, **TINY)
    assert model.head.fc.weight.std().item() == pytest.approx(2 ** -5, rel=0.25)
    assert torch.count_nonzero(model.head.fc.bias) == 0
    out = model(torch.randn(3, 3, 2, 16, 16), torch.tensor([0, 1, 6]))
    assert out["logits"].shape == (3, 7) and out["loss"].dim() == 0 and 0 <= out["acc"] <= 1
    assert "loss" not in model(torch.randn(1, 3, 2, 16, 16))


def test_soft_target_loss_matches_hard_labels_when_one_hot():
    logits = torch.randn(4, 5)
    labels = torch.tensor([0, 2, 4, 1])
    soft = torch.nn.functional.one_hot(labels, 5).float()
    torch.testing.assert_close(classification_loss(logits, soft), classification_loss(logits, labels))


def test_build_model_maps_config_to_arguments():
    cfg = load_config(None, ["VIT.EMBED_DIM", "32", "VIT.DEPTH", "3", "VIT.NUM_HEADS", "4", "VIT.PATCH_SIZE", "8",
                             "MODEL.NUM_CLASSES", "11", "DATA.TRAIN_CROP_SIZE", "32", "DATA.TEST_CROP_SIZE", "32"])
    model = build_model(cfg)
    assert len(model.encoder.blocks) == 3 and model.head.fc.out_features == 11


def test_unknown_model_name_lists_registered_models():
    # Refused when the config is loaded (before any work), from the registry build_model reads.
    with pytest.raises(ValueError, match=r"MODEL\.MODEL_NAME .*= 'Nope' .* VitClassifier"):
        build_model(load_config(None, ["MODEL.MODEL_NAME", "Nope"]))
