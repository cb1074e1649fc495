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
        self.head = ClassificationHead(self.encoder.embed_dim, num_classes, dropout)
        self.label_smoothing = label_smoothing

    def forward(self, clip: torch.Tensor, label: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        logits = self.head(self.encoder.forward_features(clip))
        out = {"logits": logits}
        if label is not None:
            out["loss"] = classification_loss(logits, label, self.label_smoothing)
            hard = label.argmax(-1) if label.dtype.is_floating_point else label
            out["acc"] = (logits.argmax(-1) == hard).float().mean().detach()
        return out

    def group_matcher(self, coarse: bool = False):
        return {"stem": r"^encoder\.patch_embed",
                "blocks": [(r"^encoder\.blocks\.(\d+)", None), (r"^(?:head|encoder\.norm)", (99999,))]}
