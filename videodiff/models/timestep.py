"""Diffusion-step conditioning: integer t -> sinusoidal features -> MLP -> [B, dim] (as DiT's TimestepEmbedder)."""
import math

import torch
from torch import nn


def sinusoidal_features(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """t [B] (integer or float steps) -> [B, dim] = [cos(t·ω_k), sin(t·ω_k)], ω_k = max_period^(-k / (dim/2)).

    An odd ``dim`` gets one zero column appended.
    """
    half = dim // 2
    omega = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float()[:, None] * omega[None]
    features = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:
        features = torch.cat([features, torch.zeros_like(features[:, :1])], dim=-1)
    return features


class TimestepEmbedder(nn.Module):
    """Embed the diffusion step: t LongTensor [B] -> [B, dim] via sin-cos features (freq_dim) and Linear-SiLU-Linear."""

    def __init__(self, dim: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        features = sinusoidal_features(t, self.freq_dim)
        return self.mlp(features.to(self.mlp[0].weight.dtype))
