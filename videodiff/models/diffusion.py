"""Gaussian diffusion (DDPM) with the DiffMAE ρ-exponentiated noise schedule.

Symbols follow DDPM (Ho et al. 2020) and the DiffMAE supplement:

    β_t            forward-process variance of step t
    α_t = 1 - β_t,  ᾱ_t = Π_{i<=t} α_i
    q(x_t | x_0)   = N(√ᾱ_t x_0, (1 - ᾱ_t) I)                             (DDPM Eq. 4)
    q(x_{t-1} | x_t, x_0) = N(μ̃_t(x_t, x_0), β̃_t I),                       (DDPM Eq. 6-7)
        μ̃_t = √ᾱ_{t-1} β_t / (1 - ᾱ_t) · x_0 + √α_t (1 - ᾱ_{t-1}) / (1 - ᾱ_t) · x_t
        β̃_t = (1 - ᾱ_{t-1}) / (1 - ᾱ_t) · β_t

Timestep convention
-------------------
``t`` is an integer index in ``[0, num_steps)``. ``t = 0`` is the *least* noisy step (the paper's
t = 1) and ``t = num_steps - 1`` the noisiest (the paper's t = T). ``ᾱ_{-1} := 1`` stands for the
clean data, so the reverse step taken *from* t = 0 returns the x_0 prediction without adding noise.

Noise schedule with ρ (DiffMAE supplement)
------------------------------------------
The linear DDPM schedule β_t = linspace(beta_start, beta_end, num_steps)[t] is exponentiated,
β_t ← β_t^ρ. Because β_t < 1, ρ < 1 enlarges every β_t, so ᾱ_t is lower at every t; ρ = 1 is DDPM
exactly. (Unlike guided-diffusion, the linear endpoints are *not* rescaled by 1000 / num_steps.)
``schedule="cosine"`` (Nichol & Dhariwal 2021) is available too; ρ is applied to its betas as well.

Measured with the defaults (linear 1e-4..0.02, 1000 steps, float64), see
``GaussianDiffusion.fraction_of_steps_with_low_signal``:

    ρ     ᾱ_999          √ᾱ_499   steps with √ᾱ_t < 0.05   steps with √ᾱ_t < 0.1
    1.0   4.04e-5        0.280    231 / 1000 (23.1%)       327 / 1000 (32.7%)
    0.8   1.71e-11       0.0283   547 / 1000 (54.7%)       609 / 1000 (60.9%)
    0.6   9.23e-28       3.7e-5   769 / 1000 (76.9%)       805 / 1000 (80.5%)

So ρ = 0.8 spends more than half of uniformly drawn training steps on inputs that are almost pure
noise, and ρ = 0.6 more than three quarters.

Sampling with fewer steps
-------------------------
``sampling_timesteps(n)`` picks n evenly spaced indices from num_steps - 1 down to 0. A reverse step
between any two timesteps t > s uses the DDPM posterior of the respaced chain (improved DDPM,
Nichol & Dhariwal 2021), whose single step has ᾱ_{t|s} = ᾱ_t / ᾱ_s and β_{t|s} = 1 - ᾱ_t / ᾱ_s:

    μ̃ = √ᾱ_s β_{t|s} / (1 - ᾱ_t) · x_0 + √(ᾱ_t/ᾱ_s) (1 - ᾱ_s) / (1 - ᾱ_t) · x_t
    σ̃² = (1 - ᾱ_s) / (1 - ᾱ_t) · β_{t|s}

With s = t - 1 this is exactly DDPM's Eq. 7.

All schedule arrays are float64 tensors on the CPU; methods gather the entries they need onto the
device of their inputs (cached per device) and cast them to the input's dtype.
"""

import math
from typing import Callable, Dict, Iterable, Iterator, NamedTuple, Optional, Sequence, Tuple, Union

import torch

SCHEDULES = ("linear", "cosine")


