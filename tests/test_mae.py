"""MAE baseline: full spacetime patch prediction, loss on masked tokens only, training signal, registry."""
import pytest
import torch

from videodiff.config import load_config
from videodiff.models.build import build_model
from videodiff.models.diffmae import DiffMAE
from videodiff.models.mae import MAE


def tiny(t_patch=2, **kw):
    args = dict(patch_size=8, t_patch=t_patch, in_chans=3, embed_dim=32, depth=2, num_heads=2, decoder_depth=2,
                decoder_embed_dim=32, decoder_num_heads=4, mask_ratio=0.75)
    args.update(kw)
    return MAE(**args)


@pytest.mark.parametrize("t_patch, shape, n", [(2, (2, 3, 4, 16, 16), 8), (1, (2, 3, 1, 16, 16), 4)])
def test_mae_predicts_the_full_spacetime_patch(t_patch, shape, n):
    model = tiny(t_patch)
    clip = torch.randn(shape)
    mask = model.mask(clip)
    seen = []
    model.encoder.blocks[0].register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[1]))
    pred = model.forward_decoder(model.forward_encoder(clip, mask.ids_keep), mask, model.grid(clip))
    assert pred.shape == (2, n, t_patch * 8 * 8 * 3) == model.targets(clip).shape
    assert seen == [n // 4]                                          # only the visible quarter is encoded
    assert torch.isfinite(model(clip)["loss"])


def test_mae_loss_ignores_visible_tokens():
    model = tiny()
    clip = torch.randn(2, 3, 4, 16, 16)
    torch.manual_seed(0)
    mask = model.mask(clip)
    decode = model.forward_decoder

    def loss_with(offset_at):
        def forward_decoder(latent, m, grid):
            pred = decode(latent, m, grid).clone()
            pred[offset_at] += 1e3
            return pred
        model.forward_decoder = forward_decoder
        torch.manual_seed(0)
        return model(clip)["loss"]

    base = loss_with(torch.zeros_like(mask.mask))
    assert torch.allclose(loss_with(~mask.mask), base)               # garbage predicted at visible tokens
    assert loss_with(mask.mask) > base + 1                            # control: masked tokens count


def test_mae_norm_pix_targets_are_per_patch_normalised():
    clip = torch.randn(2, 3, 4, 16, 16) * 5 + 2
    targets = tiny(norm_pix_loss=True).targets(clip)
    assert torch.allclose(targets.mean(-1), torch.zeros(2, 8), atol=1e-4)
    assert torch.allclose(targets.std(-1), torch.ones(2, 8), atol=1e-3)


def test_mae_optimiser_steps_reduce_the_loss_and_reach_every_parameter():
    torch.manual_seed(0)
    model = tiny()
    clip = torch.randn(2, 3, 4, 16, 16)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(20):
        torch.manual_seed(0)                                         # same mask every step
        loss = model(clip)["loss"]
        opt.zero_grad()
        loss.backward()
        if step == 0:
            assert [n for n, p in model.named_parameters() if p.grad is None] == []
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_mae_and_diffmae_share_encoder_and_decoder_size_from_config():
    opts = ["VIT.EMBED_DIM", "32", "VIT.DEPTH", "2", "VIT.NUM_HEADS", "2", "DIFFMAE.DECODER_EMBED_DIM", "32",
            "DIFFMAE.DECODER_DEPTH", "2", "DIFFMAE.DECODER_NUM_HEADS", "4"]
    mae = build_model(load_config(None, ["MODEL.MODEL_NAME", "MAE"] + opts))
    diffmae = build_model(load_config(None, ["MODEL.MODEL_NAME", "DiffMAE"] + opts))
    assert isinstance(mae, MAE) and isinstance(diffmae, DiffMAE) and mae.norm_pix_loss and not diffmae.norm_pix_loss
    assert {k: v.shape for k, v in mae.encoder.state_dict().items()} == \
        {k: v.shape for k, v in diffmae.encoder.state_dict().items()}
    assert len(mae.decoder_blocks) == len(diffmae.decoder.blocks) == 2
    assert mae.decoder_embed.out_features == diffmae.decoder.encoder_proj.out_features == 32
