"""The patch AE / VAE and pixel tokenizers (models/tokenizers.py), their files, their l-DAE models, and
tools/fit_tokenizer.py: the fit against PCA and against the linear-VAE optimum, the KL by hand, the latent scale."""
import importlib.util
import math
import os
import subprocess
import sys

import pytest
import torch

from tests.cli_helpers import env_for_subprocess, make_tiny_demo
from tests.test_tokenizers import correlated_patches
from videodiff.config import load_config
from videodiff.config.validate import ConfigError
from videodiff.models.build import build_model
from videodiff.models.ldae import LDAE, affine_map
from videodiff.models.patchify import patchify
from videodiff.models.tokenizers import (LinearPatchAE, PatchAETokenizer, PatchVAETokenizer, PCAAccumulator,
                                         PCATokenizer, PixelTokenizer, TokenizerFileError, gaussian_kl,
                                         save_patch_ae, save_pca)
from videodiff.models.vit import VisionTransformer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "fit_tokenizer.py")
LDAE_CFG = "configs/demo/ldae_tiny_images.yaml"
LAYOUT = (1, 4, 3)  # the synthetic data's (t_patch, p, C): D = 48
SCALES = torch.linspace(3, 0.5, 6, dtype=torch.float64)  # correlated_patches' six directions


