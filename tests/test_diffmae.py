"""DiffMAE: patch layout, top-down wiring, masked-only encoder and loss, decoder shapes, exact generation with an
oracle decoder, and that a few optimiser steps lower the loss."""
import pytest
import torch

from videodiff.config import load_config
from videodiff.models.build import build_model
from videodiff.models.decoder import DECODERS, CrossSelfDecoder, DecoderOutput, JointDecoder, top_down_sources
from videodiff.models.diffmae import DiffMAE
from videodiff.models.masking import build_mask, gather_tokens
from videodiff.models.patchify import patch_normalize, patchify, time_slice, unpatchify
from videodiff.models.timestep import TimestepEmbedder

VIDEO = dict(t_patch=2, shape=(2, 3, 4, 16, 16))   # 2x8x8 patches -> grid (2, 2, 2), N = 8
IMAGE = dict(t_patch=1, shape=(2, 3, 1, 16, 16))   # 1x8x8 patches -> grid (1, 2, 2), N = 4


def tiny(decoder_type="cross_self", t_patch=2, **kw):
    args = dict(patch_size=8, t_patch=t_patch, in_chans=3, embed_dim=32, depth=3, num_heads=2,
                decoder_type=decoder_type, decoder_depth=2, decoder_embed_dim=32, decoder_num_heads=4,
                mask_ratio=0.75, num_steps=100, rho=0.8)
    args.update(kw)
    return DiffMAE(**args)


# ---------------------------------------------------------------- patchify
def test_patchify_roundtrip_and_documented_layout():
    clip = torch.randn(2, 3, 4, 16, 24)
    patches = patchify(clip, 2, 8)                                    # grid (2, 2, 3)
    assert patches.shape == (2, 12, 2 * 8 * 8 * 3)
    assert torch.equal(unpatchify(patches, 2, 8, (2, 2, 3)), clip)
    # patches[b, n, ((dt·p + dy)·p + dx)·C + c] = clip[b, c, t·2 + dt, h·8 + dy, w·8 + dx], n = (t·H' + h)·W' + w
    b, t, h, w, dt, dy, dx, c = 1, 1, 0, 2, 1, 3, 5, 2
    n, k = (t * 2 + h) * 3 + w, ((dt * 8 + dy) * 8 + dx) * 3 + c
    assert patches[b, n, k] == clip[b, c, t * 2 + dt, h * 8 + dy, w * 8 + dx]


def test_time_slice_picks_that_frame_of_every_patch():
    clip = torch.randn(2, 3, 4, 16, 16)
    patches = patchify(clip, 2, 8)
    for index in (0, 1):
        frames = clip[:, :, index::2]                                # frame `index` of every temporal pair
        assert torch.equal(time_slice(patches, 2, 8, 3, index), patchify(frames, 1, 8))
    image = torch.randn(2, 3, 1, 16, 16)
    assert torch.equal(time_slice(patchify(image, 1, 8), 1, 8, 3, 0), patchify(image, 1, 8))
    with pytest.raises(ValueError, match="index 2"):
        time_slice(patches, 2, 8, 3, 2)


def test_patch_normalize_inverts_with_its_stats():
    x = torch.randn(2, 5, 48) * 3 + 1
    normed, mean, std = patch_normalize(x)
    assert torch.allclose(normed.mean(-1), torch.zeros(2, 5), atol=1e-5)
    assert torch.allclose(normed * std + mean, x, atol=1e-5)


# ---------------------------------------------------------------- building blocks
def test_top_down_sources_equal_and_unequal_depths():
    assert top_down_sources(4, 4) == [3, 2, 1, 0]                    # last encoder block first
    assert top_down_sources(24, 8) == [23, 20, 17, 14, 11, 8, 5, 2]  # shallower decoder: spread evenly
    assert top_down_sources(12, 8) == [11, 10, 8, 7, 5, 4, 2, 1]
    assert top_down_sources(4, 8) == [3, 3, 2, 2, 1, 1, 0, 0]        # deeper decoder: blocks repeat
    assert top_down_sources(12, 1) == [11]
    with pytest.raises(ValueError, match="decoder_depth"):
        top_down_sources(12, 0)


def test_timestep_embedder_shape_and_distinct_steps():
    emb = TimestepEmbedder(32)
    out = emb(torch.tensor([0, 1, 999]))
    assert out.shape == (3, 32)
    assert not torch.allclose(out[0], out[1]) and not torch.allclose(out[1], out[2])


def test_bad_decoder_type_raises_naming_it():
    with pytest.raises(ValueError, match="'bogus'.*joint, cross, cross_self"):
        tiny("bogus")
    with pytest.raises(ValueError, match="target_slice 2"):
        tiny(target_slice=2)


# ---------------------------------------------------------------- encoder sees only the visible tokens
def test_encoder_sees_exactly_the_visible_tokens():
    model = tiny(mask_ratio=0.9)
    seen = []
    model.encoder.blocks[0].register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape))
    model(torch.randn(2, 3, 4, 32, 32))                              # grid (2, 4, 4), N = 32
    assert seen == [torch.Size([2, 3, 32])]                           # round(0.1 · 32) = 3 tokens, width 32


