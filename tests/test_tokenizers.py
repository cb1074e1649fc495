"""The patch PCA tokenizer (models/tokenizers.py) and tools/fit_pca.py: fit, encode / decode, file and checks."""
import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from tests.cli_helpers import env_for_subprocess, make_tiny_demo
from videodiff.config import load_config
from videodiff.data.loader import build_loader
from videodiff.data.normalize import ClipNormalizer
from videodiff.models.patchify import patchify
from videodiff.models.tokenizers import PCAAccumulator, PCATokenizer, TokenizerFileError, save_pca

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "fit_pca.py")
IMAGES_CFG = "configs/demo/diffmae_tiny_images.yaml"
LAYOUT = (1, 4, 3)  # t_patch, p, C of the synthetic data: D = 48


def _tool():
    spec = importlib.util.spec_from_file_location("fit_pca", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def correlated_patches(num=4000, D=48, rank=6, seed=0) -> torch.Tensor:
    """[num, D] float64: x = g @ A^T + small noise + offset, A of rank 6 with well separated scales."""
    gen = torch.Generator().manual_seed(seed)
    directions = torch.linalg.qr(torch.randn(D, rank, generator=gen, dtype=torch.float64))[0]
    A = directions * torch.linspace(3, 0.5, rank, dtype=torch.float64)
    g = torch.randn(num, rank, generator=gen, dtype=torch.float64)
    noise = 0.05 * torch.randn(num, D, generator=gen, dtype=torch.float64)
    return g @ A.T + noise + torch.linspace(-1, 2, D, dtype=torch.float64)


def fit(x: torch.Tensor, chunk: int = 0):
    acc = PCAAccumulator(x.shape[1])
    for part in (x.split(chunk) if chunk else [x]):
        acc.update(part)
    return acc.finish()


@pytest.fixture(scope="module")
def synthetic():
    x = correlated_patches()
    return x, fit(x)


@pytest.fixture(scope="module")
def demo_patches(tmp_path_factory):
    """[M, 192] normalised 1x8x8x3 patches of the tiny demo images, from the train loader as training builds it."""
    root = make_tiny_demo(tmp_path_factory.mktemp("pca_demo"))
    cfg = load_config(IMAGES_CFG, ["DATA.PATH_TO_DATA_DIR", os.path.join(root, "images"), "TRAIN.BATCH_SIZE", "4",
                                   "DATA_LOADER.NUM_WORKERS", "0"])
    normalize = ClipNormalizer.from_cfg(cfg)  # the loader hands over uint8 (DATA_LOADER.UINT8_HANDOVER)
    clips = torch.cat([normalize(batch["clip"]) for batch in build_loader(cfg, "train", 0, 1)])
    return root, patchify(clips, 1, 8).reshape(-1, 192).double()


def check_fit(x, mean, basis, eigenvalues):
    D = x.shape[1]
    assert torch.allclose(basis @ basis.T, torch.eye(D, dtype=torch.float64), atol=1e-10)
    assert (eigenvalues[1:] <= eigenvalues[:-1]).all() and (eigenvalues >= 0).all()
    coeff = (x - mean) @ basis.T
    assert torch.allclose(coeff.mean(0), torch.zeros(D, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(coeff.pow(2).mean(0), eigenvalues, atol=1e-10 * eigenvalues[0].item())
    peak = basis.gather(1, basis.abs().argmax(1, keepdim=True))
    assert (peak > 0).all()  # the sign convention


def check_tokenizer(x, mean, basis, eigenvalues, step=1):
    """Module properties on fit data x [M, D] (float32 buffers, so float32 tolerances); d = 1, 1 + step, ..., D."""
    D, x32 = x.shape[1], x.float().unsqueeze(0)
    dims = sorted(set(range(1, D + 1, step)) | {D})
    tok = PCATokenizer(mean, basis, eigenvalues, d=D, whiten=True)
    assert torch.allclose(tok.basis @ tok.basis.T, torch.eye(D), atol=1e-5)
    for whiten in (True, False):
        full = PCATokenizer(mean, basis, eigenvalues, d=D, whiten=whiten)
        assert torch.allclose(full.decode(full.encode(x32)), x32, atol=1e-4)
        errors = []
        for d in dims:
            tok_d = PCATokenizer(mean, basis, eigenvalues, d, whiten)
            errors.append((tok_d.decode(tok_d.encode(x32)) - x32).pow(2).mean().item())
        assert all(b <= a + 1e-7 for a, b in zip(errors, errors[1:])), errors
        expected = [(eigenvalues[d:].sum() / D).item() for d in dims]
        assert errors == pytest.approx(expected, rel=1e-3, abs=1e-6)
    z = tok.encode(x32)
    real = eigenvalues > 1e-6 * eigenvalues[0]  # whitening is meaningful where the data vary
    assert torch.allclose(z.var(dim=1, unbiased=False)[0][real], torch.ones(int(real.sum())), atol=1e-3)


def test_fit_on_correlated_data_recovers_the_low_rank_structure(synthetic):
    x, (mean, basis, eigenvalues) = synthetic
    check_fit(x, mean, basis, eigenvalues)
    assert torch.allclose(mean, x.mean(0), atol=1e-12)
    scales = torch.linspace(3, 0.5, 6, dtype=torch.float64)
    assert eigenvalues[:6] == pytest.approx((scales ** 2 + 0.05 ** 2).tolist(), rel=0.1)  # A's scales, + noise
    assert eigenvalues[6:].max() < 0.05 ** 2 * 1.5


def test_tokenizer_on_correlated_data(synthetic):
    x, (mean, basis, eigenvalues) = synthetic
    check_tokenizer(x, mean, basis, eigenvalues)


def test_fit_and_tokenizer_on_real_demo_patches(demo_patches):
    _, x = demo_patches
    mean, basis, eigenvalues = fit(x)
    check_fit(x, mean, basis, eigenvalues)
    check_tokenizer(x, mean, basis, eigenvalues, step=5)


def test_latent_noise_decodes_into_the_span_of_the_first_d_components(synthetic):
    x, (mean, basis, eigenvalues) = synthetic
    x32 = x[:64].float().reshape(2, 32, -1)
    for whiten in (True, False):
        tok = PCATokenizer(mean, basis, eigenvalues, d=5, whiten=whiten)
        z = tok.encode(x32)
        assert z.shape == (2, 32, 5)
        delta = tok.decode(z + torch.randn_like(z)) - tok.decode(z)
        outside = delta @ tok.basis[5:].T
        assert outside.abs().max() < 1e-5 * delta.abs().max()
        inside = delta @ tok.basis[:5].T
        assert torch.allclose(inside.norm(dim=-1), delta.norm(dim=-1), rtol=1e-5)


def test_full_coefficients_is_an_isometry_and_extends_the_unwhitened_latents(synthetic):
    x, (mean, basis, eigenvalues) = synthetic
    tok = PCATokenizer(mean, basis, eigenvalues, d=7, whiten=False)
    r = torch.randn(3, 10, 48)
    coeff = tok.full_coefficients(r)
    assert coeff.shape == r.shape
    assert torch.allclose(coeff.norm(dim=-1), r.norm(dim=-1), rtol=1e-5)
    x32 = x[:30].float().reshape(3, 10, 48)
    assert torch.allclose(tok.full_coefficients(x32 - tok.mean)[..., :7], tok.encode(x32), atol=1e-5)


def test_streaming_in_chunks_equals_one_batch(synthetic):
    x, (mean, basis, eigenvalues) = synthetic
    for chunk in (1000, 333, 7):
        m, b, e = fit(x, chunk)
        assert torch.allclose(m, mean, atol=1e-10, rtol=0)
        assert torch.allclose(e, eigenvalues, atol=1e-10, rtol=0)
        assert torch.allclose(b, basis, atol=1e-10, rtol=0)
    acc = PCAAccumulator(48)
    acc.update(torch.zeros(0, 48))  # an empty batch changes nothing
    acc.update(x.float())  # float32 patches are accumulated in float64 too
    assert acc.count == len(x) and torch.allclose(acc.finish()[2], eigenvalues, atol=1e-6)


def test_accumulator_refuses_bad_input():
    acc = PCAAccumulator(4)
    with pytest.raises(ValueError, match=r"\[M, 4\]"):
        acc.update(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="NaN"):
        acc.update(torch.tensor([[0.0, float("nan"), 0.0, 0.0]]))
    with pytest.raises(ValueError, match="at least 2"):
        acc.finish()


def test_constant_components_whiten_to_finite_latents():
    x = torch.zeros(100, 48, dtype=torch.float64)
    x[:, :3] = torch.randn(100, 3, dtype=torch.float64)  # 45 values never vary
    tok = PCATokenizer(*fit(x), d=48, whiten=True)
    x32 = x.float().unsqueeze(0)
    z = tok.encode(x32)
    assert torch.isfinite(z).all() and torch.allclose(tok.decode(z), x32, atol=1e-5)


def test_buffers_are_saved_in_state_dicts_and_not_trained(synthetic):
    _, (mean, basis, eigenvalues) = synthetic
    tok = PCATokenizer(mean, basis, eigenvalues, d=8)
    assert list(tok.parameters()) == []
    assert set(tok.state_dict()) == {"mean", "basis", "eigenvalues"}
    assert all(v.dtype == torch.float32 for v in tok.state_dict().values())
    other = PCATokenizer(torch.zeros(48), torch.eye(48), torch.ones(48), d=8)
    other.load_state_dict(tok.state_dict())
    x = torch.randn(1, 4, 48)
    assert torch.equal(other.encode(x), tok.encode(x))
    assert (tok.D, tok.d, tok.whiten) == (48, 8, True)


def test_save_and_from_file_round_trip(tmp_path, synthetic):
    _, (mean, basis, eigenvalues) = synthetic
    path = str(tmp_path / "sub" / "pca.pth")
    save_pca(path, mean, basis, eigenvalues, LAYOUT, 4000, "test data")
    assert os.listdir(tmp_path / "sub") == ["pca.pth"]  # no temporary file left
    saved = torch.load(path, weights_only=True)
    assert saved["kind"] == "pca" and saved["layout"] == LAYOUT and saved["num_patches"] == 4000
    assert saved["basis"].dtype == torch.float64 and torch.equal(saved["basis"], basis)
    tok = PCATokenizer.from_file(path, d=16, whiten=False, expected_D=48, expected_layout=LAYOUT)
    assert (tok.D, tok.d, tok.whiten) == (48, 16, False)
    assert torch.equal(tok.basis, basis.float())


def refusal(path, **overrides) -> str:
    kwargs = dict(d=8, whiten=True, expected_D=48, expected_layout=LAYOUT)
    kwargs.update(overrides)
    with pytest.raises((TokenizerFileError, FileNotFoundError)) as info:
        PCATokenizer.from_file(path, **kwargs)
    message = str(info.value)
    assert repr(path) in message and "\n" not in message, message
    return message


def test_from_file_refuses_unusable_files_with_one_line_naming_the_path(tmp_path, synthetic):
    _, (mean, basis, eigenvalues) = synthetic
    good = str(tmp_path / "pca.pth")
    save_pca(good, mean, basis, eigenvalues, LAYOUT, 4000, "test data")

    missing = str(tmp_path / "nope.pth")
    assert "does not exist" in refusal(missing) and "tools/fit_pca.py" in refusal(missing)
    with pytest.raises(FileNotFoundError):
        PCATokenizer.from_file(missing, 8, True, 48, LAYOUT)

    message = refusal(good, expected_D=768, expected_layout=(1, 16, 3))
    assert "fitted on 1x4x4x3 patches (D = 48)" in message
    assert "the config's patches are 1x16x16x3 (D = 768): refit with tools/fit_pca.py" in message
    message = refusal(good, expected_layout=(3, 4, 1))  # same D, other layout
    assert "fitted on 1x4x4x3 patches (D = 48) but the config's patches are 3x4x4x1 (D = 48)" in message

    assert "must be in [1, 48], got 0" in refusal(good, d=0)
    assert "must be in [1, 48], got 49" in refusal(good, d=49)

    text = tmp_path / "notes.pth"
    text.write_text("not a tensor file")
    assert "is not a PCA tokenizer file" in refusal(str(text))
    checkpoint = str(tmp_path / "checkpoint.pyth")
    torch.save({"model": {"w": torch.zeros(2)}}, checkpoint)
    assert "kind None, expected 'pca'" in refusal(checkpoint)
    pickled = str(tmp_path / "object.pth")
    torch.save({"kind": "pca", "thing": object()}, pickled)  # weights_only refuses arbitrary objects
    assert "is not a PCA tokenizer file" in refusal(pickled)

    nan_mean = mean.clone()
    nan_mean[3] = float("nan")
    bad = str(tmp_path / "nan.pth")
    save_pca(bad, nan_mean, basis, eigenvalues, LAYOUT, 4000, "test data")
    assert "mean has non-finite" in refusal(bad)
    save_pca(bad, mean, basis * 2, eigenvalues, LAYOUT, 4000, "test data")
    assert "not orthonormal" in refusal(bad)
    save_pca(bad, mean, basis[:, :40], eigenvalues, LAYOUT, 4000, "test data")
    assert "basis is (48, 40), expected a tensor of shape (48, 48)" in refusal(bad)


def run_tool(args):
    proc = subprocess.run([sys.executable, TOOL, *args], cwd=ROOT, env=env_for_subprocess(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_fit_pca_end_to_end_is_deterministic_and_loads(demo_patches, tmp_path, capsys):
    root, _ = demo_patches
    opts = ["DATA.PATH_TO_DATA_DIR", os.path.join(root, "images"), "TRAIN.BATCH_SIZE", "4",
            "DATA_LOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(tmp_path / "run")]
    tool, first, second = _tool(), str(tmp_path / "first.pth"), str(tmp_path / "second.pth")
    out = run_tool(["--cfg", IMAGES_CFG, "--num-patches", "1000", "--out", first, *opts])  # the real command line
    # 12 train images of 64 patches: one pass gives 768, so the tool passes twice and says so.
    assert "one pass over the train split gives 768 patches, fewer than 1,000: passing over it again" in out
    assert "2 passes in all" in out
    assert "patches used: 1,000 (2 passes over the train split)" in out and "D = 192 (1x8x8x3 patches)" in out
    for d in (4, 8, 16, 32, 64, 128):
        assert f"\n{d:6d}  " in out
    tok = PCATokenizer.from_file(first, d=16, whiten=True, expected_D=192, expected_layout=(1, 8, 3))
    assert tok.D == 192

    # Twice in this process, once with the default output path (OUTPUT_DIR/pca.pth): bit for bit the same.
    assert tool.main(["--cfg", IMAGES_CFG, "--num-patches", "1000", *opts]) == 0
    assert "wrote " + str(tmp_path / "run" / "pca.pth") in capsys.readouterr().out
    assert tool.main(["--cfg", IMAGES_CFG, "--num-patches", "1000", "--out", second, *opts]) == 0
    a, b = (torch.load(path, weights_only=True) for path in (tmp_path / "run" / "pca.pth", second))
    for key in ("mean", "basis", "eigenvalues"):
        assert torch.equal(a[key], b[key]), key
    assert a["num_patches"] == 1000 and a["layout"] == (1, 8, 3) and IMAGES_CFG in a["source"]

    # The subprocess (one thread, so other float64 rounding) drew the same patches: the same mean and spectrum,
    # and the same directions wherever the data vary. Zero-variance directions (12 tinted digits leave some) are
    # any orthonormal completion of the others.
    c = torch.load(first, weights_only=True)
    assert torch.allclose(a["mean"], c["mean"], atol=1e-12)
    assert torch.allclose(a["eigenvalues"], c["eigenvalues"], atol=1e-12)
    varying = a["eigenvalues"] > 1e-6 * a["eigenvalues"][0]
    assert varying.sum() > 100 and torch.allclose(a["basis"][varying], c["basis"][varying], atol=1e-8)


def test_fit_pca_errors_are_one_line_with_exit_status_2(tmp_path, capsys):
    tool = _tool()
    assert tool.main(["--cfg", IMAGES_CFG, "DATA.PATH_TO_DATA_DIR", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and str(tmp_path / "none") in err
    assert tool.main(["--cfg", IMAGES_CFG, "VIT.NO_SUCH_KEY", "1"]) == 2
    assert "VIT.NO_SUCH_KEY" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        tool.parse_args(["--cfg", IMAGES_CFG, "--num-patches", "0"])
    assert info.value.code == 2
