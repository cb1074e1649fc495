"""CLIP-aided DiffMAE: frozen CLIP image features as an extra target of the masked tokens.

DiffMAE reports CLIP-aided models next to pixel-only ones (supplement Table 1(b), "w/ CLIP"). We follow the
feature-prediction recipe of MaskFeat (Wei et al. 2022) and MILAN / MVP: the decoder's output for each *masked*
token goes through its own linear head that regresses the CLIP patch feature at that token's position; the loss
is the MSE to the per-token layer-normalised CLIP feature (scale-free, like norm_pix), added to the pixel loss
with a weight. Masked tokens only, because the cross / cross_self decoders produce nothing else, and because
predicting what is hidden is the pretext task; visible tokens' features would be copied from the input.

Target of a token: CLIP's patch features of the clip's *middle frame* (one CLIP forward per clip; for images
the frame itself), frame resized to CLIP's input size, feature map resized to our H' x W' token grid (bilinear,
antialiased), the same map for every temporal position T'. Our clip is un-normalised with DATA.MEAN / STD and
re-normalised with CLIP's own statistics first.

The CLIP encoder is a timm ``VisionTransformer`` shaped from the state dict in a local file (CLIP ViT-B/16,
L/14, ... or a small random one in tests); nothing is downloaded. It is frozen and kept *outside* the module
tree: it is not in DiffMAE's state dict (checkpoints stay small), not seen by the optimizer, not wrapped by DDP.
To make the file on a machine with network access::

    m = timm.create_model("vit_base_patch16_clip_quickgelu_224.openai", pretrained=True)
    torch.save(m.state_dict(), "clip_vitb16.pth")      # then DIFFMAE.CLIP_ACT quick_gelu
"""
import math
import os
from functools import partial
from typing import Dict, Sequence, Tuple

import torch
import torch.nn.functional as F
from timm.data.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from timm.models.vision_transformer import VisionTransformer as TimmViT
from torch import nn

from videodiff.models.masking import gather_tokens
from videodiff.models.vit import init_vit_weights

CLIP_ACTS = ("gelu", "quick_gelu")
CLIP_HEAD_WIDTH = 64  # every CLIP ViT (OpenAI, OpenCLIP) uses 64-wide attention heads


def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """A timm-layout CLIP ViT state dict from ``path`` (weights_only); also accepts {"state_dict"|"model": ...}."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CLIP checkpoint not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if "patch_embed.proj.weight" not in state:
        raise ValueError(f"{path}: not a timm VisionTransformer state dict (no patch_embed.proj.weight); "
                         f"save timm.create_model(<clip model>).state_dict()")
    return {k: v for k, v in state.items() if not k.startswith("head.")}  # the projection to text space is unused


def clip_encoder_from_state(state: Dict[str, torch.Tensor], act: str = "gelu") -> TimmViT:
    """Build the frozen ViT the state dict describes (width, depth, patch, input size, MLP ratio, class token)."""
    width, in_chans, patch = state["patch_embed.proj.weight"].shape[:3]
    if width % CLIP_HEAD_WIDTH:
        raise ValueError(f"CLIP width {width} is not a multiple of CLIP's {CLIP_HEAD_WIDTH}-wide heads")
    has_cls = "cls_token" in state
    side = math.isqrt(state["pos_embed"].shape[1] - int(has_cls))
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    model = TimmViT(img_size=side * patch, patch_size=patch, in_chans=in_chans, embed_dim=width, depth=depth,
                    num_heads=width // CLIP_HEAD_WIDTH, mlp_ratio=state["blocks.0.mlp.fc1.weight"].shape[0] / width,
                    qkv_bias="blocks.0.attn.qkv.bias" in state, class_token=has_cls,
                    global_pool="token" if has_cls else "avg", pre_norm="norm_pre.weight" in state,
                    num_classes=0, norm_layer=partial(nn.LayerNorm, eps=1e-5), act_layer=act)
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)


class CLIPTarget(nn.Module):
    """Linear head on decoder features of masked tokens + the loss against frozen CLIP patch features."""

    def __init__(self, encoder: TimmViT, decoder_dim: int, data_mean: Sequence[float], data_std: Sequence[float],
                 weight: float = 1.0):
        super().__init__()
        self._frozen = [encoder]  # a list hides it from state_dict / parameters / .to / DDP (module docstring)
        self.weight = weight
        self.head = nn.Linear(decoder_dim, encoder.embed_dim)
        self.head.apply(init_vit_weights)
        shift = torch.tensor(data_mean) - torch.tensor(OPENAI_CLIP_MEAN)      # data space -> CLIP's normalisation
        self.register_buffer("scale", (torch.tensor(data_std) / torch.tensor(OPENAI_CLIP_STD)).view(1, -1, 1, 1),
                             persistent=False)
        self.register_buffer("offset", (shift / torch.tensor(OPENAI_CLIP_STD)).view(1, -1, 1, 1), persistent=False)

    @classmethod
    def from_file(cls, path: str, decoder_dim: int, data_mean: Sequence[float], data_std: Sequence[float],
                  weight: float = 1.0, act: str = "gelu") -> "CLIPTarget":
        return cls(clip_encoder_from_state(read_state_dict(path), act), decoder_dim, data_mean, data_std, weight)

    def encoder(self, device: torch.device) -> TimmViT:
        """The frozen CLIP ViT, moved to ``device`` on first use there."""
        if next(self._frozen[0].parameters()).device != device:
            self._frozen[0] = self._frozen[0].to(device)
        return self._frozen[0]

    @torch.no_grad()
    def targets(self, clip: torch.Tensor, grid: Tuple[int, int, int]) -> torch.Tensor:
        """clip [B, C, T, H, W] (DATA-normalised) -> layer-normalised CLIP features per token [B, N, D_clip]."""
        encoder = self.encoder(clip.device)
        frame = clip[:, :, clip.shape[2] // 2].float() * self.scale + self.offset     # [B, C, H, W], CLIP-normalised
        frame = F.interpolate(frame, size=encoder.patch_embed.img_size, mode="bilinear", align_corners=False,
                              antialias=True)
        tokens = encoder.forward_features(frame)[:, encoder.num_prefix_tokens:]      # [B, G·G, D_clip]
        side = math.isqrt(tokens.shape[1])
        fmap = tokens.transpose(1, 2).reshape(clip.shape[0], -1, side, side)
        fmap = F.interpolate(fmap, size=grid[1:], mode="bilinear", align_corners=False, antialias=True)
        per_slot = fmap.flatten(2).transpose(1, 2)                                   # [B, H'·W', D_clip]
        features = per_slot.repeat(1, grid[0], 1)                                    # t-major token order
        return F.layer_norm(features, features.shape[-1:])

    def loss(self, decoder_features: torch.Tensor, clip: torch.Tensor, ids_masked: torch.Tensor,
             grid: Tuple[int, int, int]) -> torch.Tensor:
        """MSE of head(decoder features [B, M, Dd]) to the masked tokens' CLIP targets [B, M, D_clip]."""
        target = gather_tokens(self.targets(clip, grid), ids_masked)
        return (self.head(decoder_features).float() - target).pow(2).mean()
