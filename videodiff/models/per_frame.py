"""Per-frame tokenizers for video l-DAE (LDAE.TOKENIZER_SCOPE): one p·p·C basis applied to each frame of a token.

A video token is a t_patch x p x p x C spacetime patch (``patchify.py``: D = t_patch·p·p·C, the frame index
slowest, so frame k of a token is the contiguous slice ``[k·D_f, (k+1)·D_f)`` with D_f = p·p·C). Two scopes:

* ``"spacetime"`` (the default): the tokenizer is fitted on whole t_patch·p·p·C patches (``tools/fit_pca.py`` on a
  video config), so one PCA basis of size D spans both space and time. This is the image recipe read literally for
  clips: the DiT's token is the spacetime patch, and the tokenizer sees exactly what a token is. Its leading
  components can use the redundancy between a token's frames (frame-averaged patterns first, frame differences
  later), so at a given d per token it keeps more of the signal than the per-frame basis.
* ``"frame"``: the tokenizer is fitted on single-frame patches (layout (1, p, C), ``tools/fit_pca.py`` with
  LDAE.TOKENIZER_SCOPE frame) and ``PerFrameTokenizer`` applies it to each of the t_patch frame slices, so
  d per token = t_patch x d_frame (LDAE.LATENT_DIM is still d per token and must be a multiple of t_patch), and the
  latent noise is independent per frame. The frame basis is an image basis: it could be fitted on images.

Which one gives the better encoder is an open question (nothing in the l-DAE paper is about video); spacetime is
the default because it is the literal transfer of the image recipe to spacetime tokens, and frame is the ablation.

Latent order: frame-major (frame 0's d_frame components, then frame 1's, ...). ``full_coefficients`` lists first
every frame's first d_frame coefficients, in that same order, then every frame's remaining ones: a permuted
block-diagonal basis, still orthonormal, whose first d coefficients are the kept ones (what l-DAE's PCA-weighted
loss and its "noise in the span of the first d components" need).
"""
import torch

from videodiff.models.tokenizers import PatchTokenizer

# LDAE.TOKENIZER_SCOPE values (config validation imports them from here).
TOKENIZER_SCOPES = ("spacetime", "frame")


def scope_layout(layout: tuple, scope: str) -> tuple:
    """The (t_patch, p, C) a tokenizer file is fitted on for a token ``layout`` and a scope: (1, p, C) per frame."""
    if scope not in TOKENIZER_SCOPES:
        raise ValueError(f"LDAE.TOKENIZER_SCOPE = {scope!r}: expected one of {', '.join(TOKENIZER_SCOPES)}")
    t_patch, p, channels = layout
    return (1, p, channels) if scope == "frame" else (t_patch, p, channels)


class PerFrameTokenizer(PatchTokenizer):
    """``inner`` (a linear patch-wise tokenizer of single-frame patches, D_f = p·p·C -> d_f) applied to each of the
    ``t_patch`` frames of a token: x [B, N, t_patch·D_f] -> z [B, N, t_patch·d_f] and back (module docstring).
    ``grid`` is accepted and ignored, as by every patch-wise tokenizer."""
    LINEAR = True

    def __init__(self, inner: PatchTokenizer, t_patch: int):
        super().__init__()
        if not inner.LINEAR:
            raise ValueError(f"{type(inner).__name__} is not a patch-wise linear tokenizer; the per-frame scope "
                             f"applies to pca, ae, vae and pixel (the conv VAE already works frame by frame)")
        if t_patch < 1:
            raise ValueError(f"t_patch must be >= 1, got {t_patch}")
        self.inner, self.t_patch = inner, int(t_patch)
        self.D, self.d = self.t_patch * inner.D, self.t_patch * inner.d

    def _frames(self, x: torch.Tensor, size: int) -> torch.Tensor:
        """[..., N, t_patch·size] -> [..., N·t_patch, size]: one row per frame slice."""
        return x.reshape(*x.shape[:-2], x.shape[-2] * self.t_patch, size)

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        """[..., N·t_patch, size] -> [..., N, t_patch·size]."""
        return x.reshape(*x.shape[:-2], x.shape[-2] // self.t_patch, self.t_patch * x.shape[-1])

    def encode(self, x: torch.Tensor, grid=None) -> torch.Tensor:
        """x [B, N, t_patch·D_f] -> z [B, N, t_patch·d_f], frame-major."""
        return self._tokens(self.inner.encode(self._frames(x, self.inner.D)))

    def decode(self, z: torch.Tensor, grid=None) -> torch.Tensor:
        """z [B, N, t_patch·d_f] -> x [B, N, t_patch·D_f]."""
        return self._tokens(self.inner.decode(self._frames(z, self.inner.d)))

    @property
    def full_coefficients(self):
        """x [B, N, D] -> [B, N, D] in the per-frame orthonormal basis (kept coefficients first, module docstring);
        absent (AttributeError) when the inner tokenizer has no full basis (patch AE / VAE)."""
        if not hasattr(self.inner, "full_coefficients"):
            raise AttributeError(f"{type(self.inner).__name__} has no full basis, so its per-frame wrapper neither")
        return self._full_coefficients

    def _full_coefficients(self, x: torch.Tensor) -> torch.Tensor:
        c = self.inner.full_coefficients(self._frames(x, self.inner.D))          # [..., N·t, D_f]
        c = c.reshape(*x.shape[:-1], self.t_patch, self.inner.D)                 # [..., N, t, D_f]
        kept, rest = c[..., :self.inner.d], c[..., self.inner.d:]
        return torch.cat([kept.flatten(-2), rest.flatten(-2)], dim=-1)

    def extra_repr(self) -> str:
        return f"t_patch={self.t_patch}, D={self.D}, d={self.d}"
