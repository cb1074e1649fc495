"""A small convolutional VAE (LDM's KL autoencoder, scaled down) and the l-DAE tokenizer built on it.

l-DAE's Table 1 starts from DiT on the latents of LDM's KL-VAE: a deep conv encoder f that maps a 256 x 256 x 3 image
to a 32 x 32 x c latent map (stride 8; c = 4 in LDM), and a conv decoder g back, trained with
||x - g(f(x))||^2 + KL[f(x) | N] (plus, for the first lines, a perceptual and an adversarial loss:
``tokenizer_losses.py``, fitted by ``tools/fit_tokenizer.py --kind conv_vae``). DiT treats each 2 x 2 cell of the
latent map as a token, so a 16 x 16 image patch is one token of d = 2 * 2 * c values (paper footnote 2).

``ConvVAE`` follows LDM's ``Encoder`` / ``Decoder`` layout (conv in; per level ResNet blocks then a stride-2
downsampling conv; a middle ResNet block; GroupNorm-SiLU-conv out to the posterior's mean and log-variance; the
decoder mirrors it with nearest-neighbour upsampling), smaller by default (``width`` 64 instead of 128, one ResNet
block per level instead of two, and no attention in the middle: ours; at these sizes the receptive field of three
stride-2 levels already covers a 16 x 16 patch's neighbourhood). Frames are encoded one by one; a clip is a stack of
frames.

``ConvVAETokenizer`` is the frozen tokenizer with ``PatchTokenizer``'s interface (flat patches [B, N, D] <-> latents
[B, N, d]); unlike the patch-wise ones it needs the token ``grid`` (its convolutions see neighbouring patches), and
it is not linear, so an l-DAE that reads its latents is probed through it as a frozen stem
(``VisionTransformer(stem=...)``; ``LDAE.export_encoder``).

Files (``save_conv_vae`` / ``ConvVAETokenizer.from_file``) hold ``{"kind": "conv_vae", "arch": {in_chans,
latent_channels, width, num_res_blocks, stride}, "state": the ConvVAE state dict, "latent_mean" [c], "latent_scale"
[c], "layout": (t_patch, p, C), "losses", "num_images", "source"}``. ``latent_mean`` / ``latent_scale`` are each
latent channel's mean and RMS around it on the fit images (per channel: the patch AE's reason, every component at
the same signal-to-noise ratio for a given t; LDM scales by one global factor, 0.18215, for the same unit-variance
aim). A file fixes c; any patch size p that the stride divides can use it, with d = t_patch·(p/s)²·c per token.
"""
import math
import os
from typing import Dict, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from videodiff.models.patchify import Grid, patchify, unpatchify
from videodiff.models.tokenizers import FILE_KINDS, PatchTokenizer, TokenizerFileError, _describe, _load, _save

ARCH_KEYS = ("in_chans", "latent_channels", "width", "num_res_blocks", "stride")


def _norm(channels: int) -> nn.GroupNorm:
    """LDM's normalisation: 32 groups (fewer when the width does not allow them), eps 1e-6."""
    return nn.GroupNorm(math.gcd(32, channels), channels, eps=1e-6)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv3x3 twice plus the input (a 1x1 conv when the width changes), as LDM's ``ResnetBlock``."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(in_ch), nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2, self.conv2 = _norm(out_ch), nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


def _widths(width: int, levels: int) -> list:
    """Channel width per level: width x (1, 2, 4, 4, ...), LDM's multipliers capped at 4."""
    return [width * min(2 ** i, 4) for i in range(levels + 1)]