def get_beta_schedule(schedule: str = "linear", num_steps: int = 1000, beta_start: float = 1e-4,
                      beta_end: float = 0.02, rho: float = 1.0) -> torch.Tensor:
    """Return β_t^ρ for t in [0, num_steps) as a float64 tensor [num_steps].

    ``linear``: β_t = linspace(beta_start, beta_end, num_steps) (DDPM).
    ``cosine``: β_t = min(1 - ᾱ(t+1)/ᾱ(t), 0.999) with ᾱ(u) = cos²((u/T + 0.008)/1.008 · π/2)
    (Nichol & Dhariwal); beta_start / beta_end are ignored.
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
    if not (isinstance(rho, (int, float)) and math.isfinite(rho) and rho > 0):
        raise ValueError(f"rho must be a finite number > 0, got {rho!r}")
    if schedule == "linear":
        if not 0.0 < beta_start <= beta_end < 1.0:
            raise ValueError(
                f"linear schedule needs 0 < beta_start <= beta_end < 1, "
                f"got beta_start={beta_start!r}, beta_end={beta_end!r}")
        betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
    elif schedule == "cosine":
        betas = _cosine_betas(num_steps)
    else:
        raise ValueError(f"unknown noise schedule {schedule!r}; expected one of {SCHEDULES}")
    return betas ** rho


def _cosine_betas(num_steps: int, offset: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    u = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    alpha_bar = torch.cos((u + offset) / (1 + offset) * math.pi / 2) ** 2
    return (1.0 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)


class GaussianDiffusion:
    """Precomputed DDPM schedule with q_sample, posterior and an x_0-prediction reverse sampler.

    Args mirror the config keys ``DIFFUSION.{STEPS, BETA_START, BETA_END, RHO, SCHEDULE}``.
    Timestep t is an integer index in [0, num_steps); t = 0 is the least noisy step.
    """

    def __init__(self, num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                 rho: float = 1.0, schedule: str = "linear"):
        self.schedule, self.rho = schedule, rho
        self._setup(get_beta_schedule(schedule, num_steps, beta_start, beta_end, rho))

    @classmethod
    def from_betas(cls, betas: Union[torch.Tensor, Sequence[float]]) -> "GaussianDiffusion":
        """A diffusion with explicitly given β_t (e.g. ``respaced_betas``); ρ is not applied."""
        obj = cls.__new__(cls)
        obj.schedule, obj.rho = "custom", 1.0
        obj._setup(torch.as_tensor(betas, dtype=torch.float64).flatten())
        return obj

    def _setup(self, betas: torch.Tensor) -> None:
        if betas.numel() < 1:
            raise ValueError("need at least one beta")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError(f"every beta must lie in (0, 1); got min {betas.min().item():.3g}, "
                             f"max {betas.max().item():.3g}")
        self.num_steps = betas.numel()
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)                      # ᾱ_t
        self.alphas_cumprod_prev = torch.cat([betas.new_ones(1), self.alphas_cumprod[:-1]])
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()
        self.sqrt_recip_alphas_cumprod = self.alphas_cumprod.rsqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / self.alphas_cumprod - 1.0).sqrt()
        # q(x_{t-1} | x_t, x_0), DDPM Eq. 7. β̃_0 = 0, so the log is clipped with β̃_1.
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        clip_from = self.posterior_variance[1:2] if self.num_steps > 1 else betas[:1]
        self.posterior_log_variance_clipped = torch.log(
            torch.cat([clip_from, self.posterior_variance[1:]]))
        self.posterior_mean_coef1 = betas * self.alphas_cumprod_prev.sqrt() / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = ((1.0 - self.alphas_cumprod_prev) * self.alphas.sqrt()
                                     / (1.0 - self.alphas_cumprod))
        self._device_cache: Dict[Tuple[str, str], torch.Tensor] = {}

    def __repr__(self) -> str:
        return (f"GaussianDiffusion(num_steps={self.num_steps}, schedule={self.schedule!r}, "
                f"rho={self.rho}, alphas_cumprod[-1]={self.alphas_cumprod[-1].item():.3g})")

    # ------------------------------------------------------------------ helpers
    def _extract(self, name: str, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """self.<name>[t] as [B, 1, ..., 1] on x's device and dtype (broadcasts over x [B, ...])."""
        arr = self._on_device(name, t.device)
        out = arr[t].to(dtype=x.dtype if x.is_floating_point() else torch.float32)
        return out.reshape(t.shape[0], *([1] * (x.dim() - 1))).to(x.device)

    def _on_device(self, name: str, device: torch.device) -> torch.Tensor:
        arr = getattr(self, name)
        if device.type == "cpu":
            return arr
        key = (name, str(device))
        if key not in self._device_cache:  # MPS has no float64; float32 of float64-computed values is fine
            dtype = torch.float32 if device.type == "mps" else torch.float64
            self._device_cache[key] = arr.to(device=device, dtype=dtype)
        return self._device_cache[key]

    def _check_t(self, t: torch.Tensor, x: torch.Tensor, name: str = "t") -> None:
        if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"{name} must be an integer tensor of shape [B], got "
                             f"{type(t).__name__} {getattr(t, 'dtype', '')} {tuple(getattr(t, 'shape', ()))}")
        if t.shape[0] != x.shape[0]:
            raise ValueError(f"{name} has {t.shape[0]} entries but the batch has {x.shape[0]} samples")
        if t.device.type == "cpu" and t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_steps):
            raise ValueError(f"{name} must lie in [0, {self.num_steps}), got values in "
                             f"[{int(t.min())}, {int(t.max())}]")

    def sample_timesteps(self, batch: int, device: Union[str, torch.device] = "cpu",
                         generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Training timesteps t ~ Uniform{0, ..., num_steps - 1}, LongTensor [batch]."""
        return torch.randint(0, self.num_steps, (batch,), device=device, generator=generator)

    def fraction_of_steps_with_low_signal(self, threshold: float = 0.05) -> float:
        """Fraction of t in [0, num_steps) whose data coefficient √ᾱ_t is below ``threshold``."""
        return (self.sqrt_alphas_cumprod < threshold).double().mean().item()

    # ------------------------------------------------------------------ forward process
    def q_mean_variance(self, x0: torch.Tensor, t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Mean √ᾱ_t x_0 [B, ...] and variance 1 - ᾱ_t [B, 1, ...] of q(x_t | x_0)."""
        self._check_t(t, x0)
        return self._extract("sqrt_alphas_cumprod", t, x0) * x0, \
            1.0 - self._extract("alphas_cumprod", t, x0)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor,
                 noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x_t = √ᾱ_t x_0 + √(1 - ᾱ_t) ε  (DDPM Eq. 4). x0 [B, ...], t LongTensor [B]."""
        self._check_t(t, x0)
        if noise is None:
            noise = torch.randn_like(x0)
        elif noise.shape != x0.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} != x0 shape {tuple(x0.shape)}")
        return (self._extract("sqrt_alphas_cumprod", t, x0) * x0
                + self._extract("sqrt_one_minus_alphas_cumprod", t, x0) * noise)

    def predict_x0_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_0 = (x_t - √(1 - ᾱ_t) ε) / √ᾱ_t, for ε-predicting models."""
        self._check_t(t, x_t)
        return (self._extract("sqrt_recip_alphas_cumprod", t, x_t) * x_t
                - self._extract("sqrt_recipm1_alphas_cumprod", t, x_t) * eps)

    def predict_eps_from_x0(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """ε = (x_t - √ᾱ_t x_0) / √(1 - ᾱ_t)."""
        self._check_t(t, x_t)
        return ((self._extract("sqrt_recip_alphas_cumprod", t, x_t) * x_t - x0)
                / self._extract("sqrt_recipm1_alphas_cumprod", t, x_t))

    # ------------------------------------------------------------------ posterior / reverse process
    def q_posterior_mean_variance(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
                                  ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q(x_{t-1} | x_t, x_0) (DDPM Eq. 7): mean [B, ...], variance and clipped log-variance [B, 1, ...]."""
        self._check_t(t, x_t)
        if x0.shape != x_t.shape:
            raise ValueError(f"x0 shape {tuple(x0.shape)} != x_t shape {tuple(x_t.shape)}")
        mean = (self._extract("posterior_mean_coef1", t, x_t) * x0
                + self._extract("posterior_mean_coef2", t, x_t) * x_t)
        return (mean, self._extract("posterior_variance", t, x_t),
                self._extract("posterior_log_variance_clipped", t, x_t))

    def _alphas_cumprod_or_one(self, t: torch.Tensor) -> torch.Tensor:
        """ᾱ_t in float64 on t's device, with ᾱ_{-1} = 1 (clean data)."""
        arr = self._on_device("alphas_cumprod", t.device)
        return torch.where(t < 0, torch.ones((), dtype=arr.dtype, device=t.device), arr[t.clamp(min=0)])

    def p_sample_step(self, x0_pred: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, s: torch.Tensor,
                      noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """One reverse step x_t -> x_s (s < t) from an x_0 prediction, for a respaced chain.

        Samples the DDPM posterior of the two-step chain with ᾱ_t and ᾱ_s (module docstring).
        ``s = -1`` means "to clean data" and returns x0_pred itself (zero variance, no noise).
        t, s: LongTensor [B] with -1 <= s < t < num_steps.
        """
        self._check_t(t, x_t)
        if not isinstance(s, torch.Tensor) or s.shape != t.shape:
            raise ValueError(f"s must be a tensor shaped like t {tuple(t.shape)}")
        if s.device.type == "cpu" and t.device.type == "cpu" and bool(((s < -1) | (s >= t)).any()):
            raise ValueError(f"need -1 <= s < t, got t={t.tolist()}, s={s.tolist()}")
        if x0_pred.shape != x_t.shape:
            raise ValueError(f"x0_pred shape {tuple(x0_pred.shape)} != x_t shape {tuple(x_t.shape)}")
        a_t = self._alphas_cumprod_or_one(t)
        a_s = self._alphas_cumprod_or_one(s.to(t.device))
        beta_ts = 1.0 - a_t / a_s                              # β_{t|s}
        coef_x0 = a_s.sqrt() * beta_ts / (1.0 - a_t)
        coef_xt = (a_t / a_s).sqrt() * (1.0 - a_s) / (1.0 - a_t)
        var = (1.0 - a_s) / (1.0 - a_t) * beta_ts

        def bcast(v):
            return v.to(device=x_t.device, dtype=x_t.dtype).reshape(-1, *([1] * (x_t.dim() - 1)))

        mean = bcast(coef_x0) * x0_pred + bcast(coef_xt) * x_t
        if noise is None:
            noise = torch.randn_like(x_t)
        return mean + bcast(var.sqrt()) * noise  # var == 0 exactly when s == -1

    def p_sample_from_x0(self, x0_pred: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                         noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """One DDPM reverse step x_t -> x_{t-1} given the model's x_0 prediction.

        At t = 0 it returns x0_pred (no noise is added).
        """
        return self.p_sample_step(x0_pred, x_t, t, t - 1, noise=noise)

    def sampling_timesteps(self, num_sample_steps: Optional[int] = None) -> torch.Tensor:
        """Evenly spaced, strictly decreasing t from num_steps - 1 down to 0 (LongTensor [n]).

        t_i = round_half_up((num_steps - 1) · (n - 1 - i) / (n - 1)); n = 1 gives [num_steps - 1]
        (a single step straight to the x_0 prediction). None means every step.
        """
        n = self.num_steps if num_sample_steps is None else num_sample_steps
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= self.num_steps:
            raise ValueError(f"num_sample_steps must be an integer in [1, {self.num_steps}], got {n!r}")
        if n == 1:
            return torch.tensor([self.num_steps - 1], dtype=torch.long)
        i = torch.arange(n - 1, -1, -1, dtype=torch.long)
        # integer round-half-up keeps the sequence strictly decreasing (spacing >= 1)
        return (2 * (self.num_steps - 1) * i + (n - 1)) // (2 * (n - 1))

    def respaced_betas(self, timesteps: Union[torch.Tensor, Sequence[int]]) -> torch.Tensor:
        """β of the chain visiting only ``timesteps`` (improved DDPM): 1 - ᾱ_{t_k} / ᾱ_{t_{k-1}}, ascending t."""
        ts = torch.as_tensor(timesteps, dtype=torch.long).sort().values
        a = self.alphas_cumprod[ts]
        return 1.0 - a / torch.cat([a.new_ones(1), a[:-1]])

    @torch.no_grad()
    def sample_loop(self, denoise_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                    shape_or_xT: Union[torch.Tensor, Sequence[int]], num_sample_steps: Optional[int] = None,
                    generator: Optional[torch.Generator] = None, device: Union[str, torch.device, None] = None,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Run the reverse process from x_T and return the final x_0 estimate [B, ...].

        ``denoise_fn(x_t, t) -> x0_pred`` gets x_t [B, ...] and t LongTensor [B] (the *original*
        timestep index, also when strided). ``shape_or_xT`` is a shape (pure noise is drawn with
        ``generator`` on ``device``/``dtype``) or a given x_T tensor. ``num_sample_steps`` picks
        ``sampling_timesteps(n)``; None runs all num_steps steps. For the states along the way, iterate
        ``sample_loop_progressive`` instead (same arguments, same draws).
        """
        for step in self.sample_loop_progressive(denoise_fn, shape_or_xT, num_sample_steps, generator, device, dtype):
            pass
        return step.x_next

    @torch.no_grad()
    def sample_loop_progressive(self, denoise_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                                shape_or_xT: Union[torch.Tensor, Sequence[int]],
                                num_sample_steps: Optional[int] = None, generator: Optional[torch.Generator] = None,
                                device: Union[str, torch.device, None] = None,
                                dtype: torch.dtype = torch.float32) -> Iterator["ReverseStep"]:
        """``sample_loop`` one reverse step at a time (as DiT's ``p_sample_loop_progressive``).

        Yields a ``ReverseStep(t, x_t, x0_pred, x_next)`` per chain step, noisiest first: x_t as fed to
        ``denoise_fn`` at step t, its x_0 prediction, and the state it moved to; the last step's ``x_next``
        is the sample.
        """
        if isinstance(shape_or_xT, torch.Tensor):
            x = shape_or_xT.to(device=device or shape_or_xT.device)
        else:
            x = torch.randn(tuple(shape_or_xT), generator=generator, device=device, dtype=dtype)
        chain = self.sampling_timesteps(num_sample_steps).tolist() + [-1]
        for t_val, s_val in zip(chain[:-1], chain[1:]):
            t = torch.full((x.shape[0],), t_val, dtype=torch.long, device=x.device)
            s = torch.full_like(t, s_val)
            x0_pred = denoise_fn(x, t)
            noise = (torch.zeros_like(x) if s_val < 0  # last step: variance is 0, draw nothing
                     else torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype))
            x_next = self.p_sample_step(x0_pred, x, t, s, noise=noise)
            yield ReverseStep(t_val, x, x0_pred, x_next)
            x = x_next

    def chain_steps_nearest(self, requested: Iterable[int], num_sample_steps: Optional[int] = None) -> set:
        """The steps of the ``num_sample_steps`` chain nearest each requested t in [0, num_steps) (ties to the
        noisier one); e.g. (999, 499, 0) picks the rows of a "t = 1000 / 500 / 0" figure."""
        chain = self.sampling_timesteps(num_sample_steps).tolist()
        matched = set()
        for r in requested:
            if isinstance(r, bool) or not isinstance(r, int) or not 0 <= r < self.num_steps:
                raise ValueError(f"requested timesteps must be integers in [0, {self.num_steps}), got {r!r}")
            matched.add(min(chain, key=lambda c: (abs(c - r), -c)))
        return matched


class ReverseStep(NamedTuple):
    """One step of the reverse chain (``GaussianDiffusion.sample_loop_progressive``)."""
    t: int                  # the timestep index denoised at this step
    x_t: torch.Tensor       # [B, ...] the state fed to the denoiser
    x0_pred: torch.Tensor   # [B, ...] its x_0 prediction
    x_next: torch.Tensor    # [B, ...] the state after the step (the sample, after the last one)
