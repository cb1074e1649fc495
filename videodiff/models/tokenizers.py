"""Patch tokenizers for l-DAE: flat patches <-> per-patch latents (Chen et al. 2024, Sec. 4.2-4.3).

A tokenizer maps each patch on its own, so it works on the flat patches of ``patchify.py``: ``x [B, N, D]`` with
D = t_patch·p·p·C in the ``(dt, dy, dx, c)`` layout (channel fastest), to ``z [B, N, d]`` and back. Only the
patch-wise PCA tokenizer exists so far; AE / VAE / pixel / conv-VAE tokenizers will subclass ``PatchTokenizer``.

PCA files (``save_pca`` / ``PCATokenizer.from_file``; fitted by ``tools/fit_pca.py``) hold a dict
``{"kind": "pca", "mean" [D], "basis" [D, D], "eigenvalues" [D], "layout": (t_patch, p, C), "num_patches",
"source"}`` with float64 tensors; ``basis`` rows are the principal directions by decreasing eigenvalue (the
variance of the fit patches along them, dividing by the patch count). ``PCAAccumulator`` fits them in one pass.
"""
import os
from typing import Tuple

import torch
from torch import nn

Layout = Tuple[int, int, int]  # (t_patch, p, C)
FIT_TOOL = "tools/fit_pca.py --cfg <config>"
# Whitening divides component i by sqrt(max(eigenvalue_i, WHITEN_FLOOR · eigenvalue_0)): a component without
# variance in the fit data (e.g. constant pixels) stays finite, and decode still inverts encode exactly.
WHITEN_FLOOR = 1e-10


class TokenizerFileError(ValueError):
    """A tokenizer file that cannot be used with this config; the message is one line naming the file."""


class PatchTokenizer(nn.Module):
    """Maps flat patches x [B, N, D] (patchify layout: t_patch·p·p·C, channel fastest) to latents [B, N, d] and
    back. Subclasses set ``D`` (patch size) and ``d`` (latent size) and implement ``encode`` / ``decode``."""
    D: int
    d: int

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, N, D] -> z [B, N, d]."""
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, N, d] -> x [B, N, D]."""
        raise NotImplementedError


class PCATokenizer(PatchTokenizer):
    """Patch-wise PCA keeping the first ``d`` components, whitened (unit variance per component) if ``whiten``.

    ``decode(encode(x))`` is the rank-d PCA reconstruction of x (exact at d = D); noise added to z and decoded
    lies in the span of the first d principal directions. The fit (mean, basis, eigenvalues) is kept as float32
    buffers: saved in state dicts, moved by ``.to()``, never trained.
    """

    def __init__(self, mean: torch.Tensor, basis: torch.Tensor, eigenvalues: torch.Tensor, d: int,
                 whiten: bool = True):
        super().__init__()
        D = mean.shape[-1]
        if mean.shape != (D,) or basis.shape != (D, D) or eigenvalues.shape != (D,):
            raise ValueError(f"PCA shapes must be mean [D], basis [D, D], eigenvalues [D]; got "
                             f"{tuple(mean.shape)}, {tuple(basis.shape)}, {tuple(eigenvalues.shape)}")
        if not 1 <= d <= D:
            raise ValueError(f"the PCA latent size d must be in [1, {D}], got {d}")
        self.D, self.d, self.whiten = D, int(d), bool(whiten)
        self.register_buffer("mean", mean.detach().float().clone())
        self.register_buffer("basis", basis.detach().float().clone())
        self.register_buffer("eigenvalues", eigenvalues.detach().float().clone())

    def _scale(self) -> torch.Tensor:
        """[d]: the per-component standard deviation that whitening divides by (floored, see WHITEN_FLOOR)."""
        eig = self.eigenvalues.clamp_min(1e-30)  # 1e-30: a fit on constant data still gives finite latents
        return torch.maximum(eig[:self.d], WHITEN_FLOOR * eig[0]).sqrt()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, N, D] -> z [B, N, d] = (x - mean) @ V_d^T, divided by sqrt(eigenvalues[:d]) if whitening."""
        z = (x - self.mean) @ self.basis[:self.d].T
        return z / self._scale() if self.whiten else z

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, N, d] -> x [B, N, D] = (z, times sqrt(eigenvalues[:d]) if whitening) @ V_d + mean."""
        if self.whiten:
            z = z * self._scale()
        return z @ self.basis[:self.d] + self.mean

    def full_coefficients(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, N, D] -> x @ V^T [B, N, D] in the full orthonormal basis: no mean, no whitening, norm preserved
        (l-DAE's loss on the residue r = V (x0 - net), weight 1 for the first d coefficients, less for the rest)."""
        return x @ self.basis.T

    def extra_repr(self) -> str:
        return f"D={self.D}, d={self.d}, whiten={self.whiten}"

    @classmethod
    def from_file(cls, path: str, d: int, whiten: bool, expected_D: int, expected_layout: tuple) -> "PCATokenizer":
        """Load a ``save_pca`` file for patches of ``expected_layout`` (t_patch, p, C) = ``expected_D`` values.

        Raises FileNotFoundError or TokenizerFileError (a ValueError) with one line naming ``path`` and what the
        config expects, for a missing file, another format, another patch layout, d outside [1, D] or
        non-finite values.
        """
        expected_layout = tuple(int(v) for v in expected_layout)
        if _size(expected_layout) != expected_D:
            raise ValueError(f"expected_layout {expected_layout} does not give expected_D = {expected_D}")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path!r} does not exist: fit it for {_describe(expected_layout)} "
                                    f"with {FIT_TOOL}")
        data = _load(path)
        layout = _check_format(path, data)
        if layout != expected_layout:
            raise TokenizerFileError(f"{path!r} was fitted on {_describe(layout)} but the config's patches are "
                                     f"{_describe(expected_layout, noun='')}: refit with {FIT_TOOL}")
        if not 1 <= d <= expected_D:
            raise TokenizerFileError(f"{path!r} has D = {expected_D} components; the latent size d must be in "
                                     f"[1, {expected_D}], got {d}")
        return cls(data["mean"], data["basis"], data["eigenvalues"], d, whiten)


