"""DiT (Peebles & Xie, 2023) as l-DAE uses it: a ViT whose blocks are conditioned on the diffusion step t by adaLN-Zero.

    tokens [B, N, in_dim] -> embed (Linear) + 3-D sin-cos positions -> DiTBlock x depth -> FinalLayer -> [B, N, out_dim]
    t [B] -> sin-cos features (256) -> Linear(256, cond_dim) -> SiLU -> Linear(cond_dim, cond_dim) = c [B, cond_dim]
    (+ label embedding [B, cond_dim] when class-conditional; DiT's extra "null" row num_classes stands for no label:
    a training label is replaced by it with probability ``class_dropout``, and probing folds it, so the probe
    needs no label)

Each block turns c into six vectors, ``SiLU -> Linear(cond_dim, 6·D)`` -> shift, scale, gate for the attention and
for the MLP, and computes ``x + gate · attn(modulate(LN(x), shift, scale))`` then the same with the MLP. The
modulation and output Linears start at zero ("adaLN-Zero"), so at initialisation every block is the identity and
the model outputs 0. The first ``encoder_depth`` blocks (half, by default) are the encoder that l-DAE probes
(ViT-1/2L).

**The width of the conditioning (l-DAE, Appendix A "DiT architecture").** The paper says: "Each Transformer block
accepts an embedding network (a two-layer MLP) conditioned on the time step t. The output of this embedding
network determines the scale and bias parameters of LayerNorm (adaLN) ... we set the hidden dimension of this MLP
as 1/4 of its original dimension, which helps reduce model sizes and save memory". We read "the hidden dimension"
as DiT's conditioning vector c, which DiT makes as wide as the model: here ``cond_dim = embed_dim // 4``, so the
t-embedding MLP is 256 -> D/4 -> D/4 and every block's adaLN Linear is (6·D, D/4), four times smaller than DiT's
(6·D, D). That is where the saving is: DiT's adaLN Linears hold 6·D² of a block's 18·D² parameters, while the
t-embedding MLP is built once.

    !! THE OTHER READING !!  "the hidden dimension of this MLP" could instead be only the hidden layer of the
    t-embedding MLP (256 -> D/4 -> D), keeping c at width D and every adaLN Linear at (6·D, D), as in DiT. That
    saves only about 3·D²/4 parameters in the whole model, which does not fit "reduce model sizes and save memory";
    it is what ``cond_dim=embed_dim`` plus a narrower t-MLP would build, and this class does not offer it.
    Either way the probed encoder is the same plain ViT (``fold_encoder``).

**Two deliberate deviations from DiT**, both so that the probed encoder *is* a plain ``VisionTransformer``:
  * the MLP activation is the exact (erf) GELU of timm's ``Block`` and our ViT, not DiT's tanh approximation;
  * LayerNorm eps is DiT's 1e-6 (``NORM_EPS``); a ViT receiving ``fold_encoder``'s weights must be built with
    ``norm_eps=1e-6`` (our ViT's default is 1e-5).

**Fixed-t export (l-DAE, Appendix A "Linear probing").** l-DAE probes and fine-tunes at a fixed t on clean input,
so "the t-dependent MLP layers ... can be merged given the fixed t". ``fold_encoder`` does that merge on a state
dict: for that t, each block's shift/scale become the affine LayerNorm's bias/weight (weight = 1 + scale) and each
gate is multiplied into ``attn.proj`` and ``mlp.fc2``, giving timm ``Block`` weights that compute exactly what the
DiT block computes at that t.
"""
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from timm.models.vision_transformer import Attention
from torch import Tensor, nn

from videodiff.models.act_checkpoint import run_block
from videodiff.models.pos_embed import SinCosCache
from videodiff.models.timestep import TimestepEmbedder, sinusoidal_features

