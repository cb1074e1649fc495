"""Config -> model. The only place that reads cfg for models; every model takes plain arguments."""
import os
from typing import Callable, Dict, Tuple

from fvcore.common.config import CfgNode
from torch import nn

from videodiff.models.classifier import VitClassifier
from videodiff.models.clip_target import CLIPTarget
from videodiff.models.diffmae import DiffMAE
from videodiff.models.linear_probe import VitLinearProbe
from videodiff.models.mae import MAE

# name -> (model class, function mapping the config to its constructor arguments)
MODELS: Dict[str, Tuple[type, Callable[[CfgNode], dict]]] = {}


def register_model(name: str, cls: type, args_from_cfg: Callable[[CfgNode], dict]) -> None:
    if name in MODELS:
        raise KeyError(f"model {name} is registered twice")
    MODELS[name] = (cls, args_from_cfg)


def vit_args(cfg: CfgNode) -> dict:
    """The encoder's constructor arguments from VIT.*."""
    v = cfg.VIT
    return dict(patch_size=v.PATCH_SIZE, t_patch=v.TEMPORAL_PATCH_SIZE, in_chans=v.IN_CHANNELS,
                embed_dim=v.EMBED_DIM, depth=v.DEPTH, num_heads=v.NUM_HEADS, mlp_ratio=v.MLP_RATIO,
                qkv_bias=v.QKV_BIAS, drop_path_rate=v.DROP_PATH_RATE)


def encoder_args(cfg: CfgNode) -> dict:
    """vit_args plus the options only downstream models take (for imported checkpoints: learned positions on
    the train clip's token grid, a class token, LayerNorm eps)."""
    v, grid = cfg.VIT, None
    if v.POS_EMBED == "learned":
        grid = (cfg.DATA.NUM_FRAMES // v.TEMPORAL_PATCH_SIZE, cfg.DATA.TRAIN_CROP_SIZE // v.PATCH_SIZE,
                cfg.DATA.TRAIN_CROP_SIZE // v.PATCH_SIZE)
    return dict(vit_args(cfg), pos_embed_type=v.POS_EMBED, pos_grid=grid, cls_token=v.CLS_TOKEN,
                norm_eps=v.NORM_EPS)


def classifier_args(cfg: CfgNode) -> dict:
    return dict(encoder_args(cfg), num_classes=cfg.MODEL.NUM_CLASSES, dropout=cfg.MODEL.DROPOUT_RATE,
                label_smoothing=cfg.MODEL.LABEL_SMOOTHING)


def _linear_probe_args(cfg: CfgNode) -> dict:
    return dict(encoder_args(cfg), num_classes=cfg.MODEL.NUM_CLASSES)


register_model("VitClassifier", VitClassifier, classifier_args)
register_model("VitLinearProbe", VitLinearProbe, _linear_probe_args)


def _masked_decoder_args(cfg: CfgNode) -> dict:
    """Masking and decoder size, shared by DiffMAE and the MAE baseline (identical dimensions)."""
    d = cfg.DIFFMAE
    return dict(vit_args(cfg), decoder_depth=d.DECODER_DEPTH, decoder_embed_dim=d.DECODER_EMBED_DIM,
                decoder_num_heads=d.DECODER_NUM_HEADS, mask_type=cfg.MASK.TYPE, mask_ratio=cfg.MASK.RATIO)


def _diffmae_args(cfg: CfgNode) -> dict:
    f = cfg.DIFFUSION
    return dict(_masked_decoder_args(cfg), decoder_type=cfg.DIFFMAE.DECODER_TYPE,
                target_slice=cfg.DIFFMAE.TARGET_SLICE, norm_pix_loss=cfg.DIFFMAE.NORM_PIX_LOSS,
                num_steps=f.STEPS, beta_start=f.BETA_START, beta_end=f.BETA_END, rho=f.RHO, schedule=f.SCHEDULE,
                clip_target=_clip_target(cfg))


def _clip_target(cfg: CfgNode):
    """The frozen-CLIP extra target (DIFFMAE.CLIP_*), or None when DIFFMAE.CLIP_CHECKPOINT is empty."""
    d = cfg.DIFFMAE
    if not d.CLIP_CHECKPOINT:
        return None
    if not os.path.isfile(d.CLIP_CHECKPOINT):
        raise FileNotFoundError(f"DIFFMAE.CLIP_CHECKPOINT = {d.CLIP_CHECKPOINT!r}: no such file (a local state dict "
                                f"of a CLIP ViT image encoder, see videodiff/models/clip_target.py; nothing is "
                                f"downloaded). Set DIFFMAE.CLIP_CHECKPOINT '' for pixel-only DiffMAE.")
    return CLIPTarget.from_file(d.CLIP_CHECKPOINT, d.DECODER_EMBED_DIM, cfg.DATA.MEAN, cfg.DATA.STD,
                                weight=d.CLIP_LOSS_WEIGHT, act=d.CLIP_ACT)


def _mae_args(cfg: CfgNode) -> dict:
    return dict(_masked_decoder_args(cfg), norm_pix_loss=cfg.MAE.NORM_PIX_LOSS)


register_model("DiffMAE", DiffMAE, _diffmae_args)
register_model("MAE", MAE, _mae_args)


def build_model(cfg: CfgNode) -> nn.Module:
    name = cfg.MODEL.MODEL_NAME
    if name not in MODELS:
        raise ValueError(f"MODEL.MODEL_NAME = {name!r} is not a registered model; choose one of "
                         f"{', '.join(sorted(MODELS))}")
    cls, args_from_cfg = MODELS[name]
    return cls(**args_from_cfg(cfg))
