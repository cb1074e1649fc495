"""Patch tokenizers for l-DAE: flat patches <-> per-patch latents (Chen et al. 2024, Sec. 4.2-4.3).

A tokenizer maps each patch on its own, so it works on the flat patches of ``patchify.py``: ``x [B, N, D]`` with
D = t_patch·p·p·C in the ``(dt, dy, dx, c)`` layout (channel fastest), to ``z [B, N, d]`` and back. Each one below is
one of the paper's Sec. 4.2 variants, all subclasses of ``PatchTokenizer``, all linear (so ``ldae.affine_map`` folds
their encode into the probe's patch embedding) and frozen at l-DAE time (buffers, no parameters):

* ``PCATokenizer``: patch-wise PCA, ||x - V^T V x||^2 with V V^T = I (``tools/fit_pca.py``, no gradient training).
* ``PatchAETokenizer``: patch-wise AE, ||x - U^T V x||^2 with U, V d x D, trained by ``tools/fit_tokenizer.py``
  (``LinearPatchAE`` is the trainable module it fits).
* ``PatchVAETokenizer``: patch-wise VAE, the same plus KL[q(z|x) || N(0, I)] during the fit; at l-DAE time its
  encode is the posterior mean V x, so it is the same linear map as the AE's.
* ``PixelTokenizer``: Fig. 4's "naive tokenizer", the identity on patches (d = D); the data config does the rest
  (DATA.TRAIN_CROP_SIZE = S, VIT.PATCH_SIZE = p). Nothing to fit, no file.

Only PCA and pixel have ``full_coefficients`` (an orthonormal basis of the whole patch space), which LDAE.PREDICT
image needs; an AE / VAE latent has no such basis, so ``ldae.check_ldae_choices`` refuses that combination.

PCA files (``save_pca`` / ``PCATokenizer.from_file``; fitted by ``tools/fit_pca.py``) hold a dict
``{"kind": "pca", "mean" [D], "basis" [D, D], "eigenvalues" [D], "layout": (t_patch, p, C), "num_patches",
"source"}`` with float64 tensors; ``basis`` rows are the principal directions by decreasing eigenvalue (the
variance of the fit patches along them, dividing by the patch count). ``PCAAccumulator`` fits them in one pass.

AE / VAE files (``save_patch_ae`` / ``PatchAETokenizer.from_file``, ``PatchVAETokenizer.from_file``; fitted by
``tools/fit_tokenizer.py``) hold ``{"kind": "ae" | "vae", "mean" [D], "encoder" [d, D], "decoder" [d, D],
"scale" [d], "layout": (t_patch, p, C), "d", "losses": {name: float}, "num_patches", "source"}`` with float64
tensors, plus for "vae" ``"logvar" [d]`` (the learned posterior log-variance, kept for the record; encode does not
use it) and ``"kl_weight"``. ``encoder`` is V, ``decoder`` is U (rows: the d decoder directions in patch space),
``scale`` the per-component RMS of V (x - mean) on the fit patches. Unlike a PCA file, one file is one d.
"""
import os
from typing import Dict, Optional, Tuple

import torch
from torch import nn

Layout = Tuple[int, int, int]  # (t_patch, p, C)
FIT_TOOL = "tools/fit_pca.py --cfg <config>"
# Names and fit commands of the file kinds, for the one-line refusals of ``from_file``.
FILE_KINDS = {"pca": ("PCA", FIT_TOOL),
              "ae": ("patch AE", "tools/fit_tokenizer.py --cfg <config> --kind ae"),
              "vae": ("patch VAE", "tools/fit_tokenizer.py --cfg <config> --kind vae"),
              "conv_vae": ("conv VAE", "tools/fit_tokenizer.py --cfg <config> --kind conv_vae")}
# Whitening divides component i by sqrt(max(eigenvalue_i, WHITEN_FLOOR · eigenvalue_0)): a component without
# variance in the fit data (e.g. constant pixels) stays finite, and decode still inverts encode exactly.
WHITEN_FLOOR = 1e-10


