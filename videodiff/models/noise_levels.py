"""l-DAE's noise: z_t = γ_t z_0 + σ_t ε (paper Eq. 1), its schedules and its loss weights λ_t.

Integer steps t in [0, num_steps), t = 0 the least noisy, as in ``diffusion.py``. Schedules (``LDAE.SCHEDULE``):

    ddpm           γ_t² = ᾱ_t of DDPM's linear β (1e-4 .. 0.02, ``diffusion.get_beta_schedule``), σ_t² = 1 - γ_t²
                   (DiT's schedule: Table 1 up to "replace noise schedule")
    linear_gamma2  γ_t² = 1 - (t + 1) / T, so 1 > γ² >= 0 as the paper writes; σ_t² = 1 - γ_t² (Table 1's last line, Fig. 3)
    linear_sigma   γ_t ≡ 1, σ_t = σ_max · t / (T - 1): linear from 0 (t = 0) to σ_max = √2 (Table 3 "remove input scaling")
    single         γ_t ≡ 1, σ_t = √(1/3) at every t (Table 3's last line). t is still drawn and fed to the model; with
                   one noise level it carries no information, which is the point of that ablation.

Loss weights (``LDAE.LOSS_WEIGHT``; paper Sec. 4.3): ``auto`` is the paper's choice for each line -- 1 for ε-prediction
(Eq. 2), γ_t² for clean-data prediction with a γ schedule ("λ_t = γ_t² works better"), 1 / (1 + σ_t²) once γ ≡ 1.
``snr`` (γ_t² / σ_t², Salimans & Ho) is there for the comparison the paper mentions; it is infinite where σ_t = 0.
"""
import math
from typing import Tuple

import torch

from videodiff.models.diffusion import get_beta_schedule

SCHEDULES = ("ddpm", "linear_gamma2", "linear_sigma", "single")
LOSS_WEIGHTS = ("auto", "none", "gamma2", "inv_1p_sigma2", "snr")
PREDICTIONS = ("eps", "z0", "image")


def noise_schedule(name: str, num_steps: int = 1000, sigma_max: float = math.sqrt(2.0),
                   single_sigma: float = math.sqrt(1.0 / 3.0)) -> Tuple[torch.Tensor, torch.Tensor]:
    """(γ [T], σ [T]) in float64 for schedule ``name``."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 2:
        raise ValueError(f"num_steps must be an integer >= 2, got {num_steps!r}")
    t = torch.arange(num_steps, dtype=torch.float64)
    if name == "ddpm":
        gamma2 = torch.cumprod(1.0 - get_beta_schedule("linear", num_steps, 1e-4, 0.02, 1.0), dim=0)
    elif name == "linear_gamma2":
        gamma2 = 1.0 - (t + 1) / num_steps
    elif name == "linear_sigma":
        return torch.ones_like(t), sigma_max * t / (num_steps - 1)
    elif name == "single":
        return torch.ones_like(t), torch.full_like(t, single_sigma)
    else:
        raise ValueError(f"unknown l-DAE noise schedule {name!r}; expected one of {', '.join(SCHEDULES)}")
    return gamma2.sqrt(), (1.0 - gamma2).clamp(min=0).sqrt()


def loss_weight(kind: str, predict: str, gamma: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """λ_t [T] (float64) for ``kind`` (``LOSS_WEIGHTS``) and the prediction target ``predict`` (``PREDICTIONS``)."""
    if kind == "auto":
        if predict == "eps":
            kind = "none"
        else:
            kind = "inv_1p_sigma2" if bool((gamma == 1).all()) else "gamma2"
    if kind == "none":
        return torch.ones_like(gamma)
    if kind == "gamma2":
        return gamma ** 2
    if kind == "inv_1p_sigma2":
        return 1.0 / (1.0 + sigma ** 2)
    if kind == "snr":
        return gamma ** 2 / sigma ** 2
    raise ValueError(f"unknown LDAE.LOSS_WEIGHT {kind!r}; expected one of {', '.join(LOSS_WEIGHTS)}")
