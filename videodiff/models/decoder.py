"""DiffMAE decoder blocks (main paper, Fig. 3) and the top-down wiring of decoder to encoder blocks.

* joint      -- timm's ``Block``: self-attention over [visible encoder tokens, noisy tokens] (MAE-style).
* cross      -- ``CrossAttentionBlock``: noisy tokens attend to encoder features, then an MLP.
* cross_self -- ``CrossSelfBlock``: cross-attention to encoder features, self-attention among the noisy
  tokens, then an MLP.

All blocks are pre-norm with residuals. The encoder features (``context``) arrive already normalised and
projected to the decoder width by the model, so the blocks do not normalise them again.
"""
from typing import List

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from timm.models.vision_transformer import Attention, Block
from torch import nn


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


DECODER_TYPES = ("joint", "cross", "cross_self")


def build_decoder_blocks(decoder_type: str, dim: int, depth: int, num_heads: int,
                         mlp_ratio: float = 4.0, qkv_bias: bool = True) -> nn.ModuleList:
    """``depth`` blocks of the given type; raises naming an unknown ``decoder_type``."""
    if decoder_type == "joint":
        make = lambda: Block(dim, num_heads, mlp_ratio, qkv_bias=qkv_bias, norm_layer=nn.LayerNorm)  # noqa: E731
    elif decoder_type == "cross":
        make = lambda: CrossAttentionBlock(dim, num_heads, mlp_ratio, qkv_bias)  # noqa: E731
    elif decoder_type == "cross_self":
        make = lambda: CrossSelfBlock(dim, num_heads, mlp_ratio, qkv_bias)  # noqa: E731
    else:
        raise ValueError(f"unknown decoder type {decoder_type!r}; expected one of {DECODER_TYPES}")
    return nn.ModuleList([make() for _ in range(depth)])
