"""uint8 clips from the data workers -> normalised float32 clips on the training device.

Workers hand over uint8 clips ``[B, C, T, H, W]`` (``DATA_LOADER.UINT8_HANDOVER``): a quarter of float32's bytes
through shared memory, pinned memory and the host-to-device copy. Normalisation by ``DATA.MEAN`` / ``DATA.STD``
(given for pixels in [0, 1]) then runs here, once per batch on the device, before any hook (mixup) or model sees
the clip: the Trainer, evaluation and the data benchmark all call ``ClipNormalizer``.

Both handovers share ``normalization_constants``: one multiply and one subtract in float32, the same operations in
the same order, so a uint8 clip normalised here is bit for bit the clip the float handover's workers produce.
"""
from typing import Dict, Optional, Sequence, Tuple

import torch

DEFAULT_MEAN = (0.45, 0.45, 0.45)  # the transforms' and the config's defaults (Kinetics)
DEFAULT_STD = (0.225, 0.225, 0.225)


def normalization_constants(mean: Sequence[float], std: Sequence[float],
                            scale: float = 255.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(gain, shift)``, float32 ``[C, 1, 1, 1]``, with ``(x / scale - mean) / std == x * gain - shift``.

    ``scale`` is 255 for uint8 pixels, 1 for floats already in [0, 1]. ``[C, 1, 1, 1]`` broadcasts over a clip
    ``[C, T, H, W]`` and a batch ``[B, C, T, H, W]`` alike.
    """
    gain = torch.tensor([1.0 / (scale * s) for s in std]).view(-1, 1, 1, 1)
    shift = torch.tensor([m / s for m, s in zip(mean, std)]).view(-1, 1, 1, 1)
    return gain, shift


class ClipNormalizer:
    """``clip`` uint8 ``[..., C, T, H, W]`` -> normalised float32 on ``device``.

    A float clip is taken as already normalised (the float handover, ``DATA_LOADER.UINT8_HANDOVER False``, or a
    caller's own tensor) and only moved, so calling this twice, or on either handover, is safe.
    """

    def __init__(self, mean: Sequence[float] = DEFAULT_MEAN, std: Sequence[float] = DEFAULT_STD):
        self.mean, self.std = tuple(mean), tuple(std)
        self._constants: Dict[torch.device, Tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def from_cfg(cls, cfg) -> "ClipNormalizer":
        return cls(cfg.DATA.MEAN, cfg.DATA.STD)

    def __call__(self, clip: torch.Tensor, device: Optional[torch.device] = None) -> torch.Tensor:
        if device is not None:
            clip = clip.to(device, non_blocking=True)  # uint8 travels; the float copy is made on the device
        if clip.dtype != torch.uint8:
            return clip
        if clip.shape[-4] != len(self.mean):
            raise ValueError(f"clip has {clip.shape[-4]} channels but DATA.MEAN / STD give {len(self.mean)}")
        gain, shift = self._on(clip.device)
        return clip.float().mul_(gain).sub_(shift)

    def _on(self, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        # Made once per device: a per-batch host-to-device copy of two tiny tensors would sync for nothing.
        if device not in self._constants:
            gain, shift = normalization_constants(self.mean, self.std)
            self._constants[device] = (gain.to(device), shift.to(device))
        return self._constants[device]