NORM_EPS = 1e-6     # DiT's LayerNorm eps; build the folded ViT with norm_eps=NORM_EPS
FREQ_DIM = 256      # sin-cos features of t fed to the t-embedding MLP (as DiT)
# The six adaLN outputs of a block, in the order the modulation Linear produces them.
BLOCK_MODULATION = ("shift_msa", "scale_msa", "gate_msa", "shift_mlp", "scale_mlp", "gate_mlp")


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: x [B, N, D] normalised, shift / scale [B, D] per sample -> x·(1 + scale) + shift."""
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """Pre-norm Transformer block whose LayerNorms and residual branches are modulated by c (adaLN-Zero).

    x [B, N, D], c [B, cond_dim] -> [B, N, D]. The MLP uses exact GELU (our ViT's), not DiT's tanh approximation.
    """

    def __init__(self, embed_dim: int, num_heads: int, mlp_ratio: float, cond_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(embed_dim, elementwise_affine=False, eps=NORM_EPS)
        self.attn = Attention(embed_dim, num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(embed_dim, elementwise_affine=False, eps=NORM_EPS)
        self.mlp = Mlp(embed_dim, int(embed_dim * mlp_ratio), act_layer=nn.GELU)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 6 * embed_dim))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = x + gate_msa[:, None] * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        return x + gate_mlp[:, None] * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    """LayerNorm modulated by c (shift, scale), then Linear: x [B, N, D], c [B, cond_dim] -> [B, N, out_dim]."""

    def __init__(self, embed_dim: int, out_dim: int, cond_dim: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(embed_dim, elementwise_affine=False, eps=NORM_EPS)
        self.linear = nn.Linear(embed_dim, out_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * embed_dim))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    """Tokens in, tokens out, conditioned on the diffusion step t (and optionally a class label).

    ``in_dim``: width of the input token vectors (d for latent input, t_patch·p·p·C for image patches in
    ``patchify`` layout); ``out_dim``: width of the predicted token vectors. ``cond_dim`` (default
    ``embed_dim // 4``): width of the conditioning vector c, see the module docstring for how we read the paper.
    ``num_classes > 0`` adds a label embedding to c (DiT's class conditioning; only l-DAE Table 1's first line);
    with ``num_classes == 0`` a label passed to ``forward`` is ignored. ``encoder_depth`` (default ``depth // 2``):
    the first blocks, the part l-DAE probes.
    """

    def __init__(self, in_dim: int, out_dim: int, embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                 mlp_ratio: float = 4.0, cond_dim: Optional[int] = None, num_classes: int = 0,
                 encoder_depth: Optional[int] = None, class_dropout: float = 0.1, act_checkpoint: bool = False):
        super().__init__()
        self.act_checkpoint = act_checkpoint  # recompute each block in backward (act_checkpoint.py)
        self.cond_dim = cond_dim or embed_dim // 4
        self.encoder_depth = depth // 2 if encoder_depth is None else encoder_depth
        if not 0 < self.encoder_depth <= depth:
            raise ValueError(f"encoder_depth must be in [1, depth={depth}], got {self.encoder_depth}")
        self.embed_dim, self.num_classes, self.class_dropout = embed_dim, num_classes, class_dropout
        self.embed = nn.Linear(in_dim, embed_dim)
        self._sincos = SinCosCache(embed_dim)
        self.t_embedder = TimestepEmbedder(self.cond_dim, FREQ_DIM)
        # num_classes + 1 rows: the last is DiT's null class (classifier-free guidance's "no label").
        self.label_embed = nn.Embedding(num_classes + 1, self.cond_dim) if num_classes > 0 else None
        self.blocks = nn.ModuleList([DiTBlock(embed_dim, num_heads, mlp_ratio, self.cond_dim) for _ in range(depth)])
        self.final_layer = FinalLayer(embed_dim, out_dim, self.cond_dim)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Every initialisation, as DiT's: xavier linears, then the special cases below."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        # The input Linear is DiT's patch embedding (a Conv over patches, xavier on its flattened kernel): on a
        # Linear the flattened weight is the weight itself.
        nn.init.xavier_uniform_(self.embed.weight.view(self.embed.weight.shape[0], -1))
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        if self.label_embed is not None:
            nn.init.normal_(self.label_embed.weight, std=0.02)
        # adaLN-Zero: every block starts as the identity and the model's output as 0.
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def embed_tokens(self, tokens: Tensor, grid: Tuple[int, int, int]) -> Tensor:
        """tokens [B, N, in_dim] -> [B, N, D]: input Linear plus the fixed 3-D sin-cos positions of ``grid``."""
        x = self.embed(tokens)
        if x.shape[1] != grid[0] * grid[1] * grid[2]:
            raise ValueError(f"{x.shape[1]} tokens do not fill the token grid {tuple(grid)}")
        return x + self._sincos(grid, x.device, x.dtype)

    def condition(self, t: Tensor, label: Optional[Tensor] = None) -> Tensor:
        """t LongTensor [B] (and label [B] when class-conditional) -> c [B, cond_dim]."""
        c = self.t_embedder(t)
        if self.label_embed is not None:
            if label is None:
                raise ValueError(f"this DiT is class-conditional (num_classes={self.num_classes}); pass a label")
            if self.training and self.class_dropout > 0:  # DiT's label dropout, which trains the null row
                drop = torch.rand(label.shape, device=label.device) < self.class_dropout
                label = torch.where(drop, torch.full_like(label, self.num_classes), label)
            c = c + self.label_embed(label)
        return c

    def forward_encoder(self, tokens: Tensor, t: Tensor, grid: Tuple[int, int, int],
                        label: Optional[Tensor] = None) -> Tensor:
        """The first ``encoder_depth`` blocks only: -> [B, N, embed_dim] (no final norm)."""
        x, c = self.embed_tokens(tokens, grid), self.condition(t, label)
        for block in self.blocks[:self.encoder_depth]:
            x = run_block(block, x, c, act_checkpoint=self.act_checkpoint)
        return x

    def forward(self, tokens: Tensor, t: Tensor, grid: Tuple[int, int, int],
                label: Optional[Tensor] = None) -> Tensor:
        """tokens [B, N, in_dim], t [B], grid (T', H', W') with N = T'·H'·W' -> [B, N, out_dim]."""
        x, c = self.embed_tokens(tokens, grid), self.condition(t, label)
        for block in self.blocks:
            x = run_block(block, x, c, act_checkpoint=self.act_checkpoint)
        return self.final_layer(x, c)


def fold_encoder(dit_state: Dict[str, Tensor], t: int, encoder_depth: int, prefix: str = "",
                 label: Optional[int] = None) -> Dict[str, Tensor]:
    """Merge the conditioning at the fixed step t into the encoder blocks: DiT state -> plain ViT ``blocks.*`` state.

    ``dit_state`` holds a ``DiT``'s weights under ``prefix`` (e.g. "dit."); it is not modified. Returns, for
    i < encoder_depth, ``blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.{weight,bias}`` for timm
    ``Block``s -- load it into a ``VisionTransformer(embed_dim, depth=encoder_depth, num_heads, mlp_ratio,
    norm_eps=1e-6)`` (``strict=False``: only the blocks are here). Each block then computes exactly what the
    DiT block computes at t:

        LN_affine(x) = LN(x)·(1 + scale) + shift      -> norm.weight = 1 + scale, norm.bias = shift
        gate · (W h + b) = (gate ⊙ W) h + gate ⊙ b    -> attn.proj / mlp.fc2 rows scaled by the gate

    The input Linear (``embed.*``) and the positions are not folded here: the caller composes them with its
    tokenizer into the ViT's patch embedding. A class-conditional DiT is folded for ``label``, by default its null
    class (the last row of ``label_embed``: no label, as the probe has none).
    The merge is computed in float64 and returned in the weights' dtype.
    """
    def get(name: str) -> Tensor:
        key = prefix + name
        if key not in dit_state:
            raise KeyError(f"DiT state has no {key!r} (prefix {prefix!r}, encoder_depth {encoder_depth})")
        return dit_state[key]

    # c for this t, as DiT.condition computes it (TimestepEmbedder: features -> Linear -> SiLU -> Linear).
    first = get("t_embedder.mlp.0.weight")
    features = sinusoidal_features(torch.tensor([t], device=first.device), FREQ_DIM).double()
    c = F.linear(features, first.double(), get("t_embedder.mlp.0.bias").double())
    c = F.linear(F.silu(c), get("t_embedder.mlp.2.weight").double(), get("t_embedder.mlp.2.bias").double())[0]
    if prefix + "label_embed.weight" in dit_state:
        table = get("label_embed.weight")
        c = c + table[len(table) - 1 if label is None else label].double()

    folded: Dict[str, Tensor] = {}
    for i in range(encoder_depth):
        block = f"blocks.{i}."  # the same names in the DiT (under prefix) and in the ViT
        weight = get(block + "adaLN_modulation.1.weight")
        mod = F.linear(F.silu(c), weight.double(), get(block + "adaLN_modulation.1.bias").double())
        m = dict(zip(BLOCK_MODULATION, mod.chunk(6)))
        dtype = weight.dtype
        for norm, shift, scale in (("norm1", "shift_msa", "scale_msa"), ("norm2", "shift_mlp", "scale_mlp")):
            folded[block + norm + ".weight"] = (1 + m[scale]).to(dtype)
            folded[block + norm + ".bias"] = m[shift].to(dtype)
        for linear in ("attn.qkv", "mlp.fc1"):
            folded[block + linear + ".weight"] = get(block + linear + ".weight").clone()
            folded[block + linear + ".bias"] = get(block + linear + ".bias").clone()
        for linear, gate in (("attn.proj", "gate_msa"), ("mlp.fc2", "gate_mlp")):
            w, b = get(block + linear + ".weight"), get(block + linear + ".bias")
            folded[block + linear + ".weight"] = (m[gate][:, None] * w.double()).to(w.dtype)
            folded[block + linear + ".bias"] = (m[gate] * b.double()).to(b.dtype)
    return folded