class TokenizerFileError(ValueError):
    """A tokenizer file that cannot be used with this config; the message is one line naming the file."""


def fit_command(kind: str) -> str:
    """The command that fits a tokenizer file of ``kind`` ("pca", "ae", "vae")."""
    return FILE_KINDS[kind][1]


class PatchTokenizer(nn.Module):
    """Maps flat patches x [B, N, D] (patchify layout: t_patch·p·p·C, channel fastest) to latents [B, N, d] and
    back. Subclasses set ``D`` (patch size) and ``d`` (latent size) and implement ``encode`` / ``decode``.

    ``grid`` (T', H', W'), the token grid of the patches, is passed by l-DAE; the patch-wise tokenizers here map each
    patch on its own and ignore it, the conv VAE (``conv_vae.py``) needs it. ``LINEAR``: encode is affine, so l-DAE
    folds it into the probe's patch embedding (``ldae.affine_map``); a non-linear one is kept as a frozen stem."""
    D: int
    d: int
    LINEAR = True

    def encode(self, x: torch.Tensor, grid=None) -> torch.Tensor:
        """x [B, N, D] -> z [B, N, d]."""
        raise NotImplementedError

    def decode(self, z: torch.Tensor, grid=None) -> torch.Tensor:
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

    def encode(self, x: torch.Tensor, grid=None) -> torch.Tensor:
        """x [B, N, D] -> z [B, N, d] = (x - mean) @ V_d^T, divided by sqrt(eigenvalues[:d]) if whitening."""
        z = (x - self.mean) @ self.basis[:self.d].T
        return z / self._scale() if self.whiten else z

    def decode(self, z: torch.Tensor, grid=None) -> torch.Tensor:
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
        expected_layout = _expected(expected_D, expected_layout)
        _check_exists(path, "pca", expected_layout)
        data = _load(path, "pca")
        layout = _check_format(path, data)
        _check_layout(path, "pca", layout, expected_layout)
        if not 1 <= d <= expected_D:
            raise TokenizerFileError(f"{path!r} has D = {expected_D} components; the latent size d must be in "
                                     f"[1, {expected_D}], got {d}")
        return cls(data["mean"], data["basis"], data["eigenvalues"], d, whiten)


# The patch AE / VAE latents are divided by max(rms_i, SCALE_FLOOR · max_j rms_j): PCA whitening's floor
# (WHITEN_FLOOR on variances), so a component the fit left without variance stays finite; decode still inverts.
SCALE_FLOOR = WHITEN_FLOOR ** 0.5


