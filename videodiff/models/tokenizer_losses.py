"""The two extra losses of LDM's / VQGAN's tokenizer that l-DAE's Table 1 removes one by one.

* ``PerceptualLoss``: an LPIPS-style distance (Zhang et al. 2018) between VGG16 features of two images: at the five
  ``relu*_*`` stages before each pooling, features are unit-normalised over channels, squared differences summed
  over channels and averaged over positions, and the stages summed (LPIPS with its learned per-channel weights all 1,
  the paper's "lin" layers being themselves trained on human judgements). The VGG16 weights come only from a local
  torchvision state dict (CONV_VAE.PERCEPTUAL_CHECKPOINT): nothing is downloaded, a missing file is a one-line error.
* ``PatchDiscriminator``: VQGAN's PatchGAN (``NLayerDiscriminator``: 4x4 stride-2 convs, BatchNorm, LeakyReLU 0.2,
  one logit per receptive field), trained with the hinge loss; the generator's adversarial term is weighted by
  VQGAN's adaptive weight ``adaptive_weight`` (the ratio of the reconstruction's and the adversarial term's gradient
  norms at the decoder's last layer).
"""
import os
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

# torchvision's vgg16().features indices of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (LPIPS's five stages).
VGG16_STAGES = (3, 8, 15, 22, 29)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _vgg16_features() -> nn.Sequential:
    """torchvision's VGG16 ``features`` layout up to relu5_3 (no download: weights come from ``from_file``)."""
    layers, in_ch = [], 3
    for width in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512):
        if width == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(in_ch, width, 3, padding=1), nn.ReLU(inplace=False)]
            in_ch = width
    return nn.Sequential(*layers)


class PerceptualLoss(nn.Module):
    """LPIPS-style VGG16 distance per image (module docstring). Inputs are normalised with the data's ``mean`` /
    ``std`` (DATA.MEAN / STD); they are mapped to pixels and then to VGG's ImageNet normalisation. One-channel
    images are repeated to three. Frozen."""

    def __init__(self, features: nn.Sequential, mean: Sequence[float], std: Sequence[float],
                 stages: Sequence[int] = VGG16_STAGES):
        super().__init__()
        self.features, self.stages = features.requires_grad_(False).eval(), tuple(stages)
        self.register_buffer("data_mean", torch.tensor(mean, dtype=torch.float32)[:, None, None])
        self.register_buffer("data_std", torch.tensor(std, dtype=torch.float32)[:, None, None])
        self.register_buffer("vgg_mean", torch.tensor(IMAGENET_MEAN)[:, None, None])
        self.register_buffer("vgg_std", torch.tensor(IMAGENET_STD)[:, None, None])

    def train(self, mode: bool = True) -> "PerceptualLoss":
        return super().train(False)

    @classmethod
    def from_file(cls, path: str, mean: Sequence[float], std: Sequence[float]) -> "PerceptualLoss":
        """From a local torchvision VGG16 state dict (the whole model's ``features.*`` keys, or the features' own)."""
        key = "CONV_VAE.PERCEPTUAL_CHECKPOINT"
        if not path:
            raise FileNotFoundError(f"CONV_VAE.PERCEPTUAL_WEIGHT > 0 needs {key}: a local torchvision VGG16 state "
                                    f"dict (nothing is downloaded); or set CONV_VAE.PERCEPTUAL_WEIGHT 0")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{key} = {path!r} does not exist (a local torchvision VGG16 state dict; nothing "
                                    f"is downloaded)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if any(k.startswith("features.") for k in state):
                state = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
            features = _vgg16_features()
            features.load_state_dict({k: v for k, v in state.items() if int(k.split(".")[0]) < len(features)})
        except Exception as e:  # unreadable, not a dict, other keys or shapes: all "not a VGG16 state dict"
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise ValueError(f"{key} = {path!r} is not a torchvision VGG16 state dict ({reason})") from None
        return cls(features, mean, std)

    def _stage_features(self, x: torch.Tensor):
        x = (x * self.data_std + self.data_mean - self.vgg_mean) / self.vgg_std
        for i, layer in enumerate(self.features[:max(self.stages) + 1]):
            x = layer(x)
            if i in self.stages:
                yield x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x, y [B, C, H, W] (C = 1 or 3) -> distance [B]."""
        if x.shape[1] == 1:
            x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
        total = x.new_zeros(x.shape[0])
        for fx, fy in zip(self._stage_features(x), self._stage_features(y)):
            total = total + (fx - fy).pow(2).sum(1).mean(dim=(1, 2))
        return total


class PatchDiscriminator(nn.Module):
    """VQGAN's PatchGAN: image [B, C, H, W] -> logits [B, 1, h, w], one per patch-sized receptive field."""

    def __init__(self, in_chans: int = 3, width: int = 64, num_layers: int = 3):
        super().__init__()
        layers = [nn.Conv2d(in_chans, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        ch = width
        for n in range(1, num_layers + 1):
            out = width * min(2 ** n, 8)
            stride = 2 if n < num_layers else 1  # the last one keeps the resolution, as VQGAN's
            layers += [nn.Conv2d(ch, out, 4, stride, 1, bias=False), nn.BatchNorm2d(out), nn.LeakyReLU(0.2)]
            ch = out
        layers.append(nn.Conv2d(ch, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)
        for m in self.modules():  # VQGAN's weights_init
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The discriminator's hinge loss: 1/2 (E relu(1 - D(x)) + E relu(1 + D(g(f(x)))))."""
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def adaptive_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor) -> torch.Tensor:
    """VQGAN's adaptive weight: ||d rec / d W|| / (||d g / d W|| + 1e-4) at the decoder's last weight W, clamped to
    [0, 1e4] and detached, so the adversarial term's gradient there is as large as the reconstruction's."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, 1e4).detach()
