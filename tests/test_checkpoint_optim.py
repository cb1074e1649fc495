"""Checkpoint files (atomic, newest-complete, safe loading, strict fit) and the lr schedule."""
import os

import pytest
import torch

from videodiff.config import load_config
from videodiff.engine import checkpoint as ckpt
from videodiff.engine.optim import build_optimizer, lr_at, scaled_lr
from videodiff.models.classifier import VitClassifier

TINY = dict(patch_size=8, t_patch=2, embed_dim=32, depth=2, num_heads=4)


def test_save_then_resume_restores_model_and_optimizer(tmp_path):
    cfg = load_config(None, [])
    model = VitClassifier(num_classes=3, **TINY)
    opt = build_optimizer(model, cfg)
    model(torch.randn(2, 3, 2, 16, 16), torch.tensor([0, 1]))["loss"].backward()
    opt.step()
    path = ckpt.save_checkpoint(str(tmp_path), 3, model, opt, cfg_yaml=cfg.dump())
    assert path.endswith("checkpoints/checkpoint_epoch_00003.pyth")
    assert not [n for n in os.listdir(os.path.dirname(path)) if ".tmp" in n]

    fresh = VitClassifier(num_classes=3, **TINY)
    fresh_opt = build_optimizer(fresh, cfg)
    state = ckpt.resume(path, fresh, fresh_opt)
    assert state["epoch"] == 3 and "SOLVER" in state["cfg"]
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    assert fresh_opt.state_dict()["state"].keys() == opt.state_dict()["state"].keys()


def test_latest_checkpoint_ignores_temporary_files(tmp_path):
    model = VitClassifier(num_classes=3, **TINY)
    ckpt.save_checkpoint(str(tmp_path), 1, model)
    ckpt.save_checkpoint(str(tmp_path), 2, model)
    # A write killed half-way leaves only a temporary name behind.
    with open(os.path.join(ckpt.checkpoint_dir(str(tmp_path)), "checkpoint_epoch_00003.pyth.tmp.123"), "wb") as f:
        f.write(b"partial")
    assert ckpt.find_latest_checkpoint(str(tmp_path)).endswith("checkpoint_epoch_00002.pyth")
    assert ckpt.find_latest_checkpoint(str(tmp_path / "elsewhere")) is None


def test_checkpoint_from_another_model_names_file_and_keys(tmp_path):
    path = ckpt.save_checkpoint(str(tmp_path), 1, VitClassifier(num_classes=3, **TINY))
    other = VitClassifier(num_classes=5, **TINY)
    with pytest.raises(ckpt.CheckpointError, match=r"checkpoint_epoch_00001\.pyth does not fit.*head\.fc\.weight"):
        ckpt.resume(path, other)


def test_unreadable_and_pickled_checkpoints_are_refused(tmp_path):
    bad = tmp_path / "bad.pyth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ckpt.CheckpointError, match="cannot read checkpoint .*bad.pyth"):
        ckpt.load_state(str(bad))
    evil = tmp_path / "evil.pyth"
    torch.save({"model": {}, "payload": os.getcwd}, str(evil))  # a function: needs full unpickling
    with pytest.raises(ckpt.CheckpointError, match="evil.pyth"):
        ckpt.load_state(str(evil))
    assert ckpt.load_state(str(evil), weights_only=False)["payload"] is os.getcwd
    with pytest.raises(ckpt.CheckpointError, match="not found"):
        ckpt.load_state(str(tmp_path / "missing.pyth"))


def test_lr_schedule_linear_scaling_warmup_and_cosine():
    cfg = load_config(None, ["SOLVER.BASE_LR", "1e-3", "TRAIN.BATCH_SIZE", "512", "SOLVER.WARMUP_EPOCHS", "2",
                             "SOLVER.MAX_EPOCH", "10", "SOLVER.COSINE_END_LR", "1e-6"])
    peak = scaled_lr(cfg)
    assert peak == pytest.approx(2e-3)  # 1e-3 x 512 / 256
    assert lr_at(0.0, cfg) == 0.0
    assert lr_at(1.0, cfg) == pytest.approx(peak / 2)
    assert lr_at(2.0, cfg) == pytest.approx(peak)
    assert lr_at(6.0, cfg) == pytest.approx(1e-6 + (peak - 1e-6) / 2)
    assert lr_at(10.0, cfg) == pytest.approx(1e-6)
    values = [lr_at(e / 10, cfg) for e in range(20, 100)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_no_weight_decay_on_biases_and_norms():
    cfg = load_config(None, ["SOLVER.WEIGHT_DECAY", "0.05"])
    model = VitClassifier(num_classes=3, **TINY)
    opt = build_optimizer(model, cfg)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in decayed) == (p.ndim > 1), name


