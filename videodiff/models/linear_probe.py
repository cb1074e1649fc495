"""Linear probing: a frozen pretrained encoder, and a linear classifier trained on its pooled features."""
from typing import Dict, Optional

import torch
from torch import nn

from videodiff.models.classifier import classification_loss
from videodiff.models.heads import LinearProbeHead
from videodiff.models.vit import VisionTransformer


class VitLinearProbe(nn.Module):
    """Frozen ViT (with its pretrained final LayerNorm, unless ``final_norm`` is False: an l-DAE encoder has none) +
    ``LinearProbeHead``; returns ``{"logits", "loss", "acc"}``.

    Only ``head.fc`` has trainable parameters (the BatchNorm has none), so the optimizer sees just that layer.
    The encoder stays in eval mode even while the module trains: a frozen feature extractor must not apply
    drop path, and its features must not depend on the batch.
    """

    def __init__(self, num_classes: int, final_norm: bool = True, **vit_kwargs):
        super().__init__()
        self.encoder = VisionTransformer(final_norm=final_norm, **vit_kwargs)
        self.encoder.requires_grad_(False)
        self.head = LinearProbeHead(self.encoder.embed_dim, num_classes)

    def train(self, mode: bool = True) -> "VitLinearProbe":
        super().train(mode)
        self.encoder.eval()
        return self

    def forward(self, clip: torch.Tensor, label: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        with torch.no_grad():  # no activations kept for a backward pass that never reaches the encoder
            tokens = self.encoder.forward_features(clip)
        logits = self.head(tokens[:, self.encoder.num_prefix_tokens:])
        out = {"logits": logits}
        if label is not None:
            out["loss"] = classification_loss(logits, label)
            hard = label.argmax(-1) if label.dtype.is_floating_point else label
            out["acc"] = (logits.argmax(-1) == hard).float().mean().detach()
        return out
