"""DiT with adaLN-Zero (l-DAE's backbone) and its fixed-t fold into a plain ViT encoder."""
import pytest
import torch

from videodiff.models.dit import DiT, fold_encoder
from videodiff.models.vit import VisionTransformer

TINY = dict(in_dim=12, out_dim=10, embed_dim=32, depth=4, num_heads=4)
GRID = (2, 2, 3)
N = 2 * 2 * 3


def randomize(model: torch.nn.Module, std: float = 0.2) -> torch.nn.Module:
    """Every parameter random (so no zero-init hides a path); seeded for reproducibility."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * std)
    return model


def inputs(batch: int = 2, t: int = 10):
    torch.manual_seed(1)
    return torch.randn(batch, N, TINY["in_dim"]), torch.full((batch,), t, dtype=torch.long)


def test_adaln_zero_blocks_are_the_identity_and_the_output_is_zero_at_init():
    torch.manual_seed(0)
    dit = DiT(**TINY)
    tokens, t = inputs()
    x, c = dit.embed_tokens(tokens, GRID), dit.condition(t)
    for block in dit.blocks:
        assert torch.equal(block(x, c), x)
    out = dit(tokens, t, GRID)
    assert out.shape == (2, N, TINY["out_dim"])
    assert torch.equal(out, torch.zeros_like(out))
    assert torch.equal(dit.forward_encoder(tokens, t, GRID), x)


@pytest.mark.parametrize("t", [0, 10, 999])
def test_folded_encoder_is_a_plain_vit_that_reproduces_the_dit_encoder_at_t(t):
    dit = randomize(DiT(**TINY)).eval()
    tokens, steps = inputs(t=t)
    expected = dit.forward_encoder(tokens, steps, GRID)

    state = {"dit." + k: v for k, v in dit.state_dict().items()}
    before = {k: v.clone() for k, v in state.items()}
    folded = fold_encoder(state, t, dit.encoder_depth, prefix="dit.")
    assert all(torch.equal(state[k], before[k]) for k in state)  # pure: the input is untouched

    vit = VisionTransformer(embed_dim=32, depth=dit.encoder_depth, num_heads=4, norm_eps=1e-6, final_norm=False)
    missing, unexpected = vit.load_state_dict(folded, strict=False)
    assert not unexpected and all(k.startswith("patch_embed.") for k in missing)  # every block weight is set
    x = dit.embed_tokens(tokens, GRID)  # patch_embed bypassed: the same embedded, positioned tokens
    with torch.no_grad():
        for block in vit.blocks.eval():
            x = block(x)
    torch.testing.assert_close(x, expected, atol=1e-5, rtol=0)


def test_fold_of_a_class_conditional_dit_uses_the_null_class_unless_given_a_label():
    dit = randomize(DiT(**TINY, num_classes=5)).eval()
    assert dit.label_embed.weight.shape[0] == 6  # 5 classes + DiT's null class
    null = fold_encoder(dit.state_dict(), 10, dit.encoder_depth)
    assert torch.equal(null["blocks.0.norm1.bias"],
                       fold_encoder(dit.state_dict(), 10, dit.encoder_depth, label=5)["blocks.0.norm1.bias"])
    assert not torch.equal(null["blocks.0.norm1.bias"],
                           fold_encoder(dit.state_dict(), 10, dit.encoder_depth, label=3)["blocks.0.norm1.bias"])
    tokens, t = inputs()
    label = torch.full((2,), 3)
    vit = VisionTransformer(embed_dim=32, depth=dit.encoder_depth, num_heads=4, norm_eps=1e-6, final_norm=False)
    vit.load_state_dict(fold_encoder(dit.state_dict(), 10, dit.encoder_depth, label=3), strict=False)
    x = dit.embed_tokens(tokens, GRID)
    with torch.no_grad():
        for block in vit.blocks:
            x = block(x)
        torch.testing.assert_close(x, dit.forward_encoder(tokens, t, GRID, label), atol=1e-5, rtol=0)


def test_conditioning_mlp_is_a_quarter_of_the_width_by_default():
    dit = DiT(**TINY)
    assert dit.cond_dim == 32 // 4
    assert dit.t_embedder.mlp[0].weight.shape == (8, 256)
    assert dit.t_embedder.mlp[2].weight.shape == (8, 8)
    for block in dit.blocks:
        assert block.adaLN_modulation[-1].weight.shape == (6 * 32, 8)
    assert dit.final_layer.adaLN_modulation[-1].weight.shape == (2 * 32, 8)
    assert DiT(**TINY, cond_dim=32).blocks[0].adaLN_modulation[-1].weight.shape == (6 * 32, 32)


def test_mlp_activation_and_norm_eps_match_the_vit_the_encoder_folds_into():
    block = DiT(**TINY).blocks[0]
    vit_block = VisionTransformer(embed_dim=32, depth=1, num_heads=4, norm_eps=1e-6).blocks[0]
    assert type(block.mlp.act) is type(vit_block.mlp.act) and block.mlp.act.approximate == "none"
    assert block.norm1.eps == vit_block.norm1.eps == 1e-6


def test_different_steps_give_different_outputs():
    dit = randomize(DiT(**TINY))
    tokens, _ = inputs()
    out = dit(tokens, torch.tensor([10, 500]), GRID)
    same_tokens = dit(tokens[:1].expand(2, -1, -1), torch.tensor([10, 500]), GRID)
    assert not torch.allclose(same_tokens[0], same_tokens[1], atol=1e-3)
    assert torch.allclose(out[0], same_tokens[0])


def test_label_changes_the_output_only_when_class_conditional():
    tokens, t = inputs()
    unconditional = randomize(DiT(**TINY))
    assert torch.equal(unconditional(tokens, t, GRID), unconditional(tokens, t, GRID, torch.tensor([0, 1])))
    conditional = randomize(DiT(**TINY, num_classes=5))
    a = conditional(tokens, t, GRID, torch.tensor([0, 0]))
    b = conditional(tokens, t, GRID, torch.tensor([4, 4]))
    assert not torch.allclose(a, b, atol=1e-3)
    with pytest.raises(ValueError, match="class-conditional"):
        conditional(tokens, t, GRID)


def test_gradients_reach_every_parameter():
    dit = randomize(DiT(**TINY, num_classes=5))
    tokens, t = inputs()
    dit(tokens, t, GRID, torch.tensor([1, 2])).square().mean().backward()
    dead = [name for name, p in dit.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not dead


def test_training_from_adaln_zero_init_opens_every_path_within_three_steps():
    # Step 1 moves only the output Linear, step 2 the gates (and the residual stream's inputs); from step 3 on
    # every parameter, the attention / MLP weights and the t-embedding included, receives gradient.
    torch.manual_seed(0)
    dit = DiT(**TINY, num_classes=5)
    optimizer = torch.optim.SGD(dit.parameters(), lr=0.1)
    tokens, t = inputs()
    target = torch.randn(2, N, TINY["out_dim"])
    alive = []
    for _ in range(3):
        optimizer.zero_grad()
        (dit(tokens, t, GRID, torch.tensor([1, 2])) - target).square().mean().backward()
        optimizer.step()
        alive.append({name for name, p in dit.named_parameters() if p.grad.abs().sum()})
    assert alive[0] == {"final_layer.linear.weight", "final_layer.linear.bias"}
    assert "blocks.0.attn.qkv.weight" not in alive[1] and "t_embedder.mlp.0.weight" not in alive[1]
    assert alive[2] == {name for name, _ in dit.named_parameters()}


def test_encoder_is_the_first_half_of_the_blocks_by_default():
    assert DiT(**TINY).encoder_depth == 2
    assert DiT(**dict(TINY, depth=6)).encoder_depth == 3
    dit = DiT(**TINY, encoder_depth=3)
    calls = []
    for i, block in enumerate(dit.blocks):
        block.register_forward_hook(lambda module, args, out, i=i: calls.append(i))
    tokens, t = inputs()
    dit.forward_encoder(tokens, t, GRID)
    assert calls == [0, 1, 2]
    with pytest.raises(ValueError, match="encoder_depth"):
        DiT(**TINY, encoder_depth=5)


def test_tokens_must_fill_the_grid():
    tokens, t = inputs()
    with pytest.raises(ValueError, match="12 tokens do not fill the token grid"):
        DiT(**TINY)(tokens, t, (1, 2, 3))


def test_class_dropout_replaces_training_labels_with_the_null_class():
    dit = randomize(DiT(**TINY, num_classes=5, class_dropout=0.5))
    t, label = torch.zeros(4000, dtype=torch.long), torch.full((4000,), 2)
    torch.manual_seed(0)
    c = dit.train().condition(t, label)
    null = (c - dit.t_embedder(t) - dit.label_embed.weight[5]).abs().amax(1) < 1e-6
    assert 0.45 < null.float().mean().item() < 0.55
    assert torch.allclose(dit.eval().condition(t[:3], label[:3]), dit.t_embedder(t[:3]) + dit.label_embed.weight[2])
