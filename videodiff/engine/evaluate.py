"""Evaluation: pretext loss and multi-view classification accuracy, exact across ranks.

Each loader item is one (video index, view index). Scores are keyed by that pair and gathered from
every rank, so a view is counted once even if a sampler repeats it; a video's score is the mean softmax
over its views.
"""
import os
from typing import Dict, List, NamedTuple, Optional, Tuple

import numpy as np
import torch
from fvcore.common.config import CfgNode
from torch import nn

from videodiff.data import build_loader
from videodiff.data.bad_media import check_failed_fraction, drop_unreadable
from videodiff.data.normalize import ClipNormalizer
from videodiff.engine import checkpoint as ckpt
from videodiff.engine.distributed import DistInfo, all_gather_objects
from videodiff.engine.ema_hook import ema_weights
from videodiff.engine.logging import StatsWriter, logger
from videodiff.engine.precision import autocast_for
from videodiff.models.build import build_model


def has_split(cfg: CfgNode, split: str) -> bool:
    """Whether the data dir holds this split (``{split}.csv`` for videos, ``{split}/`` for image folders)."""
    root = cfg.DATA.PATH_TO_DATA_DIR
    return os.path.isfile(os.path.join(root, f"{split}.csv")) or os.path.isdir(os.path.join(root, split))


@torch.no_grad()
def collect_outputs(model: nn.Module, loader, cfg: CfgNode, info: DistInfo, failed: Optional[Dict[int, str]] = None):
    """This rank's per-view softmax scores {(video, view): (probs, label)} and summed loss / count.

    Placeholders of unreadable videos are dropped before the model; ``failed`` collects {video: path} of them.
    Clips are normalised on the device with DATA.MEAN / STD, as in training (``data/normalize.py``).
    """
    model.eval()
    scores: Dict[Tuple[int, int], Tuple[np.ndarray, int]] = {}
    loss_sum, count = 0.0, 0
    failed = {} if failed is None else failed
    normalize = ClipNormalizer.from_cfg(cfg)
    for batch in loader:
        batch = drop_unreadable(batch, failed)
        if not len(batch["clip"]):
            continue
        clip = normalize(batch["clip"], info.device)
        label = batch["label"].to(info.device, non_blocking=True)
        with autocast_for(cfg, info.device):
            out = model(clip, label)
        if "loss" in out:
            loss_sum += float(out["loss"]) * len(clip)
            count += len(clip)
        if "logits" in out:
            probs = out["logits"].float().softmax(-1).cpu().numpy()
            for video, view, p, y in zip(batch["index"].tolist(), batch["view"].tolist(), probs,
                                         batch["label"].tolist()):
                scores[(video, view)] = (p, y)
    return scores, loss_sum, count


def merge_rank_outputs(gathered: List[tuple]) -> Tuple[dict, float, int]:
    """Every rank's ``collect_outputs`` -> (one score per (video, view), total loss sum, total count).

    Scores merge by key, so a view that two ranks both evaluated (a padded shard) is counted once.
    """
    merged: dict = {}
    total_loss, total_count = 0.0, 0
    for rank_scores, rank_loss, rank_count in gathered:
        merged.update(rank_scores)
        total_loss += rank_loss
        total_count += rank_count
    return merged, total_loss, total_count


def video_scores(scores: Dict[Tuple[int, int], Tuple[np.ndarray, int]]) -> Dict[str, np.ndarray]:
    """Per video, sorted by id: ``video`` [V], mean softmax over its views ``scores`` [V, K], ``label`` [V],
    ``views`` found [V]."""
    per_video: Dict[int, list] = {}
    for (video, _), (probs, label) in scores.items():
        per_video.setdefault(video, [np.zeros_like(probs, dtype=np.float64), 0, label])
        per_video[video][0] += probs
        per_video[video][1] += 1
    ids = sorted(per_video)
    return {"video": np.array(ids, dtype=np.int64),
            "scores": np.stack([per_video[v][0] / per_video[v][1] for v in ids]).astype(np.float32),
            "label": np.array([per_video[v][2] for v in ids], dtype=np.int64),
            "views": np.array([per_video[v][1] for v in ids], dtype=np.int64)}


def aggregate_views(scores: Dict[Tuple[int, int], Tuple[np.ndarray, int]], views_expected: int) -> dict:
    """Average softmax over each video's views; top-1 / top-5 accuracy and view coverage."""
    if not scores:
        return {}
    per_video = video_scores(scores)
    mean, labels, views = per_video["scores"], per_video["label"], per_video["views"]
    k = min(5, mean.shape[1])
    top5 = np.argsort(-mean, axis=1, kind="stable")[:, :k]
    return {"top1_acc": float(100 * (top5[:, 0] == labels).mean()),
            "top5_acc": float(100 * (top5 == labels[:, None]).any(1).mean()),
            "num_videos": len(labels), "views_per_video_min": int(views.min()),
            "views_per_video_max": int(views.max()), "views_per_video_expected": views_expected}


