"""Fine-tuning and probing: layer decay, pretrained loading, linear probe, mixup / cutmix, EMA, multi-view maths."""
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from timm.data import Mixup

from cli_helpers import TINY_OPTS, make_tiny_demo, read_stats, run_net
from videodiff.config import load_config
from videodiff.engine import checkpoint as ckpt
from videodiff.engine.distributed import DistInfo
from videodiff.engine.ema_hook import EmaHook, ema_weights
from videodiff.engine.evaluate import aggregate_views, merge_rank_outputs, save_video_scores
from videodiff.engine.mixup_hook import MixupHook
from videodiff.engine.optim import build_optimizer
from videodiff.models.build import build_model
from videodiff.models.classifier import VitClassifier
from videodiff.models.diffmae import DiffMAE
from videodiff.models.pretrained import load_pretrained

TINY = dict(patch_size=8, t_patch=2, embed_dim=32, depth=3, num_heads=4)
CPU = DistInfo()


# ---------------------------------------------------------------------------------------------- layer decay
def test_layer_decay_gives_stem_each_block_and_head_their_own_scale():
    model = VitClassifier(num_classes=5, pos_embed_type="learned", pos_grid=(2, 2, 2), cls_token=True, **TINY)
    cfg = load_config(None, ["SOLVER.LAYER_DECAY", "0.5"])
    groups = build_optimizer(model, cfg).param_groups
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    depth = TINY["depth"]
    for name, p in model.named_parameters():
        if name.startswith("encoder.blocks."):
            block = int(name.split(".")[2])
            assert scale[id(p)] == 0.5 ** (depth - block), name   # block i -> layer i + 1 of depth + 2
        elif name.startswith("head."):
            assert scale[id(p)] == 1.0, name                      # the head learns at the full rate
        else:
            assert scale[id(p)] == 0.5 ** (depth + 1), name       # patch embedding, positions, class token
    assert len(set(scale.values())) == depth + 2
    assert decay[id(model.encoder.learned_pos_embed)] == 0 and decay[id(model.encoder.cls_token)] == 0
    assert decay[id(model.head.fc.weight)] == cfg.SOLVER.WEIGHT_DECAY


# ---------------------------------------------------------------------------------------------- pretrained loading
def _diffmae_checkpoint(tmp_path, **kw):
    model = DiffMAE(decoder_depth=1, decoder_embed_dim=16, decoder_num_heads=2, **dict(TINY, **kw))
    return model, ckpt.save_checkpoint(str(tmp_path), 4, model)


def test_diffmae_checkpoint_initialises_the_classifier_encoder_and_reports_every_key(tmp_path):
    source, path = _diffmae_checkpoint(tmp_path)
    model = VitClassifier(num_classes=5, **TINY)
    head_before = model.head.fc.weight.clone()
    report = load_pretrained(model, ckpt.load_state(path), path)
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(value, source.encoder.state_dict()[key]), key
    assert torch.equal(model.head.fc.weight, head_before)
    assert sorted(report.missing) == ["head.fc.bias", "head.fc.weight", "head.fc_norm.bias", "head.fc_norm.weight"]
    dropped = {d.split(" ")[0] for d in report.dropped}
    assert {"encoder.norm.weight", "decoder.encoder_proj.weight", "decoder.pred.weight"} <= dropped
    assert len(report.mapped) + len(report.dropped) == len(source.state_dict())
    assert "decoder.blocks.* (" in report.summary()


def test_head_of_another_shape_is_refused_unless_dropped(tmp_path):
    path = ckpt.save_checkpoint(str(tmp_path), 1, VitClassifier(num_classes=400, **TINY))
    with pytest.raises(ckpt.CheckpointError, match=r"checkpoint_epoch_00001\.pyth: head\.fc\.weight .*"
                                                   r"TRAIN\.CHECKPOINT_DROP_HEAD"):
        load_pretrained(VitClassifier(num_classes=5, **TINY), ckpt.load_state(path), path)
    report = load_pretrained(VitClassifier(num_classes=5, **TINY), ckpt.load_state(path), path, drop_head=True)
    assert "head.fc.weight (TRAIN.CHECKPOINT_DROP_HEAD)" in report.dropped


def test_encoder_mismatch_names_file_keys_and_setting(tmp_path):
    _, path = _diffmae_checkpoint(tmp_path)
    with pytest.raises(ckpt.CheckpointError, match=r"lacks \(\d+\): encoder\.blocks\.3.*check VIT\.\*"):
        load_pretrained(VitClassifier(num_classes=5, **dict(TINY, depth=4)), ckpt.load_state(path), path)
    with pytest.raises(ckpt.CheckpointError, match=r"encoder\.learned_pos_embed.*check VIT\.POS_EMBED"):
        load_pretrained(VitClassifier(num_classes=5, pos_embed_type="learned", pos_grid=(2, 2, 2), **TINY),
                        ckpt.load_state(path), path)
    with pytest.raises(ckpt.CheckpointError, match=r"encoder\.patch_embed\.proj\.weight has shape "
                                                   r"\(32, 3, 2, 8, 8\) but the model.s is \(48,"):
        load_pretrained(VitClassifier(num_classes=5, **dict(TINY, embed_dim=48)), ckpt.load_state(path), path)