class PatchAETokenizer(PatchTokenizer):
    """Patch-wise linear AE (Sec. 4.2: ||x - U^T V x||^2, U and V d x D), frozen: ``encode`` z = V (x - mean) / scale,
    ``decode`` x = U^T (z · scale) + mean, so decode(encode(x)) = U^T V (x - mean) + mean whatever the scale.

    Centring: the fit patches' mean is subtracted first (a buffer, as PCA's mean), so V and U need no bias; the fit
    (``LinearPatchAE``) learns them on centred patches.

    Scale: l-DAE's schedules (gamma^2 + sigma^2 = 1, sigma up to sqrt(2)) assume unit-variance latents, as DiT scales
    its VAE latents and PCA is whitened (LDAE.PCA_WHITEN, default True). A linear AE's latent has no scale of its own
    (V -> A V, U -> A^-T U gives the same reconstructions for any invertible d x d matrix A), so ``scale`` [d] is
    each component's RMS on the fit patches, measured after training (``LinearPatchAE.tokenizer``): per component,
    not one global factor, so that at a given t every component has the same signal-to-noise ratio, as whitened PCA
    components do, and Table 2's AE and PCA lines differ only in the map. The components are not decorrelated (that
    would need the AE's latent covariance, i.e. re-deriving PCA); LDAE.PCA_WHITEN does not apply here.

    Everything is a float32 buffer (saved in state dicts, moved by ``.to()``, never trained), so
    ``ldae.affine_map`` folds encode into the probe's patch embedding. No ``full_coefficients``: the AE has no
    orthonormal basis of the whole patch space, so LDAE.PREDICT image is refused with it (``ldae.check_ldae_choices``).
    """
    KIND = "ae"

    def __init__(self, mean: torch.Tensor, encoder: torch.Tensor, decoder: torch.Tensor, scale: torch.Tensor):
        super().__init__()
        D, d = mean.shape[-1], encoder.shape[0]
        if mean.shape != (D,) or encoder.shape != (d, D) or decoder.shape != (d, D) or scale.shape != (d,):
            raise ValueError(f"patch AE shapes must be mean [D], encoder [d, D], decoder [d, D], scale [d]; got "
                             f"{tuple(mean.shape)}, {tuple(encoder.shape)}, {tuple(decoder.shape)}, "
                             f"{tuple(scale.shape)}")
        if not 1 <= d <= D:
            raise ValueError(f"the patch AE latent size d must be in [1, {D}], got {d}")
        self.D, self.d = int(D), int(d)
        for name, value in (("mean", mean), ("encoder", encoder), ("decoder", decoder), ("scale", scale)):
            self.register_buffer(name, value.detach().float().clone())

    def encode(self, x: torch.Tensor, grid=None) -> torch.Tensor:
        """x [B, N, D] -> z [B, N, d] = ((x - mean) @ V^T) / scale."""
        return (x - self.mean) @ self.encoder.T / self.scale

    def decode(self, z: torch.Tensor, grid=None) -> torch.Tensor:
        """z [B, N, d] -> x [B, N, D] = (z · scale) @ U + mean."""
        return (z * self.scale) @ self.decoder + self.mean

    def extra_repr(self) -> str:
        return f"D={self.D}, d={self.d}"

    @classmethod
    def from_file(cls, path: str, d: int, expected_D: int, expected_layout: tuple) -> "PatchAETokenizer":
        """Load a ``save_patch_ae`` file of this class's kind for patches of ``expected_layout`` and latent size d.

        Raises FileNotFoundError or TokenizerFileError (a ValueError) with one line naming ``path`` and what the
        config expects, for a missing file, another kind, another patch layout, another d (the file fixes d) or
        damaged contents.
        """
        expected_layout = _expected(expected_D, expected_layout)
        _check_exists(path, cls.KIND, expected_layout)
        data = _load(path, cls.KIND)
        layout, file_d = _check_ae_format(path, data, cls.KIND)
        _check_layout(path, cls.KIND, layout, expected_layout)
        if file_d != d:
            name, tool = FILE_KINDS[cls.KIND]
            raise TokenizerFileError(f"{path!r} holds a d = {file_d} {name}, but the config asks for d = {d} "
                                     f"(LDAE.LATENT_DIM): set LDAE.LATENT_DIM {file_d}, or fit a d = {d} one with "
                                     f"{tool} LDAE.LATENT_DIM {d}")
        return cls(data["mean"], data["encoder"], data["decoder"], data["scale"])


class PatchVAETokenizer(PatchAETokenizer):
    """Patch-wise linear VAE (Sec. 4.2: ||x - U^T V x||^2 + KL[V x | N]), frozen: encode returns the posterior mean
    V (x - mean), scaled as the AE's (``PatchAETokenizer``), so it is deterministic and linear; the posterior
    variance only mattered during the fit (``LinearPatchAE``) and stays in the file as ``logvar``. Its KL term pulls
    the aggregate latent towards unit variance already; the per-component scale makes it exact on the fit patches
    (components the KL collapsed to the prior have a tiny RMS and are scaled up; decode scales them back down)."""
    KIND = "vae"


