"""tools/extend_clip.py: 16x224^2 -> 32x280^2 for ViT-L/14-style patches; /16 patches are refused with valid sizes."""
import importlib.util
import os

import pytest
import torch

from videodiff.config import load_config
from videodiff.engine import checkpoint as ckpt
from videodiff.models.classifier import VitClassifier
from videodiff.models.pretrained import resize_pos_embed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY14 = dict(patch_size=14, t_patch=2, embed_dim=16, depth=1, num_heads=2, pos_embed_type="learned", cls_token=True)


def _tool():
    spec = importlib.util.spec_from_file_location("extend_clip", os.path.join(ROOT, "tools", "extend_clip.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_16x224_checkpoint_extends_to_32x280_loads_strictly_and_runs(tmp_path, capsys):
    model = VitClassifier(num_classes=3, pos_grid=(8, 16, 16), **TINY14)
    src = ckpt.save_checkpoint(str(tmp_path), 50, model, cfg_yaml=load_config(None, []).dump())
    out = str(tmp_path / "extended.pyth")
    assert _tool().main(["--num-frames", "32", "--crop", "280", src, out]) == 0
    assert "resized encoder.learned_pos_embed (8, 16, 16) -> (16, 20, 20)" in capsys.readouterr().out
    saved = ckpt.load_state(out)
    assert "DATA.NUM_FRAMES" not in saved["cfg"] and "NUM_FRAMES: 32" in saved["cfg"]
    big = VitClassifier(num_classes=3, pos_grid=(16, 20, 20), **TINY14).eval()
    ckpt.load_model_state(big, saved["model"], out)  # strict
    for key, value in model.state_dict().items():
        if key != "encoder.learned_pos_embed":
            assert torch.equal(big.state_dict()[key], value), key
    with torch.no_grad():
        assert big(torch.randn(1, 3, 32, 280, 280))["logits"].shape == (1, 3)


def test_280_with_16px_patches_is_an_error_listing_valid_sizes(tmp_path, capsys):
    model = VitClassifier(num_classes=3, patch_size=16, t_patch=2, embed_dim=16, depth=1, num_heads=2)
    src = ckpt.save_checkpoint(str(tmp_path), 1, model)
    assert _tool().main(["--num-frames", "32", "--crop", "280", src, str(tmp_path / "x.pyth")]) == 2
    err = capsys.readouterr().err
    assert "crop 280 is not divisible by the checkpoint's 16-wide patches" in err
    assert "256, 272, 288, 304" in err and "14-px patches" in err
    assert not (tmp_path / "x.pyth").exists()


def test_sincos_checkpoints_keep_every_tensor():
    tool = _tool()
    state = VitClassifier(num_classes=3, patch_size=14, t_patch=2, embed_dim=16, depth=1, num_heads=2).state_dict()
    out, report = tool.extend_state_dict(state, 32, 280)
    assert all(out[k] is v for k, v in state.items()) and "regenerated" in report[-1]
    with pytest.raises(ValueError, match="frame count 33"):
        tool.extend_state_dict(state, 33, 280)


def test_position_resize_is_exact_on_linear_ramps():
    # Bicubic / linear interpolation with align_corners=False reproduces a ramp's interior; same grid is a no-op.
    t, h = torch.arange(4.0), torch.arange(6.0)
    table = (t[:, None, None] * 10 + h[None, :, None] + h[None, None, :] * 0)[None, ..., None].expand(1, 4, 6, 6, 2)
    assert resize_pos_embed(table, (4, 6, 6)) is table
    bigger = resize_pos_embed(table, (8, 12, 12))
    assert bigger.shape == (1, 8, 12, 12, 2)
    # Half-step samples: time index j maps to (j + 0.5) / 2 - 0.5 in the source, clamped at the ends.
    expected_t = ((torch.arange(8.0) + 0.5) / 2 - 0.5).clamp(0, 3) * 10
    assert torch.allclose(bigger[0, :, 6, 6, 0] - bigger[0, 0, 6, 6, 0], expected_t - expected_t[0], atol=1e-4)


def test_extension_recipe_config_is_valid():
    cfg = load_config(os.path.join(ROOT, "configs/K400/diffmae_vitl14_ft_32x280.yaml"), [])
    assert (cfg.DATA.NUM_FRAMES, cfg.DATA.TRAIN_CROP_SIZE, cfg.VIT.PATCH_SIZE) == (32, 280, 14)
    assert cfg.SOLVER.MAX_EPOCH == 30 and cfg.AUG.NUM_SAMPLE == 1
    with pytest.raises(Exception, match="280 is not divisible by VIT.PATCH_SIZE = 16"):
        load_config(os.path.join(ROOT, "configs/K400/diffmae_vitl14_ft_32x280.yaml"), ["VIT.PATCH_SIZE", "16"])


@pytest.mark.parametrize("flag, value", [("--num-frames", "0"), ("--crop", "0"), ("--crop", "-224")])
def test_non_positive_sizes_are_refused_before_anything_is_written(flag, value, tmp_path, capsys):
    out = tmp_path / "x.pyth"
    args = {"--num-frames": "32", "--crop": "280", flag: value}
    with pytest.raises(SystemExit) as info:
        _tool().main([*[a for pair in args.items() for a in pair], str(tmp_path / "src.pyth"), str(out)])
    assert info.value.code == 2 and not out.exists()
    assert f"argument {flag}: must be an integer >= 1" in capsys.readouterr().err
