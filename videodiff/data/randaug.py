"""RandAugment for clips (``AUG.RAND_AUG``): one draw of operations and magnitudes per clip, used on every frame.

The setting is timm's string form, as in the DiffMAE / MAE fine-tuning recipes: ``rand-m9-n2-mstd0.5`` =
magnitude 9 (of 10), 2 operations per clip, magnitude jittered by a Gaussian of std 0.5. Optional ``-p0.5``:
the probability that each chosen operation is applied (timm's default, 0.5). Missing tokens take timm's
defaults (m10, n2, mstd0). ``""`` turns RandAugment off.

The operations are pytorchvideo's video RandAugment (SlowFast's list: brightness, contrast, saturation,
sharpness, autocontrast, equalize, invert, rotate, posterize, solarize, shear and translate in x / y). It
draws its choices once per call on a ``[T, C, H, W]`` tensor, so every frame of a clip gets the same ones.
It draws from torch's global generator; ``ClipRandAugment`` seeds that from the item's own generator inside
``fork_rng``, so clips stay a function of (seed, epoch, index) and the global stream is left untouched.
"""
import re
from typing import Dict, Optional

import torch
from pytorchvideo.transforms.rand_augment import RandAugment  # importable: videodiff/__init__ applied compat.py

_DEFAULTS = {"m": 10.0, "n": 2.0, "mstd": 0.0, "p": 0.5}
_TOKEN = re.compile(r"^(mstd|m|n|p)(\d+(?:\.\d*)?)$")
_LIMITS = {"m": (0, 10, "a magnitude in [0, 10]"), "n": (1, 14, "1 to 14 operations"),
           "mstd": (0, float("inf"), "a std >= 0"), "p": (0, 1, "a probability in [0, 1]")}


def parse_rand_aug(spec: str) -> Optional[Dict[str, float]]:
    """``""`` -> None; ``"rand-m9-n2-mstd0.5"`` -> ``{"m": 9.0, "n": 2.0, "mstd": 0.5, "p": 0.5}``.

    Raises ValueError naming the bad token and the accepted form.
    """
    if not spec:
        return None
    head, *tokens = spec.split("-")
    form = "expected '' or 'rand' followed by -m<magnitude> -n<ops> -mstd<std> -p<prob>, e.g. rand-m9-n2-mstd0.5"
    if head != "rand":
        raise ValueError(f"RandAugment setting {spec!r}: {form}")
    params = dict(_DEFAULTS)
    for token in tokens:
        match = _TOKEN.match(token)
        if not match:
            raise ValueError(f"RandAugment setting {spec!r}: unknown token {token!r}; {form}")
        name, value = match.group(1), float(match.group(2))
        low, high, allowed = _LIMITS[name]
        if not low <= value <= high or (name == "n" and value != int(value)):
            raise ValueError(f"RandAugment setting {spec!r}: {token!r} is out of range: expected {allowed}")
        params[name] = value
    return params


class ClipRandAugment:
    """RandAugment with one set of choices per clip, drawn from the caller's ``torch.Generator``."""

    def __init__(self, spec: str):
        params = parse_rand_aug(spec)
        if params is None:
            raise ValueError("ClipRandAugment needs a RandAugment setting such as 'rand-m9-n2-mstd0.5'")
        self.spec = spec
        self.op = RandAugment(magnitude=params["m"], num_layers=int(params["n"]), prob=params["p"],
                              sampling_type="gaussian", sampling_hparas={"sampling_std": params["mstd"]})

    def __call__(self, clip: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        """``[T, C, H, W]`` float in [0, 1] -> the same shape; every frame gets the same operations."""
        seed = int(torch.randint(0, 2**62, (1,), generator=rng))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.op(clip)