def save_video_scores(scores: Dict[Tuple[int, int], Tuple[np.ndarray, int]], path: str) -> None:
    """``video_scores`` as tensors in one ``torch.save`` file (loads with ``weights_only=True``)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save({k: torch.from_numpy(v) for k, v in video_scores(scores).items()}, path)


def exclude_failed_videos(merged: dict, gathered_failed: List[Dict[int, str]], cfg: CfgNode, split: str,
                          warn: bool = True) -> Tuple[dict, int]:
    """Drop every view of a video with an unreadable view (a partial average would skew it), warn naming each
    file, and stop when more than DATA.MAX_FAILED_FRACTION of the split's videos failed."""
    failed: Dict[int, str] = {}
    for part in gathered_failed:
        failed.update(part)
    for video, path in sorted(failed.items()) if warn else ():
        logger.warning(f"{split}: video {video} ({path}) could not be read; excluded from the metrics")
    kept = {key: value for key, value in merged.items() if key[0] not in failed}
    total = len({video for video, _ in merged} | failed.keys())
    check_failed_fraction(len(failed), total, cfg.DATA.MAX_FAILED_FRACTION, f"{split} videos")
    return kept, len(failed)


def evaluate(model: nn.Module, loader, cfg: CfgNode, info: DistInfo, split: str, views_expected: int = 1,
             save_path: str = "") -> dict:
    """Pretext loss and (for classifiers) multi-view accuracy over the whole split, identical on every rank.

    With ``save_path`` the main rank also writes the per-video scores there (``save_video_scores``).
    """
    failed: Dict[int, str] = {}
    scores, loss_sum, count = collect_outputs(model, loader, cfg, info, failed)
    merged, total_loss, total_count = merge_rank_outputs(all_gather_objects((scores, loss_sum, count)))
    merged, num_failed = exclude_failed_videos(merged, all_gather_objects(failed), cfg, split, warn=info.is_main)
    result = {"split": split, "failed_videos": num_failed}
    if total_count:
        result["loss"] = total_loss / total_count
    result.update(aggregate_views(merged, views_expected))
    if save_path and info.is_main and merged:
        save_video_scores(merged, save_path)
    return result


class TestJob(NamedTuple):
    model: nn.Module  # with the checkpoint's weights, on the device
    checkpoint: str
    loader: object


def prepare_test(cfg: CfgNode, info: DistInfo) -> TestJob:
    """The model with TEST.CHECKPOINT_FILE_PATH's (or the run's newest checkpoint's) weights and the test loader.

    Weights that are not finite are refused naming the file: a test of a broken model reports nothing true."""
    path = cfg.TEST.CHECKPOINT_FILE_PATH or ckpt.find_latest_checkpoint(cfg.OUTPUT_DIR)
    if not path:
        raise ckpt.CheckpointError(f"TEST.ENABLE needs a checkpoint: TEST.CHECKPOINT_FILE_PATH is empty and "
                                   f"{ckpt.checkpoint_dir(cfg.OUTPUT_DIR)} holds none")
    model = build_model(cfg).to(info.device)
    state = ckpt.load_state(path, cfg.TRAIN.CHECKPOINT_WEIGHTS_ONLY)
    # With MODEL_EMA on, the test evaluates the averaged weights the run kept (engine/ema_hook.py).
    weights = ema_weights(state, path) if cfg.MODEL_EMA.ENABLE else state["model"]
    broken = [k for k, v in weights.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:
        raise ckpt.CheckpointError(f"checkpoint {path} has non-finite weights ({len(broken)} tensors, e.g. "
                                   f"{broken[0]}); not tested")
    ckpt.load_model_state(model, weights, path)
    return TestJob(model, path, build_loader(cfg, "test", info.rank, info.world_size))


def run_test(cfg: CfgNode, info: DistInfo, job: Optional[TestJob] = None) -> dict:
    """Multi-view test on the test split (of ``job``, else of ``prepare_test(cfg, info)``)."""
    model, path, loader = job or prepare_test(cfg, info)
    views = cfg.TEST.NUM_ENSEMBLE_VIEWS * cfg.TEST.NUM_SPATIAL_CROPS
    save = cfg.TEST.SAVE_RESULTS_PATH and os.path.join(cfg.OUTPUT_DIR, cfg.TEST.SAVE_RESULTS_PATH)
    result = evaluate(model, loader, cfg, info, split="test_final", views_expected=views, save_path=save)
    result.update(checkpoint=path, ema_weights=bool(cfg.MODEL_EMA.ENABLE))
    if save:
        result["scores_file"] = save
    stats = StatsWriter(cfg.OUTPUT_DIR, info.is_main, tensorboard=False)
    stats.write(result)
    logger.info("test: " + " ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                    for k, v in result.items()))
    return result