def test_rng_state_survives_a_weights_only_checkpoint_round_trip(tmp_path):
    import random

    import numpy as np

    from videodiff.engine.seed import rng_state, set_rng_state

    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    saved = rng_state()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.save(saved, tmp_path / "rng.pt")
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1])
    assert expected[2] == again[2]


def _mae_lars_reference(params, grads_per_step, lr, momentum=0.9, trust=0.001):
    """MAE's LARS update rule written out by hand, weight decay 0 (its linear-probing setting)."""
    params = [p.detach().clone() for p in params]
    mu = [torch.zeros_like(p) for p in params]
    for grads in grads_per_step:
        for i, (p, g) in enumerate(zip(params, grads)):
            if p.ndim > 1:  # weight matrix: trust-ratio adaptation
                g = g * (trust * p.norm() / g.norm())
            mu[i] = momentum * mu[i] + g  # bias: plain momentum SGD
            params[i] = p - lr * mu[i]
    return params


def test_lars_two_steps_match_mae_update_rule():
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3).double()
    # lr = BASE_LR x 512 / 256 = 2.0 (a trust ratio of 1e-3 keeps the weight step small; the bias step is large)
    cfg = load_config(None, ["SOLVER.OPTIMIZING_METHOD", "lars", "SOLVER.BASE_LR", "1.0", "TRAIN.BATCH_SIZE", "512",
                             "SOLVER.MOMENTUM", "0.9", "SOLVER.WEIGHT_DECAY", "0.0"])
    opt = build_optimizer(model, cfg)
    start = [p.detach().clone() for p in model.parameters()]
    x, y = torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 3, (8,))
    grads = []
    for _ in range(2):  # the second step exercises the momentum buffer
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        grads.append([p.grad.detach().clone() for p in model.parameters()])
        opt.step()

    expected = _mae_lars_reference(start, grads, lr=2.0)
    for got, want, before in zip(model.parameters(), expected, start):
        assert torch.allclose(got.detach(), want, rtol=1e-12, atol=1e-15)
        assert not torch.equal(got.detach(), before)
    # The trust ratio bounds the weight's travel by lr x 1e-3 x ||w|| x (1 + 1.9) over the two steps.
    assert (model.weight.detach() - start[0]).norm() / start[0].norm() < 2.0 * 1e-3 * 2.9 * 1.01


def test_lars_is_selected_from_config_and_adapts_only_matrices():
    from timm.optim import Lars

    cfg = load_config(None, ["SOLVER.OPTIMIZING_METHOD", "lars", "SOLVER.WEIGHT_DECAY", "0.05",
                             "SOLVER.LARS_TRUST_COEFF", "0.002"])
    model = VitClassifier(num_classes=3, **TINY)
    opt = build_optimizer(model, cfg)
    assert isinstance(opt, Lars)
    seen = 0
    for group in opt.param_groups:
        assert group["trust_coeff"] == 0.002 and group["momentum"] == 0.9
        assert group["nesterov"] is False and group["dampening"] == 0 and group["eps"] == 0
        for p in group["params"]:
            seen += 1
            # MAE's rule: adaptation and weight decay for ndim > 1 only (pos_embed included), plain SGD otherwise.
            assert group["always_adapt"] == (p.ndim > 1)
            assert group["weight_decay"] == (0.05 if p.ndim > 1 else 0.0)
    assert seen == sum(1 for p in model.parameters() if p.requires_grad)


def test_linprobe_config_uses_mae_lars_recipe():
    cfg = load_config("configs/ImageNet/diffmae_vitb_linprobe.yaml")
    assert cfg.SOLVER.OPTIMIZING_METHOD == "lars" and cfg.SOLVER.LARS_TRUST_COEFF == 0.001
    assert scaled_lr(cfg) == pytest.approx(6.4)  # MAE: blr 0.1 x 16384 / 256
    assert scaled_lr(cfg) * cfg.SOLVER.LARS_TRUST_COEFF == pytest.approx(6.4e-3)  # l-DAE's "6.4 x 10^-3"
