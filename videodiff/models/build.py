"""Config -> model. The only place that reads cfg for models; every model takes plain arguments."""
from typing import Callable, Dict, Tuple

from fvcore.common.config import CfgNode
from torch import nn

from videodiff.models.classifier import VitClassifier

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


def _classifier_args(cfg: CfgNode) -> dict:
    return dict(vit_args(cfg), num_classes=cfg.MODEL.NUM_CLASSES, dropout=cfg.MODEL.DROPOUT_RATE,
                label_smoothing=cfg.MODEL.LABEL_SMOOTHING)


register_model("VitClassifier", VitClassifier, _classifier_args)


def build_model(cfg: CfgNode) -> nn.Module:
    name = cfg.MODEL.MODEL_NAME
    if name not in MODELS:
        raise ValueError(f"MODEL.MODEL_NAME = {name!r} is not a registered model; choose one of "
                         f"{', '.join(sorted(MODELS))}")
    cls, args_from_cfg = MODELS[name]
    return cls(**args_from_cfg(cfg))