@pytest.mark.parametrize("decoder_type", ["joint", "cross", "cross_self"])
@pytest.mark.parametrize("kind", ["video", "image"])
def test_decoder_output_shapes(decoder_type, kind):
    spec = VIDEO if kind == "video" else IMAGE
    model = tiny(decoder_type, t_patch=spec["t_patch"])
    clip = torch.randn(spec["shape"])
    n = 8 if kind == "video" else 4
    mask = model.mask(clip)
    k, m = mask.ids_keep.shape[1], mask.ids_masked.shape[1]
    assert k + m == n and k == round(0.25 * n)
    features = model.forward_encoder(clip, mask.ids_keep)           # {encoder block: [B, K, D]}
    assert sorted(features) == ([2] if decoder_type == "joint" else [1, 2])   # joint: the final output only
    assert all(f.shape == (2, k, 32) for f in features.values())
    x_t = torch.randn(2, m, 8 * 8 * 3)
    out = model.forward_decoder(features, x_t, torch.tensor([0, 99]), mask, model.grid(clip))
    assert out.pred.shape == (2, m, 8 * 8 * 3)                       # one time slice per masked token
    assert out.hidden.shape == (2, m, 32)
    assert model.targets(clip).shape == (2, n, 8 * 8 * 3)
    loss = model(clip)["loss"]
    assert loss.dim() == 0 and torch.isfinite(loss)


def test_cross_decoder_reads_encoder_blocks_top_down():
    model = tiny("cross", depth=3, decoder_depth=3)
    assert model.decoder.reads == [2, 1, 0]
    clip = torch.randn(VIDEO["shape"])
    mask = model.mask(clip)
    features = model.forward_encoder(clip, mask.ids_keep)
    x = gather_tokens(model.encoder.embed(clip)[0], mask.ids_keep)   # the blocks run by hand on the visible tokens
    blocks = []
    for block in model.encoder.blocks:
        x = block(x)
        blocks.append(x)
    for i in model.decoder.reads:           # each feature = the encoder's final LayerNorm of its block
        assert torch.allclose(features[i], model.encoder.norm(blocks[i]), atol=1e-6)
    assert torch.allclose(features[2], model.encoder.forward_features(clip, mask.ids_keep), atol=1e-6)
    seen = []                               # decoder block j attends to the shared projection of block reads[j]
    for block in model.decoder.blocks:
        block.register_forward_hook(lambda mod, inp, out: seen.append(inp[1]))
    model.forward_decoder(features, torch.randn(2, mask.ids_masked.shape[1], 192), torch.tensor([0, 1]), mask,
                          model.grid(clip))
    for j, i in enumerate(model.decoder.reads):
        assert torch.allclose(seen[j], model.decoder.encoder_proj(features[i]), atol=1e-6)


