"""DiffMAE decoders (main paper, Fig. 3): one module per variant, one interface.

    decoder(x_t [B, M, S], t [B], encoder_features {block: [B, K, D]}, mask, grid) -> DecoderOutput

Every variant embeds the noisy target slices x_t with its own Linear, adds the sin-cos positions of their
grid cells and the step embedding of t, runs its blocks, and predicts x_0 of each slice. What differs is
how a variant reads the encoder, and each owns that:

* ``joint``      -- MAE-style self-attention over [visible encoder tokens, noisy tokens] (timm ``Block``);
  reads the encoder's final output.
* ``cross``      -- noisy tokens cross-attend to encoder features, then an MLP (``CrossAttentionBlock``).
* ``cross_self`` -- cross-attention, self-attention among the noisy tokens, then an MLP (``CrossSelfBlock``).

``cross`` and ``cross_self`` read the encoder top-down (``top_down_sources``): decoder block j attends to
the output of encoder block ``reads[j]``. A variant states the encoder blocks it reads in ``reads``; the
model asks the encoder for exactly those, each through the encoder's final LayerNorm (so every context is on
the scale of the final features: the raw residual stream grows with depth), and the decoder projects each
with one shared ``encoder_proj`` to its width (no parameters per block). The last block's context is then
exactly the usual encoder output.

A new variant is one subclass of ``DiffMAEDecoder`` (``make_block``, ``encoder_reads``, ``run_blocks``) and
one line in ``DECODERS``.
"""
from typing import Dict, List, NamedTuple

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from timm.models.vision_transformer import Attention, Block
from torch import nn

from videodiff.models.act_checkpoint import run_block
from videodiff.models.masking import Grid, Mask, gather_tokens
from videodiff.models.pos_embed import SinCosCache
from videodiff.models.timestep import TimestepEmbedder
from videodiff.models.vit import init_vit_weights