def test_learned_positions_of_another_grid_are_resized(tmp_path):
    small = VitClassifier(num_classes=5, pos_embed_type="learned", pos_grid=(2, 2, 2), **TINY)
    path = ckpt.save_checkpoint(str(tmp_path), 1, small)
    big = VitClassifier(num_classes=5, pos_embed_type="learned", pos_grid=(4, 3, 3), **TINY)
    report = load_pretrained(big, ckpt.load_state(path), path)
    assert report.resized == ["encoder.learned_pos_embed (2, 2, 2) -> (4, 3, 3)"]
    assert big(torch.randn(1, 3, 8, 24, 24))["logits"].shape == (1, 5)


# ---------------------------------------------------------------------------------------------- linear probe
def test_linear_probe_trains_only_its_linear_layer_on_frozen_features():
    cfg = load_config(None, ["MODEL.MODEL_NAME", "VitLinearProbe", "MODEL.NUM_CLASSES", "3", "VIT.EMBED_DIM", "32",
                             "VIT.DEPTH", "2", "VIT.NUM_HEADS", "4", "VIT.PATCH_SIZE", "8",
                             "VIT.DROP_PATH_RATE", "0.5", "SOLVER.WEIGHT_DECAY", "0.0"])
    model = build_model(cfg).train()
    assert not model.encoder.training and model.head.bn.weight is None
    opt = build_optimizer(model, cfg)
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(model.head.fc.weight),
                                                                       id(model.head.fc.bias)}
    encoder_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    clip = torch.randn(4, 3, 2, 16, 16)
    features = model.encoder.forward_features(clip)
    assert torch.equal(features, model.encoder.forward_features(clip))  # no drop path while probing
    opt.zero_grad()
    model(clip, torch.tensor([0, 1, 2, 0]))["loss"].backward()
    opt.step()
    assert all(torch.equal(v, model.encoder.state_dict()[k]) for k, v in encoder_before.items())


# ---------------------------------------------------------------------------------------------- mixup / cutmix
def _mix(alpha, cutmix, seed):
    np.random.seed(seed)
    hook = MixupHook(Mixup(mixup_alpha=alpha, cutmix_alpha=cutmix, label_smoothing=0.1, num_classes=4))
    batch = {"clip": torch.randn(4, 3, 2, 16, 16), "label": torch.tensor([0, 1, 2, 3]), "index": torch.arange(4)}
    return batch, hook.before_step(SimpleNamespace(info=CPU), dict(batch))


def test_mixup_mixes_clip_i_with_clip_b_minus_1_minus_i_and_soft_targets():
    batch, mixed = _mix(0.8, 0.0, seed=0)
    x, flipped = batch["clip"], batch["clip"].flip(0)
    lam = float(((mixed["clip"] - flipped) / (x - flipped)).mean())
    assert torch.allclose(mixed["clip"], lam * x + (1 - lam) * flipped, atol=1e-5)
    smooth = torch.full((4, 4), 0.1 / 4) + torch.eye(4) * 0.9                   # label smoothing 0.1 over 4 classes
    assert torch.allclose(mixed["label"], lam * smooth + (1 - lam) * smooth.flip(0), atol=1e-5)
    assert torch.allclose(mixed["label"].sum(1), torch.ones(4)) and torch.equal(mixed["index"], batch["index"])


def test_cutmix_box_is_the_same_in_every_frame_and_sets_the_target_weight():
    batch, mixed = _mix(0.0, 1.0, seed=3)
    x, flipped = batch["clip"], batch["clip"].flip(0)
    pasted = (mixed["clip"] == flipped) & (mixed["clip"] != x)                   # [B, C, T, H, W]
    box = pasted[0, 0, 0]
    assert box.any() and not box.all()
    assert all(torch.equal(pasted[b, c, t], box) for b in range(4) for c in range(3) for t in range(2))
    lam = 1 - box.float().mean()                                                # kept area
    smooth = torch.full((4, 4), 0.1 / 4) + torch.eye(4) * 0.9
    assert torch.allclose(mixed["label"], lam * smooth + (1 - lam) * smooth.flip(0), atol=1e-5)


def test_mixup_refuses_an_odd_batch():
    hook = MixupHook(Mixup(mixup_alpha=0.8, num_classes=4))
    with pytest.raises(ValueError, match="even batch per rank, got 3"):
        hook.before_step(SimpleNamespace(info=CPU), {"clip": torch.zeros(3, 3, 2, 8, 8),
                                                     "label": torch.zeros(3).long()})