class ConvVAE(nn.Module):
    """image [B, C, H, W] -> posterior (mean, logvar) [B, c, H/s, W/s] -> image; s = ``stride`` (a power of 2)."""

    def __init__(self, in_chans: int = 3, latent_channels: int = 4, width: int = 64, num_res_blocks: int = 1,
                 stride: int = 8):
        super().__init__()
        if stride < 2 or stride & (stride - 1):
            raise ValueError(f"the conv VAE stride must be a power of 2 >= 2, got {stride}")
        self.arch = dict(in_chans=in_chans, latent_channels=latent_channels, width=width,
                         num_res_blocks=num_res_blocks, stride=stride)
        self.in_chans, self.latent_channels, self.stride = in_chans, latent_channels, stride
        widths = _widths(width, int(math.log2(stride)))
        enc = [nn.Conv2d(in_chans, widths[0], 3, padding=1)]
        for i in range(len(widths) - 1):
            enc += [ResBlock(widths[i] if j == 0 else widths[i + 1], widths[i + 1]) for j in range(num_res_blocks)]
            enc.append(nn.Conv2d(widths[i + 1], widths[i + 1], 3, stride=2, padding=1))
        enc += [ResBlock(widths[-1], widths[-1]), _norm(widths[-1]), nn.SiLU(),
                nn.Conv2d(widths[-1], 2 * latent_channels, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)
        dec = [nn.Conv2d(latent_channels, widths[-1], 3, padding=1), ResBlock(widths[-1], widths[-1])]
        for i in reversed(range(len(widths) - 1)):
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(widths[i + 1], widths[i + 1], 3, padding=1)]
            dec += [ResBlock(widths[i + 1] if j == 0 else widths[i], widths[i]) for j in range(num_res_blocks)]
        dec += [_norm(widths[0]), nn.SiLU(), nn.Conv2d(widths[0], in_chans, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """x [B, C, H, W] (H, W divisible by the stride) -> (mean, logvar) [B, c, H/s, W/s]; logvar clamped to
        [-30, 20] as LDM's ``DiagonalGaussianDistribution``."""
        h, w = x.shape[-2:]
        if h % self.stride or w % self.stride:
            raise ValueError(f"image {h}x{w} is not divisible by the conv VAE stride {self.stride}")
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, c, h, w] -> image [B, C, h·s, w·s]."""
        return self.decoder(z)

    def last_layer(self) -> torch.Tensor:
        """The decoder's output weight (the adversarial loss's adaptive weight is measured on it, as in VQGAN)."""
        return self.decoder[-1].weight


def gaussian_kl_map(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL[N(mean, e^logvar) || N(0, 1)] summed over the latent map, per image: [B, c, h, w] -> [B]."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)


class ConvVAETokenizer(PatchTokenizer):
    """Frozen conv VAE as a tokenizer (module docstring): encode = posterior mean, normalised per channel, cut into
    (p / s) x (p / s) latent patches (t_patch frames each), one per image patch; decode inverts it through g.

    Needs ``grid`` (T', H', W') in ``encode`` / ``decode``. Also a probe stem: ``forward(clip)`` is the normalised
    latent map [B, c, T, H/s, W/s] (``stride``, ``out_channels``), which a ``VisionTransformer`` patch-embeds with
    (t_patch, p / s, p / s) kernels; no gradient flows into it.
    """
    KIND = "conv_vae"
    LINEAR = False

    def __init__(self, vae: ConvVAE, latent_mean: torch.Tensor, latent_scale: torch.Tensor, patch_size: int,
                 t_patch: int = 1):
        super().__init__()
        c, s = vae.latent_channels, vae.stride
        if patch_size % s:
            raise ValueError(f"the patch size {patch_size} is not a multiple of the conv VAE stride {s}: a token "
                             f"must cover whole latent cells")
        if latent_mean.shape != (c,) or latent_scale.shape != (c,):
            raise ValueError(f"latent_mean and latent_scale must be [{c}], got {tuple(latent_mean.shape)}, "
                             f"{tuple(latent_scale.shape)}")
        self.vae = vae.requires_grad_(False).eval()
        self.register_buffer("latent_mean", latent_mean.detach().float().clone())
        self.register_buffer("latent_scale", latent_scale.detach().float().clone())
        self.p, self.t_patch, self.stride, self.out_channels = patch_size, t_patch, s, c
        self.latent_patch = patch_size // s
        self.D = t_patch * patch_size * patch_size * vae.in_chans
        self.d = t_patch * self.latent_patch ** 2 * c

    def train(self, mode: bool = True) -> "ConvVAETokenizer":
        return super().train(False)  # frozen: always in eval mode, whatever the model around it does

    def _frames(self, clip: torch.Tensor) -> Tuple[torch.Tensor, int]:
        b, c, t, h, w = clip.shape
        return clip.transpose(1, 2).reshape(b * t, c, h, w), b

    def _clip(self, frames: torch.Tensor, b: int) -> torch.Tensor:
        bt, c, h, w = frames.shape
        return frames.reshape(b, bt // b, c, h, w).transpose(1, 2)

    @torch.no_grad()
    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        """clip [B, C, T, H, W] -> the normalised latent map [B, c, T, H/s, W/s] (the posterior mean)."""
        frames, b = self._frames(clip.float())
        mean, _ = self.vae.encode(frames)
        mean = (mean - self.latent_mean[:, None, None]) / self.latent_scale[:, None, None]
        return self._clip(mean, b)

    def encode(self, x: torch.Tensor, grid: Optional[Grid] = None) -> torch.Tensor:
        """x [B, N, D] -> z [B, N, d] for patches of the token ``grid``."""
        clip = unpatchify(x, self.t_patch, self.p, self._need(grid))
        return patchify(self.forward(clip), self.t_patch, self.latent_patch)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, grid: Optional[Grid] = None) -> torch.Tensor:
        """z [B, N, d] -> x [B, N, D]: the decoder's image of the (de-normalised) latent map, as patches."""
        latent = unpatchify(z.float(), self.t_patch, self.latent_patch, self._need(grid))
        frames, b = self._frames(latent * self.latent_scale[:, None, None, None]
                                 + self.latent_mean[:, None, None, None])
        return patchify(self._clip(self.vae.decode(frames), b), self.t_patch, self.p)

    @staticmethod
    def _need(grid: Optional[Grid]) -> Grid:
        if grid is None:
            raise ValueError("the conv VAE tokenizer needs the token grid (T', H', W'): its convolutions see "
                             "neighbouring patches")
        return grid

    def extra_repr(self) -> str:
        return f"D={self.D}, d={self.d}, stride={self.stride}, latent_patch={self.latent_patch}"

    @classmethod
    def from_file(cls, path: str, d: Optional[int], expected_D: int, expected_layout: tuple) -> "ConvVAETokenizer":
        """Load a ``save_conv_vae`` file for patches of ``expected_layout`` (t_patch, p, C) and d values per token
        (``d`` None: any; a probe stem takes the file's).

        Raises FileNotFoundError or TokenizerFileError (a ValueError) with one line naming ``path`` and what the
        config expects: a missing file, another kind, a damaged file, another channel count, a patch size that the
        stride does not divide, or a d that this file does not give.
        """
        t_patch, p, chans = (int(v) for v in expected_layout)
        name, tool = FILE_KINDS[cls.KIND]
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path!r} does not exist: fit a conv VAE for {_describe(expected_layout)} with "
                                    f"{tool}")
        data = _load(path, cls.KIND)
        vae = _vae_from(path, data)
        if vae.in_chans != chans or p % vae.stride:
            raise TokenizerFileError(f"{path!r} is a conv VAE for {vae.in_chans}-channel images with stride "
                                     f"{vae.stride}; the config's patches are {_describe(expected_layout, '')}")
        per_token = t_patch * (p // vae.stride) ** 2 * vae.latent_channels
        if d is not None and per_token != d:
            raise TokenizerFileError(f"{path!r} gives d = {t_patch} x {p // vae.stride}^2 x {vae.latent_channels} = "
                                     f"{per_token} values per token, but the config asks for d = {d} "
                                     f"(LDAE.LATENT_DIM): set it to {per_token}, or fit a conv VAE with "
                                     f"CONV_VAE.LATENT_CHANNELS {d // (t_patch * (p // vae.stride) ** 2)}")
        stats = [data.get(k) for k in ("latent_mean", "latent_scale")]
        if not all(isinstance(v, torch.Tensor) and v.shape == (vae.latent_channels,) for v in stats) or \
                not bool((stats[1] > 0).all()):
            raise TokenizerFileError(f"{path!r} is a damaged {name} file (latent_mean / latent_scale): refit with "
                                     f"{tool}")
        return cls(vae, stats[0], stats[1], p, t_patch)


def _vae_from(path: str, data: dict) -> ConvVAE:
    """The ConvVAE of a file's "arch" and "state", or one line saying the file is damaged."""
    name, tool = FILE_KINDS["conv_vae"]
    arch = data.get("arch")
    try:
        if not isinstance(arch, dict) or set(arch) != set(ARCH_KEYS):
            raise ValueError(f"arch {arch!r} does not name {', '.join(ARCH_KEYS)}")
        vae = ConvVAE(**{k: int(arch[k]) for k in ARCH_KEYS})
        vae.load_state_dict(data.get("state") or {})
    except (ValueError, RuntimeError, TypeError) as e:
        reason = str(e).strip().splitlines()[0][:200]
        raise TokenizerFileError(f"{path!r} is a damaged {name} file ({reason}): refit with {tool}") from None
    return vae


def save_conv_vae(path: str, tokenizer: ConvVAETokenizer, losses: Dict[str, float], num_images: int,
                  source: str) -> None:
    """Write a conv VAE file (format in the module docstring), atomically."""
    vae = tokenizer.vae
    data = {"kind": "conv_vae", "arch": dict(vae.arch),
            "state": {k: v.detach().cpu() for k, v in vae.state_dict().items()},
            "latent_mean": tokenizer.latent_mean.detach().double().cpu(),
            "latent_scale": tokenizer.latent_scale.detach().double().cpu(),
            "layout": (tokenizer.t_patch, tokenizer.p, vae.in_chans),
            "losses": {str(k): float(v) for k, v in losses.items()}, "num_images": int(num_images),
            "source": str(source)}
    _save(path, data)