class PixelTokenizer(PatchTokenizer):
    """Fig. 4's "naive tokenizer": the identity on patches, d = D = t_patch·p·p·C. The image is resized to S and cut
    into p x p patches by the data config itself (DATA.TRAIN_CROP_SIZE S, VIT.PATCH_SIZE p: 256/16, 128/8, 64/4,
    32/2 all give 256 tokens of 768, 192, 48, 12 values), so there is nothing to fit and no file. No scale either:
    patches normalised by DATA.MEAN / STD have about unit variance per value already. ``full_coefficients`` is the
    identity (an orthonormal basis), so every l-DAE target works, with weight 1 on all D = d components."""

    def __init__(self, D: int):
        super().__init__()
        if D < 1:
            raise ValueError(f"the patch size D must be >= 1, got {D}")
        self.D = self.d = int(D)

    def encode(self, x: torch.Tensor, grid=None) -> torch.Tensor:
        return x

    def decode(self, z: torch.Tensor, grid=None) -> torch.Tensor:
        return z

    def full_coefficients(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def extra_repr(self) -> str:
        return f"D={self.D}, d={self.d}"


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL[N(mu, diag exp(logvar)) || N(0, I)] summed over the last dim: 1/2 sum_i (mu_i^2 + e^logvar_i - 1 - logvar_i).
    mu [..., d], logvar broadcastable to it -> [...]."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(-1)


class LinearPatchAE(nn.Module):
    """The trainable patch-wise AE (``variational=False``) or VAE that ``tools/fit_tokenizer.py`` fits with Adam, on
    patches x [M, D] centred by the fit data's ``mean`` (fixed), x~ = x - mean:

        AE:   loss = ||x~ - U^T V x~||^2
        VAE:  loss = E_q ||x~ - U^T z||^2 + kl_weight · KL[q(z|x) || N(0, I)],  q(z|x) = N(V x~, diag exp(logvar))

    per patch (squared errors summed over its D values, the paper's ||.||^2; KL summed over d), averaged over
    patches. The paper writes KL[V x | N] without saying how q's variance is made: here it is one learned
    log-variance per latent dimension, the same for every patch (for a linear decoder with a Gaussian likelihood
    the exact posterior covariance does not depend on x, so a second linear map would add nothing). With a linear
    decoder E_q ||x~ - U^T z||^2 = ||x~ - U^T V x~||^2 + sum_i exp(logvar_i) ||U_i||^2 in closed form, so the fit
    draws no samples: exact ELBO gradients per minibatch, and deterministic. With weight w this is a linear Gaussian
    VAE of decoder variance w / 2 (probabilistic PCA): at the optimum, principal directions with variance above
    w / 2 are kept and the others collapse to the prior. ``kl_weight`` 1 is the paper's formula as written (no
    weight given), in the normalised units of DATA.MEAN / STD.
    """

    def __init__(self, mean: torch.Tensor, d: int, variational: bool = False, kl_weight: float = 1.0,
                 generator: Optional[torch.Generator] = None):
        super().__init__()
        D = mean.shape[-1]
        if not 1 <= d <= D:
            raise ValueError(f"the patch AE latent size d must be in [1, {D}], got {d}")
        if kl_weight < 0:
            raise ValueError(f"the KL weight must be >= 0, got {kl_weight}")
        self.D, self.d, self.kl_weight = int(D), int(d), float(kl_weight)
        self.register_buffer("mean", mean.detach().float().clone())
        # Random init (not PCA's basis: the paper's AE learns its own filters, appendix B), std 1/sqrt(D).
        self.encoder = nn.Parameter(torch.randn(d, D, generator=generator) / D ** 0.5)
        self.decoder = nn.Parameter(torch.randn(d, D, generator=generator) / D ** 0.5)
        self.logvar = nn.Parameter(torch.zeros(d)) if variational else None

    @property
    def kind(self) -> str:
        return "ae" if self.logvar is None else "vae"

    def losses(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """x [M, D] -> {"loss", "recon": ||x~ - U^T V x~||^2 (the posterior mean's reconstruction), and for the VAE
        "spread": sum_i exp(logvar_i) ||U_i||^2 and "kl"}, each per patch, averaged over the M patches."""
        centred = x - self.mean
        mu = centred @ self.encoder.T
        recon = (centred - mu @ self.decoder).pow(2).sum(-1).mean()
        if self.logvar is None:
            return {"loss": recon, "recon": recon}
        spread = (self.logvar.exp() * self.decoder.pow(2).sum(-1)).sum()
        kl = gaussian_kl(mu, self.logvar).mean()
        return {"loss": recon + spread + self.kl_weight * kl, "recon": recon, "spread": spread, "kl": kl}

    @torch.no_grad()
    def latent_rms(self, patches: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
        """[d] float64: the RMS of each component of V (x - mean) over patches [M, D]."""
        total = torch.zeros(self.d, dtype=torch.float64)
        for part in patches.split(chunk):
            total += ((part.to(self.mean) - self.mean) @ self.encoder.T).double().pow(2).sum(0).cpu()
        return (total / max(len(patches), 1)).sqrt()

    @torch.no_grad()
    def tokenizer(self, patches: torch.Tensor) -> PatchAETokenizer:
        """The frozen tokenizer, its latent scale measured on ``patches`` [M, D] (the fit patches): unit RMS per
        component (``PatchAETokenizer``; floored by SCALE_FLOOR)."""
        rms = self.latent_rms(patches)
        scale = torch.maximum(rms, SCALE_FLOOR * rms.max()).clamp_min(1e-30)
        cls = PatchAETokenizer if self.logvar is None else PatchVAETokenizer
        return cls(self.mean, self.encoder, self.decoder, scale)


def _expected(expected_D: int, expected_layout: tuple) -> Layout:
    expected_layout = tuple(int(v) for v in expected_layout)
    if _size(expected_layout) != expected_D:
        raise ValueError(f"expected_layout {expected_layout} does not give expected_D = {expected_D}")
    return expected_layout


def _size(layout: Layout) -> int:
    """D = t_patch·p·p·C."""
    t, p, c = layout
    return t * p * p * c


def _describe(layout: Layout, noun: str = " patches") -> str:
    """(1, 16, 3) -> '1x16x16x3 patches (D = 768)'."""
    t, p, c = layout
    return f"{t}x{p}x{p}x{c}{noun} (D = {_size(layout)})"


def _check_exists(path: str, kind: str, expected_layout: Layout) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path!r} does not exist: fit it for {_describe(expected_layout)} "
                                f"with {FILE_KINDS[kind][1]}")


def _check_layout(path: str, kind: str, layout: Layout, expected_layout: Layout) -> None:
    if layout != expected_layout:
        raise TokenizerFileError(f"{path!r} was fitted on {_describe(layout)} but the config's patches are "
                                 f"{_describe(expected_layout, noun='')}: refit with {FILE_KINDS[kind][1]}")


def _load(path: str, kind: str) -> dict:
    """The dict of a tokenizer file of ``kind`` ("pca", "ae", "vae"), or one line saying what the file is."""
    name, tool = FILE_KINDS[kind]
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and weights_only errors alike mean "not one of our files"
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise TokenizerFileError(f"{path!r} is not a {name} tokenizer file (torch.load: {reason}): refit with "
                                 f"{tool}") from None
    if not isinstance(data, dict) or data.get("kind") != kind:
        found = data.get("kind") if isinstance(data, dict) else type(data).__name__
        raise TokenizerFileError(f"{path!r} is not a {name} tokenizer file (kind {found!r}, expected {kind!r}): "
                                 f"refit with {tool}")
    return data


def _file_layout(data: dict, bad) -> Layout:
    layout = data.get("layout")
    if not (isinstance(layout, (tuple, list)) and len(layout) == 3 and all(isinstance(v, int) for v in layout)):
        raise bad(f"layout {layout!r} is not (t_patch, p, C)")
    return tuple(layout)


def _check_tensors(data: dict, shapes: dict, layout: Layout, bad) -> None:
    """Each ``data[key]`` is a finite float tensor of ``shapes[key]``; else ``bad(what)`` is raised."""
    for key, shape in shapes.items():
        value = data.get(key)
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise bad(f"{key} is {got}, expected a tensor of shape {shape} for {_describe(layout)}")
        if not value.is_floating_point() or not torch.isfinite(value).all():
            raise bad(f"{key} has non-finite or non-float values")


def _check_format(path: str, data: dict) -> Layout:
    """The PCA file's (t_patch, p, C) after checking its entries' types, shapes, finiteness and orthonormality."""
    def bad(what: str) -> TokenizerFileError:
        return TokenizerFileError(f"{path!r} is a damaged PCA file ({what}): refit with {FIT_TOOL}")

    layout = _file_layout(data, bad)
    D = _size(layout)
    _check_tensors(data, {"mean": (D,), "basis": (D, D), "eigenvalues": (D,)}, layout, bad)
    basis = data["basis"].double()
    error = (basis @ basis.T - torch.eye(D, dtype=torch.float64)).abs().max().item()
    if error > 1e-4:
        raise bad(f"basis rows are not orthonormal: |V V^T - I| = {error:.2g}")
    return layout


def _check_ae_format(path: str, data: dict, kind: str) -> Tuple[Layout, int]:
    """An AE / VAE file's ((t_patch, p, C), d) after checking its entries' types, shapes and values."""
    def bad(what: str) -> TokenizerFileError:
        name, tool = FILE_KINDS[kind]
        return TokenizerFileError(f"{path!r} is a damaged {name} file ({what}): refit with {tool}")

    layout = _file_layout(data, bad)
    D, d = _size(layout), data.get("d")
    if not isinstance(d, int) or not 1 <= d <= D:
        raise bad(f"d {d!r} is not an integer in [1, {D}]")
    shapes = {"mean": (D,), "encoder": (d, D), "decoder": (d, D), "scale": (d,)}
    if kind == "vae":
        shapes["logvar"] = (d,)
    _check_tensors(data, shapes, layout, bad)
    if not bool((data["scale"] > 0).all()):
        raise bad("scale has values <= 0")
    return layout, d


def _save(path: str, data: dict) -> None:
    """torch.save ``data`` atomically: a temporary name in the same folder, then renamed."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        torch.save(data, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_pca(path: str, mean: torch.Tensor, basis: torch.Tensor, eigenvalues: torch.Tensor, layout: tuple,
             num_patches: int, source: str) -> None:
    """Write a PCA file (format in the module docstring) as float64, atomically: a temporary name, then renamed."""
    data = {"kind": "pca", "mean": mean.detach().double().cpu(), "basis": basis.detach().double().cpu(),
            "eigenvalues": eigenvalues.detach().double().cpu(), "layout": tuple(int(v) for v in layout),
            "num_patches": int(num_patches), "source": str(source)}
    _save(path, data)


def save_patch_ae(path: str, tokenizer: PatchAETokenizer, layout: tuple, losses: dict, num_patches: int,
                  source: str, logvar: Optional[torch.Tensor] = None, kl_weight: Optional[float] = None) -> None:
    """Write an AE (``PatchAETokenizer``) or VAE (``PatchVAETokenizer``: ``logvar`` and ``kl_weight`` required)
    file, format in the module docstring, float64, atomically."""
    kind = tokenizer.KIND
    if (kind == "vae") != (logvar is not None and kl_weight is not None):
        raise ValueError("a VAE file needs logvar and kl_weight, an AE file neither")
    data = {"kind": kind, "layout": tuple(int(v) for v in layout), "d": tokenizer.d,
            "losses": {str(k): float(v) for k, v in losses.items()}, "num_patches": int(num_patches),
            "source": str(source)}
    for name in ("mean", "encoder", "decoder", "scale"):
        data[name] = getattr(tokenizer, name).detach().double().cpu()
    if kind == "vae":
        data["logvar"], data["kl_weight"] = logvar.detach().double().cpu(), float(kl_weight)
    _save(path, data)


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