def top_down_sources(encoder_depth: int, decoder_depth: int) -> List[int]:
    """Which encoder block's output each decoder block reads (U-Net-like, top-down).

    Decoder block j (0-based) reads encoder block ``encoder_depth - 1 - floor(j · encoder_depth / decoder_depth)``:
    block 0 always reads the last encoder block and the sources step downwards, spread evenly over the
    encoder. Equal depths: j reads block ``depth - 1 - j`` (the last, the one before, ...). A shallower
    decoder skips encoder blocks (24 -> 8 reads 23, 20, 17, ..., 2); a deeper one reads some blocks
    twice in a row (4 -> 8 reads 3, 3, 2, 2, 1, 1, 0, 0).
    """
    for name, value in (("encoder_depth", encoder_depth), ("decoder_depth", decoder_depth)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return [encoder_depth - 1 - (j * encoder_depth) // decoder_depth for j in range(decoder_depth)]


class CrossAttention(nn.Module):
    """Multi-head attention with queries from x [B, M, D] and keys / values from context [B, K, D] -> [B, M, D]."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)   # [B, h, n, d]

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        q = self._heads(self.q(x))                                                # [B, h, M, d]
        k, v = self.kv(context).chunk(2, dim=-1)
        out = F.scaled_dot_product_attention(q, self._heads(k), self._heads(v))  # [B, h, M, d]
        return self.proj(out.transpose(1, 2).flatten(2))                          # [B, M, D]


def _mlp(dim: int, mlp_ratio: float) -> Mlp:
    return Mlp(dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)


class CrossAttentionBlock(nn.Module):
    """x = x + CrossAttn(LN(x), context); x = x + MLP(LN(x)).  x [B, M, D], context [B, K, D]."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn = CrossAttention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _mlp(dim, mlp_ratio)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.cross_attn(self.norm1(x), context)
        return x + self.mlp(self.norm2(x))


class CrossSelfBlock(nn.Module):
    """x = x + CrossAttn(LN(x), context); x = x + SelfAttn(LN(x)); x = x + MLP(LN(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn = CrossAttention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias)  # timm's, on scaled_dot_product_attention
        self.norm3 = nn.LayerNorm(dim)
        self.mlp = _mlp(dim, mlp_ratio)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.cross_attn(self.norm1(x), context)
        x = x + self.attn(self.norm2(x))
        return x + self.mlp(self.norm3(x))


class DecoderOutput(NamedTuple):
    pred: torch.Tensor    # [B, M, S] x_0 prediction of each masked token's target slice
    hidden: torch.Tensor  # [B, M, Dd] the normed decoder output it was read from (for extra targets such as CLIP)


class DiffMAEDecoder(nn.Module):
    """What every variant shares; subclasses say which blocks they stack and how those see the encoder.

    Args: ``encoder_dim`` / ``encoder_depth`` of the encoder it reads, ``slice_dim`` S = p·p·C of a target
    slice, ``dim`` / ``depth`` / ``num_heads`` of the decoder; ``act_checkpoint`` recomputes each block in the
    backward (``act_checkpoint.py``).
    """

    def __init__(self, encoder_dim: int, encoder_depth: int, slice_dim: int, dim: int = 512, depth: int = 8,
                 num_heads: int = 16, mlp_ratio: float = 4.0, qkv_bias: bool = True, act_checkpoint: bool = False):
        super().__init__()
        self.act_checkpoint = act_checkpoint
        self.reads: List[int] = self.encoder_reads(encoder_depth, depth)
        self.encoder_proj = nn.Linear(encoder_dim, dim)
        self.noisy_embed = nn.Linear(slice_dim, dim)
        self.t_embedder = TimestepEmbedder(dim)
        self.blocks = nn.ModuleList([self.make_block(dim, num_heads, mlp_ratio, qkv_bias) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.pred = nn.Linear(dim, slice_dim)
        self._sincos = SinCosCache(dim)
        self.apply(init_vit_weights)  # MAE's: xavier-uniform linears, zero biases, unit LayerNorms; nothing zeroed

    # ------------------------------------------------------------------ what a variant defines
    def make_block(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool) -> nn.Module:
        raise NotImplementedError

    def encoder_reads(self, encoder_depth: int, depth: int) -> List[int]:
        """Encoder block indices whose (normed) outputs this decoder reads."""
        raise NotImplementedError

    def run_blocks(self, x: torch.Tensor, contexts: Dict[int, torch.Tensor], pos: torch.Tensor,
                   mask: Mask) -> torch.Tensor:
        """x [B, M, Dd] noisy tokens, contexts {block: [B, K, Dd]}, pos [B, N, Dd] -> [B, M, Dd]."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared
    def forward(self, x_t: torch.Tensor, t: torch.Tensor, encoder_features: Dict[int, torch.Tensor], mask: Mask,
                grid: Grid) -> DecoderOutput:
        """x_t [B, M, S] noisy slices of the masked tokens (order of ``mask.ids_masked``) at steps t [B]."""
        pos = self._sincos(grid, x_t.device, x_t.dtype).expand(x_t.shape[0], -1, -1)           # [B, N, Dd]
        x = self.noisy_embed(x_t) + gather_tokens(pos, mask.ids_masked) + self.t_embedder(t)[:, None]
        contexts = {i: self.encoder_proj(f) for i, f in encoder_features.items()}             # [B, K, Dd] each
        hidden = self.norm(self.run_blocks(x, contexts, pos, mask))
        return DecoderOutput(self.pred(hidden), hidden)


class JointDecoder(DiffMAEDecoder):
    def make_block(self, dim, num_heads, mlp_ratio, qkv_bias):
        return Block(dim, num_heads, mlp_ratio, qkv_bias=qkv_bias, norm_layer=nn.LayerNorm)

    def encoder_reads(self, encoder_depth, depth):
        return [encoder_depth - 1]

    def run_blocks(self, x, contexts, pos, mask):
        visible = contexts[self.reads[0]] + gather_tokens(pos, mask.ids_keep)               # [B, K, Dd]
        x = torch.cat([visible, x], dim=1)                                                    # [B, K + M, Dd]
        for block in self.blocks:
            x = run_block(block, x, act_checkpoint=self.act_checkpoint)
        return x[:, visible.shape[1]:]                                                        # [B, M, Dd]


class CrossDecoder(DiffMAEDecoder):
    def make_block(self, dim, num_heads, mlp_ratio, qkv_bias):
        return CrossAttentionBlock(dim, num_heads, mlp_ratio, qkv_bias)

    def encoder_reads(self, encoder_depth, depth):
        return top_down_sources(encoder_depth, depth)

    def run_blocks(self, x, contexts, pos, mask):
        for block, source in zip(self.blocks, self.reads):
            x = run_block(block, x, contexts[source], act_checkpoint=self.act_checkpoint)
        return x


class CrossSelfDecoder(CrossDecoder):
    def make_block(self, dim, num_heads, mlp_ratio, qkv_bias):
        return CrossSelfBlock(dim, num_heads, mlp_ratio, qkv_bias)


DECODERS = {"joint": JointDecoder, "cross": CrossDecoder, "cross_self": CrossSelfDecoder}


def build_decoder(decoder_type: str, **kwargs) -> DiffMAEDecoder:
    """The ``decoder_type`` variant with ``DiffMAEDecoder``'s arguments; raises naming an unknown type."""
    if decoder_type not in DECODERS:
        raise ValueError(f"unknown decoder type {decoder_type!r}; expected one of {', '.join(DECODERS)}")
    return DECODERS[decoder_type](**kwargs)

