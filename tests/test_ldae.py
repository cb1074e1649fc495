"""l-DAE: schedules, targets and the weighted loss by hand, the noise's subspace, the folded encoder, every config of
the trajectory, and a tiny l-DAE through the real entry point (fit the PCA, train, resume, probe)."""
import glob
import math
import os

import pytest
import torch

from cli_helpers import ROOT, TINY_OPTS, make_tiny_demo, read_stats, run_net

from videodiff.config import load_config
from videodiff.engine.dry_run import dry_run
from videodiff.models.build import build_model
from videodiff.models.ldae import LDAE
from videodiff.models.noise_levels import loss_weight, noise_schedule
from videodiff.models.patchify import patchify
from videodiff.models.tokenizers import PCAAccumulator, PCATokenizer
from videodiff.models.vit import VisionTransformer

LDAE_CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "ImageNet", "ldae", "*.yaml")))


def pca(d=8, D=192, whiten=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    acc = PCAAccumulator(D)
    mix = torch.randn(D, D, generator=g, dtype=torch.float64) / D ** 0.5
    acc.update(torch.randn(4096, D, generator=g, dtype=torch.float64) @ mix + 0.3)
    mean, basis, eigenvalues = acc.finish()
    return PCATokenizer(mean, basis, eigenvalues, d, whiten)


def tiny(tokenizer=None, **kw):
    args = dict(patch_size=8, t_patch=1, embed_dim=32, depth=4, num_heads=4, num_steps=100)
    args.update(kw)
    return LDAE(tokenizer or pca(), **args)


# ---------------------------------------------------------------------------------------------- noise levels
def test_every_schedule_at_its_first_and_last_step():
    ab = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    gamma, sigma = noise_schedule("ddpm")
    assert torch.allclose(gamma ** 2, ab) and torch.allclose(gamma ** 2 + sigma ** 2, torch.ones(1000, dtype=torch.float64))
    gamma, sigma = noise_schedule("linear_gamma2")
    assert gamma[0] ** 2 == pytest.approx(0.999) and gamma[-1] == 0 and sigma[-1] == 1  # 1 > gamma^2 >= 0
    assert torch.allclose(torch.diff(gamma ** 2), torch.full((999,), -1e-3, dtype=torch.float64))
    gamma, sigma = noise_schedule("linear_sigma")
    assert bool((gamma == 1).all()) and sigma[0] == 0 and sigma[-1] == pytest.approx(math.sqrt(2))
    gamma, sigma = noise_schedule("single")
    assert bool((gamma == 1).all()) and torch.allclose(sigma, torch.full_like(sigma, math.sqrt(1 / 3)))
    with pytest.raises(ValueError, match="unknown l-DAE noise schedule 'cosine'.*ddpm, linear_gamma2"):
        noise_schedule("cosine")


def test_loss_weights_are_the_papers_per_line():
    g, s = noise_schedule("linear_gamma2")
    assert bool((loss_weight("auto", "eps", g, s) == 1).all())                  # Eq. 2
    assert torch.equal(loss_weight("auto", "z0", g, s), g ** 2)                  # "lambda_t = gamma_t^2 works better"
    g, s = noise_schedule("linear_sigma")
    lam = loss_weight("auto", "image", g, s)
    assert lam[0] == 1 and lam[-1] == pytest.approx(1 / 3)                       # 1 / (1 + sigma^2), sigma_max = sqrt(2)
    assert loss_weight("auto", "z0", *noise_schedule("single"))[0] == pytest.approx(0.75)


# ---------------------------------------------------------------------------------------------- targets and loss
def test_the_weighted_loss_equals_a_hand_computation():
    tok = pca(d=8)
    model = tiny(tok, predict="image", input_space="image", output_space="image", residual_weight=0.1)
    x0, pred = torch.randn(2, 4, 192), torch.randn(2, 4, 192)
    t = torch.tensor([0, 99])
    lam = 1 / (1 + (math.sqrt(2) * t.double() / 99) ** 2)
    r = (x0 - pred).double() @ tok.basis.double().T                             # residue in the full PCA basis
    w = torch.tensor([1.0] * 8 + [0.1] * 184, dtype=torch.float64)
    expected = (lam * (w * r ** 2).mean(dim=(1, 2))).mean()
    got = model.forward_loss(pred, x0, tok.encode(x0), torch.zeros(2, 4, 8), t)
    assert float(got) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("predict, output_space", [("eps", "latent"), ("z0", "latent"), ("z0", "image")])
def test_plain_targets(predict, output_space):
    tok = pca(d=8)
    model = tiny(tok, predict=predict, input_space="latent", output_space=output_space, schedule="linear_gamma2")
    x0 = torch.randn(2, 4, 192)
    z0, eps, t = tok.encode(x0), torch.randn(2, 4, 8), torch.tensor([5, 50])
    target = eps if predict == "eps" else z0
    target = tok.decode(target) if output_space == "image" else target
    pred = torch.randn_like(target)
    lam = model.lam[t]
    expected = (lam * (pred - target).pow(2).mean(dim=(1, 2))).mean()
    assert float(model.forward_loss(pred, x0, z0, eps, t)) == pytest.approx(float(expected), rel=1e-6)


def test_the_image_space_input_is_noised_only_within_the_first_d_components():
    tok = pca(d=8)
    model = tiny(tok, input_space="image")
    x0 = torch.randn(2, 4, 192)
    z0 = tok.encode(x0)
    noisy = model.network_input(model.add_noise(z0, torch.tensor([90, 90]), torch.randn_like(z0)))
    delta = tok.full_coefficients(noisy - tok.decode(z0))                       # the noise, in the full basis
    assert delta[..., :8].abs().max() > 0.1 and delta[..., 8:].abs().max() < 1e-4


def test_impossible_combinations_are_refused_naming_the_keys():
    with pytest.raises(ValueError, match="LDAE.PREDICT eps needs LDAE.OUTPUT_SPACE latent"):
        tiny(predict="eps", output_space="image")
    with pytest.raises(ValueError, match="LDAE.PREDICT image .* needs LDAE.OUTPUT_SPACE image"):
        tiny(predict="image", output_space="latent")
    with pytest.raises(ValueError, match="192-value patches, but 1x16x16x3 patches have 768"):
        tiny(patch_size=16)


@pytest.mark.parametrize("input_space", ["latent", "image"])
def test_the_exported_encoder_is_a_plain_vit_that_computes_the_dit_encoder_at_t(input_space):
    tok = pca(d=8)
    model = tiny(tok, predict="z0", input_space=input_space, output_space="latent")
    for p in model.dit.parameters():                                            # no zero-init hides anything
        torch.nn.init.normal_(p, std=0.05)
    clip = torch.randn(2, 3, 1, 16, 16)
    vit = VisionTransformer(patch_size=8, t_patch=1, embed_dim=32, depth=2, num_heads=4, norm_eps=1e-6,
                            final_norm=False)
    vit.load_state_dict(model.export_encoder(10))                               # strict: nothing more, nothing less
    x0 = patchify(clip, 1, 8)
    tokens = tok.encode(x0) if input_space == "latent" else x0                  # clean input
    expected = model.dit.forward_encoder(tokens, torch.tensor([10, 10]), (1, 2, 2))
    torch.testing.assert_close(vit.forward_features(clip), expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(VisionTransformer(patch_size=8, t_patch=1, embed_dim=32, depth=2, num_heads=4,
                                                final_norm=False).forward_features(clip), expected)
    with pytest.raises(ValueError, match="LDAE.PROBE_T = 100 is not a step"):
        model.export_encoder(100)


def test_training_lowers_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    model = tiny(pca(d=8))
    clip = torch.randn(4, 3, 1, 16, 16)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        torch.manual_seed(1)                                                    # fixed t and noise
        loss = model(clip)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]
    assert not any(p.requires_grad for p in model.tokenizer.parameters())


# ---------------------------------------------------------------------------------------------- configs
SMALL = ["VIT.EMBED_DIM", "32", "VIT.NUM_HEADS", "4", "VIT.DEPTH", "4", "LDAE.ENCODER_DEPTH", "2",
         "DATA.TRAIN_CROP_SIZE", "64", "DATA.TEST_CROP_SIZE", "64"]


@pytest.mark.parametrize("path", LDAE_CONFIGS, ids=os.path.basename)
def test_every_trajectory_config_loads_and_dry_runs(path):
    """At full size the model is built (its arguments are right); the dry run's forward + backward runs at a small
    width and depth with every other key of the config (the full-size dry runs: BENCHMARKS.md)."""
    cfg = load_config(path, ["TRAIN.DRY_RUN", "True"])
    if cfg.MODEL.MODEL_NAME != "LDAE":
        assert cfg.LDAE.PROBE_T == 10 and cfg.VIT.NORM_EPS == 1e-6  # downstream: folded at t = 10, DiT's eps
        result = dry_run(load_config(path, ["TRAIN.DRY_RUN", "True", *SMALL, "VIT.DEPTH", "2"]))
        assert math.isfinite(result["loss"]) and result["gflops_per_clip"] > 0
        return
    with torch.device("meta"):                                                  # full size, no memory, no init cost
        model = build_model(cfg)
    assert model.dit.encoder_depth == cfg.VIT.DEPTH // 2 and len(model.dit.blocks) == cfg.VIT.DEPTH
    assert model.tokenizer.d == cfg.LDAE.LATENT_DIM
    result = dry_run(load_config(path, ["TRAIN.DRY_RUN", "True", *SMALL]))
    assert result["model"] == "LDAE" and math.isfinite(result["loss"]) and result["gflops_per_clip"] > 0


def test_the_trajectory_reads_in_order_and_each_line_changes_one_thing():
    names = [os.path.basename(p) for p in LDAE_CONFIGS if "_ft" not in p and "probe" not in p]
    assert names[:2] == ["t0_dit_l.yaml", "t1_1_dit_class_cond.yaml"] and names[-2:] == ["t5_ldae_vitb.yaml",
                                                                                          "t5_ldae_vitl.yaml"]
    table2 = [n for n in names if n.startswith("t2_")]                         # each tokenizer's rows, d ascending
    assert table2 == sorted(table2, key=lambda n: (n.split("_")[1], n)) and len(table2) == 19
    tokenizers = {n: load_config(os.path.join(ROOT, "configs", "ImageNet", "ldae", n)).LDAE for n in table2}
    assert [l.LATENT_DIM for n, l in tokenizers.items() if "pixel" in n] == [12, 48, 192, 768]
    assert all(n[3:].startswith(l.TOKENIZER + "_") for n, l in tokenizers.items())
    table1 = [load_config(os.path.join(ROOT, "configs", "ImageNet", "ldae", n)) for n in names if n.startswith("t1_")]
    changed = [sorted(f"{node}.{k}" for node in ("LDAE", "CONV_VAE") for k in a[node] if a[node][k] != b[node][k])
               for a, b in zip(table1, table1[1:])]
    assert changed == [["LDAE.CLASS_COND"],
                       ["CONV_VAE.PERCEPTUAL_CHECKPOINT", "CONV_VAE.PERCEPTUAL_WEIGHT", "LDAE.TOKENIZER_FILE"],
                       ["CONV_VAE.ADVERSARIAL_START", "CONV_VAE.ADVERSARIAL_WEIGHT", "LDAE.TOKENIZER_FILE"],
                       ["LDAE.SCHEDULE"]]
    steps = [load_config(os.path.join(ROOT, "configs", "ImageNet", "ldae", n)).LDAE for n in
             ("t2_pca_d032.yaml", "t3_1_predict_z0.yaml", "t3_2_gamma_one.yaml", "t3_3_image_input.yaml",
              "t3_4_image_output.yaml", "t3_5_predict_image.yaml", "t3_6_single_sigma.yaml")]
    changed = [sorted(k for k in a if a[k] != b[k]) for a, b in zip(steps, steps[1:])]
    assert changed == [["PREDICT"], ["SCHEDULE"], ["INPUT_SPACE"], ["OUTPUT_SPACE"], ["PREDICT"], ["SCHEDULE"]]


# ---------------------------------------------------------------------------------------------- the real entry point
def test_a_tiny_ldae_fits_its_pca_trains_resumes_and_is_probed(tmp_path):
    import subprocess
    import sys

    data = make_tiny_demo(tmp_path)
    images = os.path.join(data, "images")
    pca_file, out = str(tmp_path / "pca.pth"), str(tmp_path / "ldae")
    small = [*TINY_OPTS, "VIT.DEPTH", "2", "DATA.PATH_TO_DATA_DIR", images, "LDAE.TOKENIZER_FILE", pca_file,
             "OUTPUT_DIR", out]
    fit = subprocess.run([sys.executable, "tools/fit_pca.py", "--cfg", "configs/demo/ldae_tiny_images.yaml",
                          "--num-patches", "2000", *small], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert fit.returncode == 0, fit.stderr[-2000:]
    run_net("configs/demo/ldae_tiny_images.yaml", [*small, "SOLVER.MAX_EPOCH", "1"])
    run_net("configs/demo/ldae_tiny_images.yaml", [*small, "SOLVER.MAX_EPOCH", "2"])   # resumes after epoch 1
    log = open(os.path.join(out, "log.txt")).read()
    assert "resumed from" in log and "checkpoint_epoch_00001.pyth" in log
    steps = [s for s in read_stats(out) if s.get("split") == "train"]
    assert {s["epoch"] for s in steps} == {1, 2} and all(math.isfinite(s["loss"]) for s in steps)
    probe = str(tmp_path / "probe")
    run_net("configs/demo/ldae_tiny_linprobe.yaml", [
        *TINY_OPTS, "VIT.DEPTH", "1", "DATA.PATH_TO_DATA_DIR", images, "OUTPUT_DIR", probe, "SOLVER.MAX_EPOCH", "1",
        "TRAIN.BATCH_SIZE", "4", "TRAIN.EVAL_PERIOD", "1", "TEST.ENABLE", "True",
        "TRAIN.CHECKPOINT_FILE_PATH", os.path.join(out, "checkpoints", "checkpoint_epoch_00002.pyth")])
    log = open(os.path.join(probe, "log.txt")).read()
    assert "folded at t = 10 into a plain ViT" in log and "the first 1 of 2 DiT blocks" in log
    assert [s for s in read_stats(probe) if s.get("split") == "test_final"]