def test_a_new_decoder_variant_is_one_class_and_one_registry_line(monkeypatch):
    class ShallowJoint(JointDecoder):       # reads the encoder's middle block instead of its last
        def encoder_reads(self, encoder_depth, depth):
            return [encoder_depth // 2]

    monkeypatch.setitem(DECODERS, "shallow_joint", ShallowJoint)
    model = tiny("shallow_joint")
    assert isinstance(model.decoder, ShallowJoint) and model.decoder.reads == [1]
    ran = []
    model.encoder.blocks[2].register_forward_hook(lambda *a: ran.append(1))
    loss = model(torch.randn(VIDEO["shape"]))["loss"]
    assert torch.isfinite(loss) and ran == []  # blocks above the one it reads are not run


# ---------------------------------------------------------------- the loss sees only masked tokens
def _loss_with_fixed_draws(model, clip, seed=0):
    torch.manual_seed(seed)                                          # same mask, t and noise every call
    return model(clip)["loss"]


def test_loss_ignores_targets_at_visible_tokens():
    model = tiny("joint")
    clip = torch.randn(VIDEO["shape"])
    torch.manual_seed(0)
    mask = model.mask(clip)                                          # the mask forward will draw with seed 0
    clean = model.targets(clip)
    base = _loss_with_fixed_draws(model, clip)

    def perturbed(at):
        def targets(c):
            out = clean.clone()
            out[at] += 1e3
            return out
        return targets

    model.targets = perturbed(~mask.mask)                            # garbage at every visible token's target
    assert torch.equal(_loss_with_fixed_draws(model, clip), base)
    first_masked = torch.zeros_like(mask.mask)
    first_masked[0, mask.ids_masked[0, 0]] = True
    model.targets = perturbed(first_masked)                           # control: one masked token changes it
    assert _loss_with_fixed_draws(model, clip) > base + 1


# ---------------------------------------------------------------- generation
@pytest.mark.parametrize("decoder_type", ["joint", "cross_self"])
@pytest.mark.parametrize("target_slice", [0, 1])
def test_generate_with_oracle_decoder_reproduces_masked_region(decoder_type, target_slice):
    model = tiny(decoder_type, target_slice=target_slice).eval()
    clip = torch.randn(VIDEO["shape"])
    truth = model.targets(clip)                                      # [B, N, p·p·C]
    model.forward_decoder = lambda enc, x_t, t, mask, grid: DecoderOutput(gather_tokens(truth, mask.ids_masked), None)
    encoder_calls = []
    model.encoder.blocks[0].register_forward_hook(lambda *a: encoder_calls.append(1))
    mask = build_mask("random", 2, (2, 2, 2), 0.75, generator=torch.Generator().manual_seed(3))
    out = model.generate(clip, mask, num_sample_steps=10, generator=torch.Generator().manual_seed(0),
                         return_intermediates_at=(99, 50, 0))
    assert len(encoder_calls) == 1                                   # blocks ran once for 10 reverse steps
    assert torch.allclose(out["x0"], gather_tokens(truth, mask.ids_masked), atol=1e-6)
    assert sorted(out["intermediates"]) == [0, 55, 99]  # chain 99, 88, ..., 55, 44, ...: 50 ties, goes noisier
    assert out["normalized"] is False
    assert out["intermediates"][99].shape == out["x0"].shape
    pasted = patchify(out["clip"], 2, 8).reshape(2, 8, 2, 8 * 8 * 3)  # [B, N, frame, p·p·C]
    original = patchify(clip, 2, 8).reshape(2, 8, 2, 8 * 8 * 3)
    visible = ~mask.mask
    assert torch.equal(pasted[visible], original[visible])          # visible tokens untouched
    masked = pasted[mask.mask]                                       # [B·M, 2, p·p·C]
    assert torch.allclose(masked[:, target_slice], original[mask.mask][:, target_slice], atol=1e-6)
    assert torch.equal(masked[:, 0], masked[:, 1])                   # the other frame holds the same slice


def test_generate_with_oracle_is_exact_when_frames_repeat():
    model = tiny("cross").eval()
    clip = torch.randn(2, 3, 2, 16, 16).repeat_interleave(2, dim=2)  # both frames of every patch equal
    truth = model.targets(clip)
    model.forward_decoder = lambda enc, x_t, t, mask, grid: DecoderOutput(gather_tokens(truth, mask.ids_masked), None)
    out = model.generate(clip, num_sample_steps=4, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out["clip"], clip, atol=1e-6)
    assert out["intermediates"] == {}


def test_generate_and_one_step_shapes_with_the_real_decoder():
    model = tiny("cross_self", t_patch=1).eval()
    clip = torch.randn(IMAGE["shape"])
    mask = model.mask(clip, torch.Generator().manual_seed(0))
    out = model.generate(clip, mask, num_sample_steps=3, generator=torch.Generator().manual_seed(1))
    assert out["x0"].shape == (2, 3, 8 * 8 * 3) and out["clip"].shape == clip.shape
    one = model.one_step_x0(clip, mask, t=50, generator=torch.Generator().manual_seed(2))
    assert one["pred"].shape == one["target"].shape == (2, 3, 8 * 8 * 3) and one["mse"].dim() == 0


# ---------------------------------------------------------------- training signal
@pytest.mark.parametrize("decoder_type", ["joint", "cross", "cross_self"])
def test_every_parameter_gets_a_gradient(decoder_type):
    model = tiny(decoder_type)
    model(torch.randn(VIDEO["shape"]))["loss"].backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_optimiser_steps_reduce_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    model = tiny("cross_self")
    clip = torch.randn(VIDEO["shape"])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(20):
        loss = _loss_with_fixed_draws(model, clip)                   # fixed mask, t and noise
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


# ---------------------------------------------------------------- configs and registry
@pytest.mark.parametrize("path, grid, slice_dim", [
    ("configs/K400/diffmae_vitl.yaml", (8, 14, 14), 768),
    ("configs/K400/diffmae_vitl14.yaml", (8, 16, 16), 588),
    ("configs/ImageNet/diffmae_vitb.yaml", (1, 14, 14), 768),
    ("configs/ImageNet/diffmae_vitl.yaml", (1, 14, 14), 768),
    ("configs/ImageNet/diffmae_vith.yaml", (1, 16, 16), 588),
])
def test_recipe_configs_load(path, grid, slice_dim):
    cfg = load_config(path)
    assert cfg.MODEL.MODEL_NAME == "DiffMAE"
    p, tp = cfg.VIT.PATCH_SIZE, cfg.VIT.TEMPORAL_PATCH_SIZE
    s = cfg.DATA.TRAIN_CROP_SIZE
    assert (cfg.DATA.NUM_FRAMES // tp, s // p, s // p) == grid and p * p * cfg.VIT.IN_CHANNELS == slice_dim


def test_demo_config_builds_diffmae():
    cfg = load_config("configs/demo/diffmae_tiny.yaml")
    model = build_model(cfg)
    assert isinstance(model, DiffMAE) and isinstance(model.decoder, CrossSelfDecoder) and len(model.decoder.blocks) == 2
    assert model.decoder.reads == [3, 1] and model.diffusion.num_steps == 1000
