"""Supervised classification of clips (training from scratch or fine-tuning a pretrained encoder)."""
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from videodiff.models.heads import ClassificationHead
from videodiff.models.vit import VisionTransformer


def classification_loss(logits: torch.Tensor, label: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy against integer labels [B] or soft targets [B, K] (mixup / cutmix)."""
    if label.dtype.is_floating_point:
        return torch.sum(-label * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
    return F.cross_entropy(logits.float(), label, label_smoothing=label_smoothing)


class VitClassifier(nn.Module):
    """ViT encoder (no final norm) + pooled classification head; returns ``{"logits", "loss", "acc"}``."""

    def __init__(self, num_classes: int, dropout: float = 0.0, label_smoothing: float = 0.0, **vit_kwargs):
        super().__init__()
        self.encoder = VisionTransformer(final_norm=False, **vit_kwargs)
        self.head = ClassificationHead(self.encoder.embed_dim, num_classes, dropout,
                                       norm_eps=vit_kwargs.get("norm_eps", 1e-5))
        self.label_smoothing = label_smoothing

    def forward(self, clip: torch.Tensor, label: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        tokens = self.encoder.forward_features(clip)
        logits = self.head(tokens[:, self.encoder.num_prefix_tokens:])  # pool patch tokens only, as MAE does
        out = {"logits": logits}
        if label is not None:
            out["loss"] = classification_loss(logits, label, self.label_smoothing)
            hard = label.argmax(-1) if label.dtype.is_floating_point else label
            out["acc"] = (logits.argmax(-1) == hard).float().mean().detach()
        return out

    def group_matcher(self, coarse: bool = False):
        """Layer ids for timm's layer decay: stem 0, block i -> i + 1, head depth + 1 (scale 1).

        The head is deliberately left unmatched: timm puts unmatched names in a last group of their own.
        Matching it with timm's (99999,) suffix would merge it into the last block's group (one scale fewer).
        """
        return {"stem": r"^encoder\.(?:patch_embed|cls_token|cls_pos_embed|learned_pos_embed)",
                "blocks": [(r"^encoder\.blocks\.(\d+)", None), (r"^encoder\.norm", (99999,))]}

    def no_weight_decay(self):
        return {f"encoder.{name}" for name in self.encoder.no_weight_decay()}