def _size(layout: Layout) -> int:
    """D = t_patch·p·p·C."""
    t, p, c = layout
    return t * p * p * c


def _describe(layout: Layout, noun: str = " patches") -> str:
    """(1, 16, 3) -> '1x16x16x3 patches (D = 768)'."""
    t, p, c = layout
    return f"{t}x{p}x{p}x{c}{noun} (D = {_size(layout)})"


def _load(path: str) -> dict:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and weights_only errors alike mean "not one of our files"
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise TokenizerFileError(f"{path!r} is not a PCA tokenizer file (torch.load: {reason}): refit with "
                                 f"{FIT_TOOL}") from None
    if not isinstance(data, dict) or data.get("kind") != "pca":
        kind = data.get("kind") if isinstance(data, dict) else type(data).__name__
        raise TokenizerFileError(f"{path!r} is not a PCA tokenizer file (kind {kind!r}, expected 'pca'): refit "
                                 f"with {FIT_TOOL}")
    return data


def _check_format(path: str, data: dict) -> Layout:
    """The file's (t_patch, p, C) after checking its entries' types, shapes, finiteness and orthonormality."""
    def bad(what: str) -> TokenizerFileError:
        return TokenizerFileError(f"{path!r} is a damaged PCA file ({what}): refit with {FIT_TOOL}")

    layout = data.get("layout")
    if not (isinstance(layout, (tuple, list)) and len(layout) == 3 and all(isinstance(v, int) for v in layout)):
        raise bad(f"layout {layout!r} is not (t_patch, p, C)")
    layout = tuple(layout)
    D = _size(layout)
    shapes = {"mean": (D,), "basis": (D, D), "eigenvalues": (D,)}
    for key, shape in shapes.items():
        value = data.get(key)
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise bad(f"{key} is {got}, expected a tensor of shape {shape} for {_describe(layout)}")
        if not value.is_floating_point() or not torch.isfinite(value).all():
            raise bad(f"{key} has non-finite or non-float values")
    basis = data["basis"].double()
    error = (basis @ basis.T - torch.eye(D, dtype=torch.float64)).abs().max().item()
    if error > 1e-4:
        raise bad(f"basis rows are not orthonormal: |V V^T - I| = {error:.2g}")
    return layout


def save_pca(path: str, mean: torch.Tensor, basis: torch.Tensor, eigenvalues: torch.Tensor, layout: tuple,
             num_patches: int, source: str) -> None:
    """Write a PCA file (format in the module docstring) as float64, atomically: a temporary name, then renamed."""
    data = {"kind": "pca", "mean": mean.detach().double().cpu(), "basis": basis.detach().double().cpu(),
            "eigenvalues": eigenvalues.detach().double().cpu(), "layout": tuple(int(v) for v in layout),
            "num_patches": int(num_patches), "source": str(source)}
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        torch.save(data, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class PCAAccumulator:
    """Streaming PCA fit: ``update`` with patches [M, D] any number of times, then ``finish``.

    Keeps the count, the sum [D] and the sum of outer products [D, D] in float64 (memory O(D²) whatever the
    number of patches). The sums are of patches minus a shift (the first batch's mean), which keeps the
    covariance accurate when the data's mean is large against its spread.
    """

    def __init__(self, D: int):
        self.D, self.count = D, 0
        self.shift = None
        self.sum = torch.zeros(D, dtype=torch.float64)
        self.outer = torch.zeros(D, D, dtype=torch.float64)

    def update(self, patches: torch.Tensor) -> None:
        """Add patches [M, D] (any float dtype and device; accumulated in float64 on the CPU)."""
        if patches.dim() != 2 or patches.shape[1] != self.D:
            raise ValueError(f"patches must be [M, {self.D}], got {tuple(patches.shape)}")
        x = patches.detach().to("cpu", torch.float64)
        if not torch.isfinite(x).all():
            raise ValueError("patches contain NaN or Inf values")
        if self.shift is None:
            self.shift = x.mean(dim=0) if len(x) else None
        if self.shift is not None:
            x = x - self.shift
            self.count += len(x)
            self.sum += x.sum(dim=0)
            self.outer += x.T @ x

    def finish(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (mean [D], basis [D, D], eigenvalues [D]), float64: basis rows are the covariance's eigenvectors by
        decreasing eigenvalue, each signed so that its largest-magnitude entry is positive (the first such entry
        on ties), so the same data always give the same basis. Eigenvalues are the variances (divided by the
        count) along the rows, clamped at 0."""
        if self.count < 2:
            raise ValueError(f"a PCA fit needs at least 2 patches, got {self.count}")
        centred_mean = self.sum / self.count
        cov = self.outer / self.count - torch.outer(centred_mean, centred_mean)
        eigenvalues, vectors = torch.linalg.eigh((cov + cov.T) / 2)  # ascending, vectors in columns
        eigenvalues, basis = eigenvalues.flip(0).clamp_min(0), vectors.flip(1).T.contiguous()
        peak = basis.gather(1, basis.abs().argmax(dim=1, keepdim=True))
        basis = basis * torch.where(peak < 0, -1.0, 1.0).to(basis)
        return self.shift + centred_mean, basis, eigenvalues