def _tool():
    spec = importlib.util.spec_from_file_location("fit_tokenizer", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TOOL_MODULE = _tool()


def pca_fit(x: torch.Tensor):
    acc = PCAAccumulator(x.shape[1])
    acc.update(x)
    return acc.finish()


def fit_linear(x, d, kl_weight=None, steps=1500, lr=1e-2, batch=512, seed=0) -> LinearPatchAE:
    """A LinearPatchAE (a VAE when kl_weight is given) fitted on x [M, D] by the tool's own training loop."""
    mean = x.mean(0)
    generator = torch.Generator().manual_seed(seed)
    model = LinearPatchAE(mean.float(), d, variational=kl_weight is not None, kl_weight=kl_weight or 0.0,
                          generator=generator)
    TOOL_MODULE.train(model, x.float(), steps, batch, lr, generator, steps_per_log=10 ** 9)
    return model


def recon_mse(tok, x) -> float:
    x32 = x.float()[None]
    return (tok.decode(tok.encode(x32)) - x32).pow(2).mean().item()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Thousands of tiny Adam steps: one thread is ten times faster than two on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def synthetic():
    x = correlated_patches()
    return x, pca_fit(x)


@pytest.fixture(scope="module")
def fitted(synthetic):
    """AE at d = 3 and 6, VAEs at d = 6 with KL weights 1 and 3, fitted once for the module."""
    x, _ = synthetic
    return {"ae3": fit_linear(x, 3), "ae6": fit_linear(x, 6),
            "vae1": fit_linear(x, 6, kl_weight=1.0, steps=3000), "vae3": fit_linear(x, 6, kl_weight=3.0, steps=3000)}


# ---------------------------------------------------------------------------------------------- the AE against PCA
@pytest.mark.parametrize("d", [3, 6])
def test_a_fitted_linear_ae_reaches_pca_error_and_spans_pcas_subspace(synthetic, fitted, d):
    x, (mean, basis, eigenvalues) = synthetic
    tok = fitted[f"ae{d}"].tokenizer(x.float())
    pca = eigenvalues[d:].sum().item() / x.shape[1]                              # PCA's error at d: its optimum
    assert recon_mse(PCATokenizer(mean, basis, eigenvalues, d), x) == pytest.approx(pca, rel=1e-3)
    got = recon_mse(tok, x)
    assert pca * (1 - 1e-3) <= got <= pca * 1.05, (got, pca)                    # an AE can at best match PCA
    assert TOOL_MODULE.span_overlap(tok.decoder, basis[:d]) > 0.995
    assert TOOL_MODULE.span_overlap(tok.decoder, basis[d:2 * d]) < 0.01          # not just any subspace


def test_the_latent_scale_gives_unit_variance_on_the_fit_data(synthetic, fitted):
    x, _ = synthetic
    for name, model in fitted.items():
        tok = model.tokenizer(x.float())
        z = tok.encode(x.float()[None])[0]
        assert torch.allclose(z.pow(2).mean(0), torch.ones(tok.d), atol=1e-3), name   # unit RMS per component
        assert torch.allclose(z.mean(0), torch.zeros(tok.d), atol=1e-3), name         # centred: RMS = std
        assert torch.allclose(tok.scale.double(), model.latent_rms(x.float()).float().double(), rtol=1e-5), name
        assert type(tok) is (PatchVAETokenizer if name.startswith("vae") else PatchAETokenizer)
        x32 = x[:20].float()[None]                                              # the scale cancels in the round trip
        plain = (x32 - model.mean) @ model.encoder.T @ model.decoder + model.mean
        torch.testing.assert_close(tok.decode(tok.encode(x32)), plain, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------- the VAE
def test_gaussian_kl_by_hand():
    mu = torch.tensor([[1.0, 0.0], [0.5, -2.0]], dtype=torch.float64)
    logvar = torch.tensor([0.0, math.log(4.0)], dtype=torch.float64)
    # 1/2 sum_i (mu_i^2 + var_i - 1 - log var_i)
    row0 = 0.5 * ((1 + 1 - 1 - 0) + (0 + 4 - 1 - math.log(4)))
    row1 = 0.5 * ((0.25 + 1 - 1 - 0) + (4 + 4 - 1 - math.log(4)))
    assert gaussian_kl(mu, logvar).tolist() == pytest.approx([row0, row1], rel=1e-12)
    normal = torch.distributions.Normal
    reference = torch.distributions.kl_divergence(normal(mu, (logvar / 2).exp()), normal(0.0, 1.0)).sum(-1)
    assert torch.allclose(gaussian_kl(mu, logvar), reference)
    assert gaussian_kl(torch.zeros(3, 5), torch.zeros(5)).abs().max() == 0    # q = prior: no KL


def test_the_vae_loss_equals_a_hand_computation_and_its_closed_form_expectation_a_sampled_one():
    g = torch.Generator().manual_seed(0)
    model = LinearPatchAE(torch.randn(5, generator=g), d=2, variational=True, kl_weight=0.7, generator=g)
    with torch.no_grad():
        model.logvar.copy_(torch.tensor([-1.0, 0.5]))
    x = torch.randn(3, 5, generator=g)
    V, U, logvar = (p.detach().double() for p in (model.encoder, model.decoder, model.logvar))
    xc = x.double() - model.mean.double()
    mu = xc @ V.T
    recon = (xc - mu @ U).pow(2).sum(1).mean()
    spread = (logvar.exp() * U.pow(2).sum(1)).sum()
    kl = (0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)).mean()
    out = model.losses(x)
    out = {k: v.detach() for k, v in out.items()}
    assert float(out["recon"]) == pytest.approx(float(recon), rel=1e-5)
    assert float(out["spread"]) == pytest.approx(float(spread), rel=1e-5)
    assert float(out["kl"]) == pytest.approx(float(kl), rel=1e-5)
    assert float(out["loss"]) == pytest.approx(float(recon + spread + 0.7 * kl), rel=1e-5)
    # E_q ||x~ - U^T z||^2 with z ~ q(z|x) = N(mu, diag exp(logvar)), by sampling
    z = mu[:, None] + (logvar / 2).exp() * torch.randn(3, 200_000, 2, generator=g, dtype=torch.float64)
    sampled = (xc[:, None] - z @ U).pow(2).sum(-1).mean()
    assert float(sampled) == pytest.approx(float(recon + spread), rel=5e-3)
    ae = LinearPatchAE(torch.zeros(5), d=2, generator=g)
    assert set(ae.losses(x)) == {"loss", "recon"} and ae.logvar is None and ae.kind == "ae"


def test_the_vae_reaches_the_linear_vae_optimum_and_a_larger_kl_weight_costs_reconstruction(synthetic, fitted):
    """A linear VAE with KL weight w is probabilistic PCA with noise variance s^2 = w / 2: directions of variance
    lambda > s^2 are kept, shrunk, leaving s^4 / lambda each; the others collapse to the prior (leaving lambda)."""
    x, (_, _, eigenvalues) = synthetic
    D = x.shape[1]
    errors, kls = [], []
    for w, active in ((1.0, 5), (3.0, 4)):                                     # SCALES^2 = 9, 6.25, 4, 2.25, 1, .25
        model = fitted[f"vae{int(w)}"]
        s2 = w / 2
        lam = eigenvalues[:6]
        expected = (torch.where(lam > s2, s2 ** 2 / lam, lam).sum() + eigenvalues[6:].sum()).item() / D
        tok = model.tokenizer(x.float())
        result = TOOL_MODULE.evaluate(model, tok, x.float())
        assert result["recon_mse"] == pytest.approx(expected, rel=0.03), w
        assert result["active"] == active, w
        assert TOOL_MODULE.vae_optimum(eigenvalues, 6, w) == (pytest.approx(expected, rel=1e-9), active)
        # the aggregate posterior has unit second moment per dimension, collapsed or not: E[mu^2] + sigma^2 = 1
        mu = (x.float() - model.mean) @ model.encoder.T
        moment = mu.pow(2).mean(0) + model.logvar.exp()
        assert torch.allclose(moment.detach(), torch.ones(6), atol=0.05), (w, moment)
        errors.append(result["recon_mse"])
        kls.append(result["kl"])
    ae_error = recon_mse(fitted["ae6"].tokenizer(x.float()), x)
    assert ae_error < errors[0] < errors[1] and kls[0] > kls[1]


# ---------------------------------------------------------------------------------------------- pixel
def test_the_pixel_tokenizer_is_the_identity_on_patches():
    tok = PixelTokenizer(48)
    x = torch.randn(2, 16, 48)
    assert (tok.D, tok.d) == (48, 48) and tok.encode(x).shape == (2, 16, 48)
    assert torch.equal(tok.decode(tok.encode(x)), x) and torch.equal(tok.full_coefficients(x), x)
    assert list(tok.parameters()) == [] and tok.state_dict() == {}
    a, c = affine_map(tok)
    assert torch.equal(a, torch.eye(48)) and torch.equal(c, torch.zeros(48))
    clip = torch.randn(2, 3, 1, 16, 16)                                          # 64 / 4 = 16: Fig. 4's 64/4 line
    assert tok.encode(patchify(clip, 1, 4)).shape == (2, 16, 48)
    with pytest.raises(ValueError, match=">= 1"):
        PixelTokenizer(0)


# ---------------------------------------------------------------------------------------------- files
@pytest.fixture(scope="module")
def saved(tmp_path_factory, synthetic, fitted):
    x, (mean, basis, eigenvalues) = synthetic
    folder = tmp_path_factory.mktemp("tokenizer_files")
    ae_file, vae_file, pca_file = (str(folder / name) for name in ("ae.pth", "vae.pth", "pca.pth"))
    ae, vae = fitted["ae6"].tokenizer(x.float()), fitted["vae1"].tokenizer(x.float())
    save_patch_ae(ae_file, ae, LAYOUT, {"recon_mse": 0.1}, len(x), "test data")
    save_patch_ae(vae_file, vae, LAYOUT, {"recon_mse": 0.2, "kl": 3.0}, len(x), "test data",
                  logvar=fitted["vae1"].logvar, kl_weight=1.0)
    save_pca(pca_file, mean, basis, eigenvalues, LAYOUT, len(x), "test data")
    return folder, ae_file, vae_file, pca_file, ae, vae


def test_save_and_from_file_round_trip(saved):
    folder, ae_file, vae_file, _, ae, vae = saved
    assert not [n for n in os.listdir(folder) if n.startswith(".")]             # no temporary file left
    data = torch.load(ae_file, weights_only=True)
    assert data["kind"] == "ae" and data["layout"] == LAYOUT and data["d"] == 6 and "logvar" not in data
    assert data["encoder"].dtype == torch.float64 and data["losses"] == {"recon_mse": 0.1}
    data = torch.load(vae_file, weights_only=True)
    assert data["kind"] == "vae" and data["kl_weight"] == 1.0 and data["logvar"].shape == (6,)
    for cls, path, tok in ((PatchAETokenizer, ae_file, ae), (PatchVAETokenizer, vae_file, vae)):
        loaded = cls.from_file(path, d=6, expected_D=48, expected_layout=LAYOUT)
        assert type(loaded) is cls and (loaded.D, loaded.d) == (48, 6)
        assert list(loaded.parameters()) == [] and set(loaded.state_dict()) == {"mean", "encoder", "decoder", "scale"}
        x = torch.randn(2, 3, 48)
        torch.testing.assert_close(loaded.encode(x), tok.encode(x))
    with pytest.raises(ValueError, match="needs logvar and kl_weight"):
        save_patch_ae(str(folder / "x.pth"), vae, LAYOUT, {}, 1, "")


def ae_refusal(path, cls=PatchAETokenizer, **overrides) -> str:
    kwargs = dict(d=6, expected_D=48, expected_layout=LAYOUT)
    kwargs.update(overrides)
    with pytest.raises((TokenizerFileError, FileNotFoundError)) as info:
        cls.from_file(path, **kwargs)
    message = str(info.value)
    assert repr(path) in message and "\n" not in message, message
    return message


def test_from_file_refuses_unusable_files_with_one_line_naming_the_path(saved, tmp_path):
    _, ae_file, vae_file, pca_file, ae, _ = saved
    missing = str(tmp_path / "nope.pth")
    assert "does not exist: fit it for 1x4x4x3 patches (D = 48) with tools/fit_tokenizer.py --cfg <config> --kind " \
           "ae" in ae_refusal(missing)
    assert "--kind vae" in ae_refusal(missing, cls=PatchVAETokenizer)
    with pytest.raises(FileNotFoundError):
        PatchAETokenizer.from_file(missing, 6, 48, LAYOUT)

    assert "is not a patch AE tokenizer file (kind 'pca', expected 'ae')" in ae_refusal(pca_file)
    assert "is not a patch AE tokenizer file (kind 'vae', expected 'ae')" in ae_refusal(vae_file)
    assert "is not a patch VAE tokenizer file (kind 'ae', expected 'vae'): refit with tools/fit_tokenizer.py " \
           "--cfg <config> --kind vae" in ae_refusal(ae_file, cls=PatchVAETokenizer)
    with pytest.raises(TokenizerFileError, match="is not a PCA tokenizer file \\(kind 'ae', expected 'pca'\\)"):
        PCATokenizer.from_file(ae_file, 6, True, 48, LAYOUT)

    message = ae_refusal(ae_file, expected_D=768, expected_layout=(1, 16, 3))
    assert "fitted on 1x4x4x3 patches (D = 48) but the config's patches are 1x16x16x3 (D = 768)" in message
    message = ae_refusal(ae_file, d=8)                                          # the file fixes d: both named
    assert "holds a d = 6 patch AE, but the config asks for d = 8 (LDAE.LATENT_DIM): set LDAE.LATENT_DIM 6, or " \
           "fit a d = 8 one with tools/fit_tokenizer.py --cfg <config> --kind ae LDAE.LATENT_DIM 8" in message

    text = tmp_path / "notes.pth"
    text.write_text("not a tensor file")
    assert "is not a patch AE tokenizer file (torch.load:" in ae_refusal(str(text))
    data = torch.load(ae_file, weights_only=True)
    bad = str(tmp_path / "bad.pth")
    for key, value, what in (("encoder", data["encoder"][:, :40], "encoder is (6, 40), expected a tensor of shape "
                                                                    "(6, 48)"),
                             ("scale", -data["scale"], "scale has values <= 0"),
                             ("d", 49, "d 49 is not an integer in [1, 48]"),
                             ("layout", (1, 4), "layout (1, 4) is not (t_patch, p, C)")):
        damaged = dict(data, **{key: value})
        torch.save(damaged, bad)
        message = ae_refusal(bad)
        assert f"is a damaged patch AE file ({what}" in message and "refit with tools/fit_tokenizer.py" in message
    nan = data["decoder"].clone()
    nan[0, 0] = float("nan")
    torch.save(dict(data, decoder=nan), bad)
    assert "decoder has non-finite" in ae_refusal(bad)
    vae_data = torch.load(vae_file, weights_only=True)
    torch.save({k: v for k, v in vae_data.items() if k != "logvar"}, bad)
    assert "logvar is NoneType" in ae_refusal(bad, cls=PatchVAETokenizer)


# ---------------------------------------------------------------------------------------------- l-DAE with each kind
def tokenizer_of(kind: str, d: int = 8, D: int = 192):
    g = torch.Generator().manual_seed(1)
    if kind == "pixel":
        return PixelTokenizer(D)
    if kind == "pca":
        acc = PCAAccumulator(D)
        acc.update(torch.randn(1024, D, generator=g, dtype=torch.float64) @ torch.randn(D, D, generator=g,
                                                                                          dtype=torch.float64))
        return PCATokenizer(*acc.finish(), d)
    cls = PatchAETokenizer if kind == "ae" else PatchVAETokenizer
    return cls(torch.randn(D, generator=g), torch.randn(d, D, generator=g), torch.randn(d, D, generator=g),
               torch.rand(d, generator=g) + 0.5)


CHOICES = {"pca": ("image", "image", "image"), "ae": ("eps", "latent", "latent"), "vae": ("z0", "latent", "image"),
           "pixel": ("image", "latent", "image")}


@pytest.mark.parametrize("kind", ["pca", "ae", "vae", "pixel"])
def test_a_tiny_ldae_with_each_tokenizer_trains_and_folds_exactly(kind):
    torch.manual_seed(0)
    tok = tokenizer_of(kind)
    predict, input_space, output_space = CHOICES[kind]
    model = LDAE(tok, patch_size=8, embed_dim=32, depth=4, num_heads=4, num_steps=100, predict=predict,
                 input_space=input_space, output_space=output_space, schedule="linear_gamma2")
    assert not any(p.requires_grad for p in model.tokenizer.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    clip = torch.randn(2, 3, 1, 16, 16)
    for _ in range(3):
        loss = model(clip)["loss"]
        assert math.isfinite(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    for p in model.dit.parameters():                                            # no zero-init hides anything
        torch.nn.init.normal_(p, std=0.05)
    vit = VisionTransformer(patch_size=8, t_patch=1, embed_dim=32, depth=2, num_heads=4, norm_eps=1e-6,
                            final_norm=False)
    vit.load_state_dict(model.export_encoder(10))
    x0 = patchify(clip, 1, 8)
    tokens = tok.encode(x0) if input_space == "latent" else x0
    expected = model.dit.forward_encoder(tokens, torch.tensor([10, 10]), (1, 2, 2))
    torch.testing.assert_close(vit.forward_features(clip), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", ["ae", "vae"])
def test_predicting_the_image_needs_a_full_basis(kind):
    with pytest.raises(ValueError, match=f"which {'PatchAETokenizer' if kind == 'ae' else 'PatchVAETokenizer'} does "
                                         f"not have \\(use the PCA or pixel tokenizer\\)"):
        LDAE(tokenizer_of(kind), patch_size=8, embed_dim=32, depth=2, num_heads=4, predict="image")


# ---------------------------------------------------------------------------------------------- the builder
def ldae_cfg(*extra):
    return load_config(LDAE_CFG, ["VIT.EMBED_DIM", "32", "VIT.NUM_HEADS", "4", "VIT.DEPTH", "2",
                                  "LDAE.ENCODER_DEPTH", "1", *map(str, extra)])


def test_the_builder_dispatches_on_ldae_tokenizer(tmp_path, capsys):
    tok = tokenizer_of("ae", d=16)
    path = str(tmp_path / "ae.pth")
    save_patch_ae(path, tok, (1, 8, 3), {}, 10, "test")
    model = build_model(ldae_cfg("LDAE.TOKENIZER", "ae", "LDAE.TOKENIZER_FILE", path, "LDAE.LATENT_DIM", "16",
                                 "LDAE.PREDICT", "eps", "LDAE.INPUT_SPACE", "latent", "LDAE.OUTPUT_SPACE", "latent"))
    assert type(model.tokenizer) is PatchAETokenizer and torch.equal(model.tokenizer.encoder, tok.encoder)
    with pytest.raises(TokenizerFileError, match="holds a d = 16 patch AE, but the config asks for d = 8"):
        build_model(ldae_cfg("LDAE.TOKENIZER", "ae", "LDAE.TOKENIZER_FILE", path, "LDAE.LATENT_DIM", "8",
                             "LDAE.PREDICT", "eps", "LDAE.INPUT_SPACE", "latent", "LDAE.OUTPUT_SPACE", "latent"))
    with pytest.raises(FileNotFoundError, match="LDAE.TOKENIZER_FILE is empty: fit the tokenizer first with python "
                                                "tools/fit_tokenizer.py --cfg <this config> --kind vae"):
        build_model(ldae_cfg("LDAE.TOKENIZER", "vae", "LDAE.TOKENIZER_FILE", "''", "LDAE.PREDICT", "z0"))
    # pixel: no file read (LDAE.TOKENIZER_FILE names none that exists), d = D required
    model = build_model(ldae_cfg("LDAE.TOKENIZER", "pixel", "LDAE.LATENT_DIM", "192"))
    assert type(model.tokenizer) is PixelTokenizer and model.tokenizer.d == 192
    with pytest.raises(ConfigError, match="LDAE.LATENT_DIM.*= 16, but LDAE.TOKENIZER pixel keeps every value.*set "
                                          "it to 192"):
        ldae_cfg("LDAE.TOKENIZER", "pixel", "LDAE.LATENT_DIM", "16")
    # a dry run without the file: an identity stand-in of the configured kind
    for kind in ("ae", "vae"):
        model = build_model(ldae_cfg("LDAE.TOKENIZER", kind, "LDAE.TOKENIZER_FILE", str(tmp_path / "none.pth"),
                                     "LDAE.PREDICT", "eps", "LDAE.INPUT_SPACE", "latent", "LDAE.OUTPUT_SPACE",
                                     "latent", "TRAIN.DRY_RUN", "True"))
        assert model.tokenizer.KIND == kind and model.tokenizer.d == 16
        assert f"using an identity-basis {kind} stand-in" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- the tool
def test_fit_tokenizer_end_to_end_is_deterministic_and_the_builder_loads_it(tmp_path, capsys):
    root = make_tiny_demo(tmp_path)
    opts = ["DATA.PATH_TO_DATA_DIR", os.path.join(root, "images"), "TRAIN.BATCH_SIZE", "4",
            "DATA_LOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(tmp_path / "run"), "LDAE.LATENT_DIM", "8"]
    fast = ["--steps", "150", "--num-patches", "1000", "--batch-patches", "256"]
    first = str(tmp_path / "first.pth")
    proc = subprocess.run([sys.executable, TOOL, "--cfg", LDAE_CFG, "--kind", "vae", *fast, "--out", first, *opts],
                          cwd=ROOT, env=env_for_subprocess(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "patches used: 1,000 (2 passes over the train split)" in out and "d = 8, kind vae, KL weight 1" in out
    assert "  vae  d = 8: " in out and "  pca  d = 8: " in out and "nats per patch" in out and "wrote " + first in out
    assert "at the linear VAE's optimum for KL weight 1: " in out
    data = torch.load(first, weights_only=True)
    assert data["kind"] == "vae" and data["layout"] == (1, 8, 3) and data["num_patches"] == 1000
    assert data["losses"]["recon_mse"] >= data["losses"]["pca_recon_mse"] * (1 - 1e-4)
    assert "--kind vae --steps 150" in data["source"]

    # In this process, twice, the AE: the default path (the config's tokenizer is pca: OUTPUT_DIR/ae_d008.pth) and
    # --out, bit for bit the same; the builder loads it.
    tool = _tool()
    assert tool.main(["--cfg", LDAE_CFG, "--kind", "ae", *fast, *opts]) == 0
    printed = capsys.readouterr().out
    default = str(tmp_path / "run" / "ae_d008.pth")
    assert "wrote " + default in printed and "ae / pca: " in printed and "decoder span in PCA's top-8" in printed
    second = str(tmp_path / "second.pth")
    assert tool.main(["--cfg", LDAE_CFG, "--kind", "ae", *fast, "--out", second, *opts]) == 0
    a, b = (torch.load(p, weights_only=True) for p in (default, second))
    for key in ("mean", "encoder", "decoder", "scale"):
        assert torch.equal(a[key], b[key]), key
    model = build_model(ldae_cfg("LDAE.TOKENIZER", "ae", "LDAE.TOKENIZER_FILE", second, "LDAE.LATENT_DIM", "8",
                                 "LDAE.PREDICT", "eps", "LDAE.INPUT_SPACE", "latent", "LDAE.OUTPUT_SPACE", "latent"))
    assert type(model.tokenizer) is PatchAETokenizer
    torch.testing.assert_close(model.tokenizer.decoder, a["decoder"].float())


def test_fit_tokenizer_errors_are_one_line_with_exit_status_2(tmp_path, capsys):
    tool = _tool()
    assert tool.main(["--cfg", LDAE_CFG, "--kind", "ae", "DATA.PATH_TO_DATA_DIR", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and str(tmp_path / "none") in err
    assert tool.main(["--cfg", LDAE_CFG, "--kind", "ae", "LDAE.LATENT_DIM", "193"]) == 2   # the LDAE config rule
    assert "LDAE.LATENT_DIM (from command line) = 193 must lie in 1 .. 192" in capsys.readouterr().err
    assert tool.main(["--cfg", "configs/demo/diffmae_tiny_images.yaml", "--kind", "ae", "LDAE.LATENT_DIM", "193"]) == 2
    assert "LDAE.LATENT_DIM = 193 must lie in 1 .. 192" in capsys.readouterr().err        # the tool's, any model
    for argv in (["--kind", "ae", "--kl-weight", "1"], ["--kind", "pca"], ["--kind", "ae", "--steps", "0"]):
        with pytest.raises(SystemExit) as info:
            tool.parse_args(["--cfg", LDAE_CFG, *argv])
        assert info.value.code == 2
    assert tool.parse_args(["--cfg", LDAE_CFG, "--kind", "vae"]).kl_weight == 1.0
