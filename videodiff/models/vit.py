"""A Vision Transformer over clips: spacetime patch embedding, fixed sin-cos positions, pre-norm blocks.

Blocks are timm's (``timm.models.vision_transformer.Block``: pre-norm attention on
``scaled_dot_product_attention`` + MLP), so parameter names match MAE / timm checkpoints.

Our own models use fixed sin-cos positions and no class token. Imported checkpoints (image MAE, MAE-ST,
VideoMAE; ``videodiff/models/convert.py``) bring learned absolute positions and sometimes a class token:
``pos_embed_type="learned"`` stores them as ``learned_pos_embed`` [1, T', H', W', D] (the shape names its
grid, so tools can resize it) and ``cls_token=True`` prepends one token (``num_prefix_tokens`` = 1).
"""
from functools import partial
from typing import Dict, Optional, Sequence, Tuple

import torch
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

from videodiff.models.act_checkpoint import run_block
from videodiff.models.patch_embed import PatchEmbed3d
from videodiff.models.pos_embed import SinCosCache


class VisionTransformer(nn.Module):
    """Encoder: clip [B, C, T, H, W] -> tokens [B, N, D] (N = T'·H'·W', or the kept subset)."""

    def __init__(self, patch_size: int = 16, t_patch: int = 2, in_chans: int = 3, embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path_rate: float = 0.0, final_norm: bool = True, pos_embed_type: str = "sincos",
                 pos_grid: Optional[Tuple[int, int, int]] = None, cls_token: bool = False, norm_eps: float = 1e-5,
                 stem: Optional[nn.Module] = None, act_checkpoint: bool = False):
        super().__init__()
        if pos_embed_type not in POS_EMBED_TYPES:
            raise ValueError(f"pos_embed_type must be one of {', '.join(POS_EMBED_TYPES)}, got {pos_embed_type!r}")
        self.embed_dim, self.depth, self.pos_embed_type = embed_dim, depth, pos_embed_type
        self.num_prefix_tokens = int(cls_token)
        self.act_checkpoint = act_checkpoint  # recompute each block in backward (act_checkpoint.py)
        # MAE, MAE-ST and VideoMAE use eps 1e-6; imported weights reproduce their features only with theirs.
        norm_layer = partial(nn.LayerNorm, eps=norm_eps)
        # A frozen stem (an l-DAE's conv VAE encoder: clip -> latent map, ``stride`` times smaller, ``out_channels``
        # deep) comes before the patch embedding, whose kernel then covers the latent cells of one p x p patch.
        self.stem = stem.requires_grad_(False) if stem is not None else None
        if stem is not None:
            if patch_size % stem.stride:
                raise ValueError(f"patch size {patch_size} is not a multiple of the stem's stride {stem.stride}")
            patch_size, in_chans = patch_size // stem.stride, stem.out_channels
        self.patch_embed = PatchEmbed3d(patch_size, t_patch, in_chans, embed_dim)
        # Stochastic depth grows linearly with depth (torch.linspace's values, in Python so a meta-device build works).
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=qkv_bias, drop_path=rate,
                  norm_layer=norm_layer) for rate in rates
        ])
        # Fine-tuning pools first and normalises after (the head's LayerNorm), so it builds with final_norm=False.
        self.norm = norm_layer(embed_dim) if final_norm else nn.Identity()
        self._sincos = SinCosCache(embed_dim)
        self.apply(init_vit_weights)
        init_patch_embed(self.patch_embed)
        self._add_learned_tokens(pos_grid, cls_token)

    def _add_learned_tokens(self, pos_grid: Optional[Tuple[int, int, int]], cls_token: bool) -> None:
        """Learned positions for a fixed grid and a class token (with its own learned position if positions are
        learned; with sin-cos the class token has none, as in MAE). Initialised as timm does (std 0.02)."""
        learned = self.pos_embed_type == "learned"
        if learned:
            if pos_grid is None:
                raise ValueError("pos_embed_type='learned' needs pos_grid = (T', H', W'), the token grid it covers")
            self.learned_pos_embed = nn.Parameter(torch.zeros(1, *pos_grid, self.embed_dim))
        if cls_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, self.embed_dim))
        if cls_token and learned:
            self.cls_pos_embed = nn.Parameter(torch.zeros(1, 1, self.embed_dim))
        for name in LEARNED_TOKENS:
            if hasattr(self, name):
                trunc_normal_(getattr(self, name), std=0.02)

    def pos_embed(self, grid: Tuple[int, int, int], device, dtype) -> torch.Tensor:
        """[1, N, D] embeddings for this grid: the learned table, or sin-cos built once per (grid, device, dtype)."""
        if self.pos_embed_type == "learned":
            table = self.learned_pos_embed
            if tuple(table.shape[1:4]) != tuple(grid):
                raise ValueError(f"learned position embeddings cover a {tuple(table.shape[1:4])} token grid but the "
                                 f"clip gives {tuple(grid)}; resize the checkpoint with tools/extend_clip.py")
            return table.reshape(1, -1, self.embed_dim).to(dtype)
        return self._sincos(grid, device, dtype)

    def embed(self, clip: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int, int]]:
        """Patch-embed and add positions: -> (tokens [B, N, D], grid (T', H', W'))."""
        if self.stem is not None:
            clip = self.stem(clip)
        grid = self.patch_embed.grid_size(clip.shape)
        x = self.patch_embed(clip)
        return x + self.pos_embed(grid, x.device, x.dtype), grid

    def forward_features(self, clip: torch.Tensor, ids_keep: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Encode ``clip``; with ``ids_keep`` [B, K] only those tokens enter the blocks (MAE-style).

        Returns normalised tokens [B, P + (K or N), D] (P = ``num_prefix_tokens``: the class token comes first).
        """
        return self.block_features(clip, ids_keep, [len(self.blocks) - 1])[len(self.blocks) - 1]

    def block_features(self, clip: torch.Tensor, ids_keep: Optional[torch.Tensor],
                       blocks: Sequence[int]) -> Dict[int, torch.Tensor]:
        """The outputs of the given blocks, each through the final norm: {block: [B, P + (K or N), D]}.

        Block ``depth - 1`` gives exactly ``forward_features``; decoders that read the encoder top-down ask for
        several. Blocks after the highest one asked for are not run.
        """
        wanted = set(blocks)
        if not wanted or not all(0 <= i < len(self.blocks) for i in wanted):
            raise ValueError(f"blocks must be indices in [0, {len(self.blocks)}), got {list(blocks)}")
        x, _ = self.embed(clip)
        if ids_keep is not None:
            x = torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, x.shape[-1]))
        x = self.prepend_cls_token(x)
        features: Dict[int, torch.Tensor] = {}
        for i, block in enumerate(self.blocks[:max(wanted) + 1]):
            x = run_block(block, x, act_checkpoint=self.act_checkpoint)
            if i in wanted:
                features[i] = self.norm(x)
        return features

    def prepend_cls_token(self, x: torch.Tensor) -> torch.Tensor:
        """tokens [B, K, D] -> [B, P + K, D]: the class token (plus its learned position) first, if there is one."""
        if not self.num_prefix_tokens:
            return x
        cls = self.cls_token + self.cls_pos_embed if hasattr(self, "cls_pos_embed") else self.cls_token
        return torch.cat([cls.to(x.dtype).expand(x.shape[0], -1, -1), x], dim=1)

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        return self.forward_features(clip)

    def group_matcher(self, coarse: bool = False):
        """Layer ids for timm's layer-wise lr decay: embeddings = 0, block i = i + 1, final norm = last."""
        return {"stem": r"^(?:patch_embed|cls_token|cls_pos_embed|learned_pos_embed)",
                "blocks": [(r"^blocks\.(\d+)", None), (r"^norm", (99999,))]}

    def no_weight_decay(self):
        """Position embeddings and the class token are not decayed (as in MAE / timm)."""
        return {name for name in LEARNED_TOKENS if hasattr(self, name)}


POS_EMBED_TYPES = ("sincos", "learned")
# Parameters that exist only for imported checkpoints (learned positions, class token).
LEARNED_TOKENS = ("learned_pos_embed", "cls_token", "cls_pos_embed")


def init_vit_weights(module: nn.Module) -> None:
    """MAE's initialisation: xavier-uniform linears with zero bias, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def init_patch_embed(patch_embed: PatchEmbed3d) -> None:
    """Treat the Conv3d as the linear layer it is (xavier over its flattened kernel), as MAE does."""
    weight = patch_embed.proj.weight
    nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
    nn.init.zeros_(patch_embed.proj.bias)


def init_head_linear(linear: nn.Linear, std: float) -> None:
    trunc_normal_(linear.weight, std=std)
    nn.init.zeros_(linear.bias)