# ---------------------------------------------------------------------------------------------- EMA
def test_ema_hook_averages_after_steps_and_survives_a_checkpoint():
    model = torch.nn.Linear(2, 2)
    trainer = SimpleNamespace(model=model)
    hook = EmaHook(decay=0.9)
    hook.before_train(trainer)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    hook.after_step(trainer, {"loss": torch.tensor(1.0)})
    hook.after_step(trainer, {})  # a skipped step does not count
    assert torch.allclose(hook.ema.module.weight, 0.9 * start + 0.1 * model.weight)
    restored = EmaHook(decay=0.9)
    restored.load_state_dict(hook.state_dict())  # restore() runs before before_train
    restored.before_train(SimpleNamespace(model=torch.nn.Linear(2, 2)))
    assert torch.equal(restored.ema.module.weight, hook.ema.module.weight)
    assert torch.equal(ema_weights({"hooks": {"EmaHook": hook.state_dict()}}, "x")["weight"], hook.ema.module.weight)
    with pytest.raises(ckpt.CheckpointError, match="x.pyth holds no EMA weights.*MODEL_EMA.ENABLE False"):
        ema_weights({"model": {}}, "x.pyth")


# ---------------------------------------------------------------------------------------------- multi-view maths
def test_multi_view_scores_average_per_video_across_uneven_ranks_counting_each_view_once(tmp_path):
    p = np.array
    # Video 0: two views split over ranks; video 1: views 0 and 1 on rank 0, view 1 repeated by rank 1
    # (a padded shard); video 2: one of two views. Rank 0 holds 4 views, rank 1 holds 3.
    rank0 = ({(0, 0): (p([0.6, 0.3, 0.1]), 0), (1, 0): (p([0.2, 0.7, 0.1]), 2), (1, 1): (p([0.2, 0.1, 0.7]), 2),
              (2, 0): (p([0.1, 0.1, 0.8]), 1)}, 4.0, 4)
    rank1 = ({(0, 1): (p([0.2, 0.5, 0.3]), 0), (1, 1): (p([0.2, 0.1, 0.7]), 2)}, 1.0, 2)
    merged, loss, count = merge_rank_outputs([rank0, rank1])
    assert len(merged) == 5 and (loss, count) == (5.0, 6)
    result = aggregate_views(merged, views_expected=2)
    # Means: video 0 [0.4, 0.4, 0.2] -> argmax 0 (first of the tie) = label 0; video 1 [0.2, 0.4, 0.4] -> 1,
    # label 2 wrong at top-1; video 2 -> 2, label 1 wrong; top-2 (k = min(5, K) = 3 here) contains all labels.
    assert result["top1_acc"] == pytest.approx(100 / 3)
    assert result["top5_acc"] == 100.0
    assert (result["num_videos"], result["views_per_video_min"], result["views_per_video_max"],
            result["views_per_video_expected"]) == (3, 1, 2, 2)
    save_video_scores(merged, str(tmp_path / "scores.pyth"))
    saved = torch.load(str(tmp_path / "scores.pyth"), weights_only=True)
    assert saved["video"].tolist() == [0, 1, 2] and saved["views"].tolist() == [2, 2, 1]
    assert torch.allclose(saved["scores"][0], torch.tensor([0.4, 0.4, 0.2]))


# ---------------------------------------------------------------------------------------------- end to end
def test_fine_tune_from_diffmae_with_mixup_and_ema_then_test_with_ema_weights(tmp_path):
    demo = make_tiny_demo(tmp_path)
    tiny = dict(patch_size=8, t_patch=2, embed_dim=32, depth=1, num_heads=2)
    init = ckpt.save_checkpoint(str(tmp_path / "pre"), 1, DiffMAE(decoder_depth=1, decoder_embed_dim=16,
                                                                  decoder_num_heads=2, **tiny))
    out = str(tmp_path / "ft")
    run_net("configs/demo/vit_tiny_supervised.yaml", TINY_OPTS + [
        "DATA.PATH_TO_DATA_DIR", demo, "OUTPUT_DIR", out, "SOLVER.MAX_EPOCH", "1", "TRAIN.EVAL_PERIOD", "1",
        "TRAIN.CHECKPOINT_FILE_PATH", init, "MIXUP.ENABLE", "True", "MODEL_EMA.ENABLE", "True",
        "MODEL_EMA.DECAY", "0.5", "SOLVER.LAYER_DECAY", "0.75", "TEST.SAVE_RESULTS_PATH", "scores.pyth"])
    with open(os.path.join(out, "log.txt")) as f:
        log = f.read()
    assert "initialised from" in log and "decoder.blocks.* (" in log
    stats = read_stats(out)
    assert {s["split"] for s in stats} >= {"train", "val", "val_ema", "test_final"}
    final = [s for s in stats if s["split"] == "test_final"][0]
    assert final["ema_weights"] is True and final["views_per_video_min"] == final["views_per_video_expected"]
    saved = torch.load(os.path.join(out, "scores.pyth"), weights_only=True)
    assert saved["scores"].shape == (final["num_videos"], 10)
