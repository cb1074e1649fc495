"""Classification heads on encoder tokens."""
import torch
from torch import nn

from videodiff.models.vit import init_head_linear


class ClassificationHead(nn.Module):
    """tokens [B, N, D] -> global average pool -> LayerNorm -> dropout -> Linear -> logits [B, K].

    The linear layer starts with std 2^-5 (DiffMAE supplement A.1), which keeps early fine-tuning stable.
    """

    def __init__(self, embed_dim: int, num_classes: int, dropout: float = 0.0, init_std: float = 2 ** -5):
        super().__init__()
        self.fc_norm = nn.LayerNorm(embed_dim)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(embed_dim, num_classes)
        init_head_linear(self.fc, init_std)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.fc_norm(tokens.mean(dim=1))))
