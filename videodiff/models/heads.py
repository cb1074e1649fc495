"""Classification heads on encoder tokens."""
import torch
from torch import nn

from videodiff.models.vit import init_head_linear


class ClassificationHead(nn.Module):
    """tokens [B, N, D] -> global average pool -> LayerNorm -> dropout -> Linear -> logits [B, K].

    The linear layer starts with std 2^-5 (DiffMAE supplement A.1), which keeps early fine-tuning stable.
    """

    def __init__(self, embed_dim: int, num_classes: int, dropout: float = 0.0, init_std: float = 2 ** -5,
                 norm_eps: float = 1e-5):
        super().__init__()
        self.fc_norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(embed_dim, num_classes)
        init_head_linear(self.fc, init_std)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.fc_norm(tokens.mean(dim=1))))


class LinearProbeHead(nn.Module):
    """tokens [B, N, D] -> global average pool -> BatchNorm without affine -> Linear -> logits [B, K].

    The parameter-free BatchNorm (MAE; l-DAE appendix A) puts features of any pretraining method on one scale,
    so a single lr recipe serves them all; only the linear layer learns (std 0.01 start, as MAE).
    """

    def __init__(self, embed_dim: int, num_classes: int, init_std: float = 0.01):
        super().__init__()
        self.bn = nn.BatchNorm1d(embed_dim, affine=False, eps=1e-6)
        self.fc = nn.Linear(embed_dim, num_classes)
        init_head_linear(self.fc, init_std)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(tokens.mean(dim=1)))
