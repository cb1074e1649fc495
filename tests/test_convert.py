"""Importing public checkpoints: features of the converted weights match the source model's to 1e-5.

Image MAE is checked against timm's VisionTransformer (the same key layout). For MAE-ST and VideoMAE the
tests build a state dict in their key layout and compute their forward pass from it with plain tensor ops
(separate q/k/v and separable positions; fused qkv with q/v biases and the fixed sinusoid table).
"""
import math
import subprocess
import sys

import pytest
import timm
import torch
import torch.nn.functional as F

from videodiff.config import load_config
from videodiff.models.build import build_model
from videodiff.models.classifier import VitClassifier
from videodiff.models.convert import convert_state_dict, strip_prefix
from videodiff.models.pretrained import load_pretrained
from videodiff.models.vit import VisionTransformer

D, DEPTH, HEADS, CLASSES = 32, 2, 4, 5
TOL = 1e-5


def _vit_from(report, final_norm=True):
    s = report.settings
    grid = (s["DATA.NUM_FRAMES"] // s["VIT.TEMPORAL_PATCH_SIZE"], s["DATA.TRAIN_CROP_SIZE"] // s["VIT.PATCH_SIZE"],
            s["DATA.TRAIN_CROP_SIZE"] // s["VIT.PATCH_SIZE"])
    return dict(patch_size=s["VIT.PATCH_SIZE"], t_patch=s["VIT.TEMPORAL_PATCH_SIZE"], embed_dim=s["VIT.EMBED_DIM"],
                depth=s["VIT.DEPTH"], num_heads=s["VIT.NUM_HEADS"], pos_embed_type="learned", pos_grid=grid,
                cls_token=s["VIT.CLS_TOKEN"], norm_eps=s["VIT.NORM_EPS"])


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """Every parameter random (norm scales near 1), so a wrongly mapped tensor cannot go unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = 0.1 * torch.randn(p.shape, generator=g)
            p.copy_(1 + noise if "norm" in name and name.endswith("weight") else noise)


def _encoder_only(state):
    return {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}


# ---------------------------------------------------------------------------------------------- image MAE
def _timm_vit(**kw):
    return timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=D, depth=DEPTH, num_heads=HEADS, class_token=True, **kw).eval()


def test_image_mae_pretrained_features_match_timm():
    ref = _timm_vit(num_classes=0, global_pool="token")
    _randomize(ref, 0)
    state = dict(ref.state_dict(), mask_token=torch.zeros(1, 1, 16), **{"decoder_embed.weight": torch.zeros(16, D),
                 "decoder_blocks.0.attn.qkv.weight": torch.zeros(48, 16), "decoder_pred.weight": torch.zeros(192, 16)})
    out, report = convert_state_dict(state, "mae", num_heads=HEADS)
    assert report.settings["VIT.CLS_TOKEN"] and report.settings["DATA.TRAIN_CROP_SIZE"] == 32
    assert sorted(d.split(" ")[0] for d in report.dropped) == ["decoder_blocks.0.attn.qkv.weight",
                                                               "decoder_embed.weight", "decoder_pred.weight",
                                                               "mask_token"]
    ours = VisionTransformer(**_vit_from(report)).eval()
    ours.load_state_dict(_encoder_only(out))  # strict: every key of our ViT comes from the checkpoint
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        diff = (ours.forward_features(x[:, :, None]) - ref.forward_features(x)).abs().max().item()
    assert diff < TOL, diff


def test_image_mae_finetuned_logits_match_timm_and_load_through_the_config():
    ref = _timm_vit(num_classes=CLASSES, global_pool="avg")  # MAE's fine-tuning: avg pool -> fc_norm -> head
    _randomize(ref, 1)
    out, report = convert_state_dict(ref.state_dict(), "mae", num_heads=HEADS)
    assert {"head.fc_norm.weight", "head.fc.weight"} <= set(out) and report.settings["MODEL.NUM_CLASSES"] == CLASSES
    opts = [str(x) for kv in report.settings.items() for x in kv] + ["MODEL.MODEL_NAME", "VitClassifier"]
    model = build_model(load_config(None, opts)).eval()
    load_report = load_pretrained(model, {"model": out}, "converted.pyth")
    assert not load_report.missing and not load_report.unexpected and not load_report.dropped
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        diff = (model(x[:, :, None])["logits"] - ref(x)).abs().max().item()
    assert diff < TOL, diff


# ---------------------------------------------------------------------------------------------- reference math
def _layer_norm(x, sd, key):
    return F.layer_norm(x, x.shape[-1:], sd[f"{key}.weight"], sd[f"{key}.bias"], eps=1e-6)


def _attention(x, q, k, v):
    """Multi-head softmax attention given projected q, k, v [B, N, D] (head dim = D / HEADS)."""
    b, n, d = x.shape
    q, k, v = (t.reshape(b, n, HEADS, d // HEADS).transpose(1, 2) for t in (q, k, v))
    attn = (q @ k.transpose(-2, -1) * (d // HEADS) ** -0.5).softmax(-1)
    return (attn @ v).transpose(1, 2).reshape(b, n, d)


def _block(x, sd, i, qkv_fn):
    p = f"blocks.{i}"
    h = _layer_norm(x, sd, f"{p}.norm1")
    x = x + F.linear(_attention(h, *qkv_fn(h, sd, p)), sd[f"{p}.attn.proj.weight"], sd[f"{p}.attn.proj.bias"])
    h = F.gelu(F.linear(_layer_norm(x, sd, f"{p}.norm2"), sd[f"{p}.mlp.fc1.weight"], sd[f"{p}.mlp.fc1.bias"]))
    return x + F.linear(h, sd[f"{p}.mlp.fc2.weight"], sd[f"{p}.mlp.fc2.bias"])


def _random_blocks(g, qkv_keys):
    sd = {}
    for i in range(DEPTH):
        p = f"blocks.{i}"
        for name, shape in [("norm1.weight", (D,)), ("norm1.bias", (D,)), ("attn.proj.weight", (D, D)),
                            ("attn.proj.bias", (D,)), ("norm2.weight", (D,)), ("norm2.bias", (D,)),
                            ("mlp.fc1.weight", (4 * D, D)), ("mlp.fc1.bias", (4 * D,)),
                            ("mlp.fc2.weight", (D, 4 * D)), ("mlp.fc2.bias", (D,))] + qkv_keys:
            noise = 0.1 * torch.randn(shape, generator=g)
            sd[f"{p}.{name}"] = 1 + noise if "norm" in name and name.endswith("weight") else noise
    return sd


def _random_stem(g, t_patch, patch):
    return {"patch_embed.proj.weight": 0.1 * torch.randn(D, 3, t_patch, patch, patch, generator=g),
            "patch_embed.proj.bias": 0.1 * torch.randn(D, generator=g)}


# ---------------------------------------------------------------------------------------------- MAE-ST
def _mae_st_state(finetuned, seed=2):
    """MAE-ST layout: separate q/k/v, separable positions + class position, class token (T'=2, 2x2 grid)."""
    g = torch.Generator().manual_seed(seed)
    qkv = [(f"attn.{p}.{kind}", (D, D) if kind == "weight" else (D,)) for p in "qkv" for kind in ("weight", "bias")]
    sd = {**_random_stem(g, 2, 8), **_random_blocks(g, qkv),
          "cls_token": 0.1 * torch.randn(1, 1, D, generator=g),
          "pos_embed_class": 0.1 * torch.randn(1, 1, D, generator=g),
          "pos_embed_spatial": 0.1 * torch.randn(1, 4, D, generator=g),
          "pos_embed_temporal": 0.1 * torch.randn(1, 2, D, generator=g),
          "norm.weight": 1 + 0.1 * torch.randn(D, generator=g), "norm.bias": 0.1 * torch.randn(D, generator=g)}
    if finetuned:
        sd.update({"head.weight": 0.1 * torch.randn(CLASSES, D, generator=g), "head.bias": torch.zeros(CLASSES)})
    else:
        sd.update({"mask_token": torch.zeros(1, 1, 16), "decoder_embed.weight": torch.zeros(16, D),
                   "decoder_pos_embed_spatial": torch.zeros(1, 4, 16)})
    return sd


def _mae_st_qkv(h, sd, p):
    return [F.linear(h, sd[f"{p}.attn.{n}.weight"], sd[f"{p}.attn.{n}.bias"]) for n in "qkv"]


def _mae_st_forward(sd, clip, finetuned):
    x = F.conv3d(clip, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=(2, 8, 8))
    b, d, t, h, w = x.shape
    x = torch.einsum("ncts->ntsc", x.flatten(3)).reshape(b, t * h * w, d)       # MAE-ST's token order
    pos = sd["pos_embed_spatial"].repeat(1, t, 1) + torch.repeat_interleave(sd["pos_embed_temporal"], h * w, dim=1)
    x = torch.cat([sd["cls_token"].expand(b, -1, -1), x], 1) + torch.cat([sd["pos_embed_class"], pos], 1)
    for i in range(DEPTH):
        x = _block(x, sd, i, _mae_st_qkv)
    if finetuned:  # pool the patch tokens, then norm, then head
        return F.linear(_layer_norm(x[:, 1:].mean(1), sd, "norm"), sd["head.weight"], sd["head.bias"])
    return _layer_norm(x, sd, "norm")


def test_mae_st_pretrained_and_finetuned_match_their_math():
    clip = torch.randn(2, 3, 4, 16, 16)
    for finetuned in (False, True):
        sd = _mae_st_state(finetuned)
        out, report = convert_state_dict(sd, "mae_st", num_heads=HEADS)
        assert any(m.startswith("blocks.0.attn.q.weight + blocks.0.attn.k.weight") for m in report.mapped)
        if finetuned:
            model = VitClassifier(num_classes=CLASSES, **_vit_from(report)).eval()
            model.load_state_dict(out)
            got = model(clip)["logits"]
        else:
            assert {d.split(" ")[0] for d in report.dropped} == {"mask_token", "decoder_embed.weight",
                                                                 "decoder_pos_embed_spatial"}
            model = VisionTransformer(**_vit_from(report)).eval()
            model.load_state_dict(_encoder_only(out))
            got = model.forward_features(clip)
        with torch.no_grad():
            diff = (got - _mae_st_forward(sd, clip, finetuned)).abs().max().item()
        assert diff < TOL, (finetuned, diff)


# ---------------------------------------------------------------------------------------------- VideoMAE
def _videomae_table(n, d):
    """VideoMAE's sinusoid table, written out per entry."""
    table = torch.zeros(n, d, dtype=torch.float64)
    for pos in range(n):
        for j in range(d):
            angle = pos / 10000 ** (2 * (j // 2) / d)
            table[pos, j] = math.sin(angle) if j % 2 == 0 else math.cos(angle)
    return table.float()[None]


def _videomae_qkv(h, sd, p):
    bias = torch.cat([sd[f"{p}.attn.q_bias"], torch.zeros(D), sd[f"{p}.attn.v_bias"]])
    return F.linear(h, sd[f"{p}.attn.qkv.weight"], bias).chunk(3, dim=-1)


def _videomae_forward(sd, clip, finetuned):
    x = F.conv3d(clip, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=(2, 8, 8))
    x = x.flatten(2).transpose(1, 2)
    x = x + _videomae_table(x.shape[1], D)
    for i in range(DEPTH):
        x = _block(x, sd, i, _videomae_qkv)
    if finetuned:
        return F.linear(_layer_norm(x.mean(1), sd, "fc_norm"), sd["head.weight"], sd["head.bias"])
    return _layer_norm(x, sd, "norm")


def test_videomae_pretrained_and_finetuned_match_their_math():
    g = torch.Generator().manual_seed(3)
    qkv = [("attn.qkv.weight", (3 * D, D)), ("attn.q_bias", (D,)), ("attn.v_bias", (D,))]
    clip = torch.randn(2, 3, 4, 16, 16)
    base = {**_random_stem(g, 2, 8), **_random_blocks(g, qkv)}
    pretrain = {"encoder." + k: v for k, v in base.items()}
    pretrain.update({"encoder.norm.weight": 1 + 0.1 * torch.randn(D, generator=g), "encoder.norm.bias": torch.zeros(D),
                     "encoder_to_decoder.weight": torch.zeros(16, D), "mask_token": torch.zeros(1, 1, 16),
                     "decoder.blocks.0.attn.qkv.weight": torch.zeros(48, 16)})
    finetune = dict(base, **{"fc_norm.weight": 1 + 0.1 * torch.randn(D, generator=g), "fc_norm.bias": torch.zeros(D),
                             "head.weight": 0.1 * torch.randn(CLASSES, D, generator=g),
                             "head.bias": torch.zeros(CLASSES)})
    for sd, finetuned in ((pretrain, False), (finetune, True)):
        out, report = convert_state_dict(sd, "videomae", num_frames=4, img_size=16, num_heads=HEADS)
        assert report.settings["VIT.QKV_BIAS"] and not report.settings["VIT.CLS_TOKEN"]
        if finetuned:
            model = VitClassifier(num_classes=CLASSES, **_vit_from(report)).eval()
            model.load_state_dict(out)
            got = model(clip)["logits"]
        else:
            assert {d.split(" ")[0] for d in report.dropped} == {"encoder_to_decoder.weight", "mask_token",
                                                                 "decoder.blocks.0.attn.qkv.weight"}
            model = VisionTransformer(**_vit_from(report)).eval()
            model.load_state_dict(_encoder_only(out))
            got = model.forward_features(clip)
        with torch.no_grad():
            diff = (got - _videomae_forward(strip_prefix(sd, "encoder."), clip, finetuned)).abs().max().item()
        assert diff < TOL, (finetuned, diff)


# ---------------------------------------------------------------------------------------------- the tool
def test_convert_tool_writes_a_checkpoint_and_reports_every_key(tmp_path):
    src, dst = tmp_path / "mae_st.pth", tmp_path / "converted.pyth"
    torch.save({"model": _mae_st_state(finetuned=False)}, str(src))
    proc = subprocess.run([sys.executable, "tools/convert_checkpoint.py", "--format", "mae_st", "--num-heads",
                           str(HEADS), str(src), str(dst)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "blocks.1.attn.v.bias -> encoder.blocks.1.attn.qkv.bias" in proc.stdout.replace(
        "blocks.1.attn.q.bias + blocks.1.attn.k.bias + ", "")
    assert "mask_token (pretraining decoder)" in proc.stdout and "VIT.POS_EMBED learned" in proc.stdout
    saved = torch.load(str(dst), weights_only=True)
    assert "encoder.learned_pos_embed" in saved["model"] and saved["conversion"]["format"] == "mae_st"


def test_unknown_format_and_layer_scale_are_refused():
    with pytest.raises(ValueError, match="unknown format 'beit'"):
        convert_state_dict({}, "beit")
    sd = _mae_st_state(finetuned=False)
    sd["blocks.0.gamma_1"] = torch.ones(D)
    with pytest.raises(ValueError, match="layer scale"):
        convert_state_dict(sd, "mae_st", num_heads=HEADS)


# ---------------------------------------------------------------------------------------------- safe loading
def _tool():
    """tools/convert_checkpoint.py as a module, to call its ``main`` in this process."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("convert_checkpoint_tool", "tools/convert_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _mae_training_checkpoint(state):
    """What facebookresearch/mae's misc.save_model writes: the model, optimizer and scaler states, the epoch,
    and the argparse arguments (an ``argparse.Namespace``, the one non-tensor type these files hold)."""
    import argparse
    args = argparse.Namespace(batch_size=64, epochs=800, accum_iter=1, model="mae_vit_base_patch16", input_size=224,
                              mask_ratio=0.75, norm_pix_loss=True, weight_decay=0.05, lr=None, blr=1.5e-4,
                              min_lr=0.0, warmup_epochs=40, data_path="/datasets01/imagenet_full_size/061417/",
                              output_dir="./output_dir", device="cuda", seed=0, resume="", start_epoch=0,
                              num_workers=10, pin_mem=True, world_size=64, local_rank=-1, dist_on_itp=False,
                              dist_url="env://", distributed=True, rank=0, gpu=0, dist_backend="nccl")
    optimizer = {"state": {0: {"step": torch.tensor(10.0), "exp_avg": torch.zeros(3)}},
                 "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.95), "weight_decay": 0.05, "params": [0]}]}
    return {"model": state, "optimizer": optimizer, "epoch": 799, "scaler": {"scale": 65536.0, "_growth_tracker": 7},
            "args": args}


def test_an_mae_checkpoint_with_its_training_args_converts_with_the_safe_load(tmp_path, capsys):
    ref = _timm_vit(num_classes=0, global_pool="token")
    _randomize(ref, 4)
    src, dst = tmp_path / "checkpoint-799.pth", tmp_path / "mae.pyth"
    torch.save(_mae_training_checkpoint(ref.state_dict()), str(src))
    assert _tool().main(["--format", "mae", "--num-heads", str(HEADS), str(src), str(dst)]) == 0, \
        capsys.readouterr().err
    expected, _ = convert_state_dict(ref.state_dict(), "mae", num_heads=HEADS)
    saved = torch.load(str(dst), weights_only=True)["model"]
    assert saved.keys() == expected.keys() and all(torch.equal(saved[k], expected[k]) for k in expected)


class _Payload:
    """Unpickling this runs a shell command: what a crafted checkpoint does on a full (weights_only=False) load."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return os.system, (f"touch {self.marker}",)


def test_a_malicious_pickle_is_refused_without_running_and_names_the_opt_in_flag(tmp_path):
    marker, src, dst = tmp_path / "pwned", tmp_path / "mae_pretrain_vit_base.pth", tmp_path / "out.pyth"
    torch.save({"model": _timm_vit(num_classes=0).state_dict(), "args": _Payload(marker)}, str(src))
    proc = subprocess.run([sys.executable, "tools/convert_checkpoint.py", "--format", "mae", str(src), str(dst)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and not marker.exists() and not dst.exists()
    message = proc.stderr.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in message, proc.stderr
    assert str(src) in message and "posix.system" in message and "--unsafe-load" in message
    help_text = subprocess.run([sys.executable, "tools/convert_checkpoint.py", "--help"], capture_output=True,
                               text=True, timeout=120).stdout
    assert "--unsafe-load" in help_text and "only for files you trust" in " ".join(help_text.split())


def test_other_python_objects_need_the_explicit_unsafe_load(tmp_path, capsys):
    import pathlib
    src, dst = tmp_path / "trusted.pth", tmp_path / "out.pyth"
    torch.save({"model": _timm_vit(num_classes=0).state_dict(), "output_dir": pathlib.PurePosixPath("/ckpt")},
               str(src))
    tool = _tool()
    assert tool.main(["--format", "mae", "--num-heads", str(HEADS), str(src), str(dst)]) == 2
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1 and "pathlib.PurePosixPath" in message and "--unsafe-load" in message
    assert not dst.exists()
    assert tool.main(["--format", "mae", "--num-heads", str(HEADS), "--unsafe-load", str(src), str(dst)]) == 0
    assert "encoder.cls_token" in torch.load(str(dst), weights_only=True)["model"]


def _write_bad_source(kind, path):
    good = {"model": _timm_vit(num_classes=0).state_dict()}
    if kind == "random_bytes":
        path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                       dtype=torch.uint8).numpy().tobytes())
    elif kind in ("truncated", "truncated_legacy"):
        torch.save(good, str(path), _use_new_zipfile_serialization=kind == "truncated")
        path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("mae_pretrain_vit_base.pth: 404 Not Found\n")
    elif kind == "list":
        torch.save([torch.zeros(2), torch.ones(2)], str(path))
    elif kind == "not_a_vit":
        torch.save({"model": {"conv1.weight": torch.zeros(8, 3, 3, 3), "fc.weight": torch.zeros(10, 8)}}, str(path))
    elif kind == "no_state_dict":
        torch.save({"epoch": 3, "args": "x"}, str(path))


BAD_SOURCES = {"random_bytes": "not a readable PyTorch checkpoint", "truncated": "not a readable PyTorch checkpoint",
               "truncated_legacy": "not a readable PyTorch checkpoint", "empty": "empty",
               "text": "not a readable PyTorch checkpoint", "list": "holds a list",
               "not_a_vit": "no 'patch_embed.proj.weight': not a ViT state dict",
               "no_state_dict": "holds no state dict", "missing": "no such file"}


@pytest.mark.parametrize("kind", sorted(BAD_SOURCES))
def test_a_bad_source_file_is_one_line_naming_it_and_exit_2(tmp_path, capsys, kind):
    src, dst = tmp_path / f"{kind}.pth", tmp_path / "out.pyth"
    _write_bad_source(kind, src)
    for unsafe in ([], ["--unsafe-load"]):  # the full pickle load fails as plainly
        assert _tool().main(["--format", "mae", *unsafe, str(src), str(dst)]) == 2
        message = capsys.readouterr().err.strip()
        assert len(message.splitlines()) == 1 and message.startswith(f"error: {src}"), message
        assert BAD_SOURCES[kind] in message and not dst.exists()
    if kind == "truncated_legacy":  # a name cut short is damage, not a foreign object to opt in to
        assert "--unsafe-load" not in message


def test_a_state_dict_without_vit_keys_is_a_value_error_naming_the_missing_key():
    with pytest.raises(ValueError, match=r"no 'patch_embed.proj.weight': not a ViT state dict in the mae layout"):
        convert_state_dict({"fc.weight": torch.zeros(2, 2)}, "mae")
    sd = _mae_st_state(finetuned=False)
    del sd["blocks.1.attn.k.bias"]
    with pytest.raises(ValueError, match=r"no 'blocks.1.attn.k.bias'"):
        convert_state_dict(sd, "mae_st", num_heads=HEADS)
    sd = _mae_st_state(finetuned=False)
    del sd["pos_embed_class"]
    with pytest.raises(ValueError, match=r"no 'pos_embed_class'"):
        convert_state_dict(sd, "mae_st", num_heads=HEADS)
