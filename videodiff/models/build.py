"""Config -> model. The only place that reads cfg for models; every model takes plain arguments."""
import os
from typing import Callable, Dict, Iterator, NamedTuple, Tuple

import torch
from fvcore.common.config import CfgNode
from torch import nn

from videodiff.models.classifier import VitClassifier
from videodiff.models.conv_vae import ConvVAE, ConvVAETokenizer
from videodiff.models.clip_target import CLIPTarget
from videodiff.models.diffmae import DiffMAE
from videodiff.models.ldae import LDAE, output_space_problem
from videodiff.models.linear_probe import VitLinearProbe
from videodiff.models.mae import MAE
from videodiff.models.per_frame import PerFrameTokenizer, scope_layout
from videodiff.models.tokenizers import (PatchAETokenizer, PatchTokenizer, PatchVAETokenizer, PCATokenizer,
                                         PixelTokenizer, fit_command)

# A broken rule: (config key, what is wrong); config validation adds the key's source and stops.
ConfigProblems = Iterator[Tuple[str, str]]


def no_rules(cfg: CfgNode) -> ConfigProblems:
    return iter(())


class ModelEntry(NamedTuple):
    cls: type
    args_from_cfg: Callable[[CfgNode], dict]        # the config -> the constructor's arguments
    check_cfg: Callable[[CfgNode], ConfigProblems]  # rules only this model needs, run by config validation


# MODEL.MODEL_NAME -> its entry. A new model is one class and one register_model line.
MODELS: Dict[str, ModelEntry] = {}


def register_model(name: str, cls: type, args_from_cfg: Callable[[CfgNode], dict],
                   check_cfg: Callable[[CfgNode], ConfigProblems] = no_rules) -> None:
    if name in MODELS:
        raise KeyError(f"model {name} is registered twice")
    MODELS[name] = ModelEntry(cls, args_from_cfg, check_cfg)


def vit_args(cfg: CfgNode) -> dict:
    """The encoder's constructor arguments from VIT.*, and MODEL.ACT_CHECKPOINT (every model with blocks takes it)."""
    v = cfg.VIT
    return dict(patch_size=v.PATCH_SIZE, t_patch=v.TEMPORAL_PATCH_SIZE, in_chans=v.IN_CHANNELS,
                embed_dim=v.EMBED_DIM, depth=v.DEPTH, num_heads=v.NUM_HEADS, mlp_ratio=v.MLP_RATIO,
                qkv_bias=v.QKV_BIAS, drop_path_rate=v.DROP_PATH_RATE, act_checkpoint=cfg.MODEL.ACT_CHECKPOINT)


def encoder_args(cfg: CfgNode) -> dict:
    """vit_args plus the options only downstream models take (for imported checkpoints: learned positions on
    the train clip's token grid, a class token, LayerNorm eps)."""
    v, grid = cfg.VIT, None
    if v.POS_EMBED == "learned":
        grid = (cfg.DATA.NUM_FRAMES // v.TEMPORAL_PATCH_SIZE, cfg.DATA.TRAIN_CROP_SIZE // v.PATCH_SIZE,
                cfg.DATA.TRAIN_CROP_SIZE // v.PATCH_SIZE)
    return dict(vit_args(cfg), pos_embed_type=v.POS_EMBED, pos_grid=grid, cls_token=v.CLS_TOKEN,
                norm_eps=v.NORM_EPS, stem=_stem(cfg))


def _stem(cfg: CfgNode):
    """VIT.STEM_FILE's frozen conv VAE encoder (probing / fine-tuning an l-DAE that read its latents), or None."""
    if not cfg.VIT.STEM_FILE:
        return None
    layout = patch_layout(cfg)
    p = layout[1]
    if cfg.TRAIN.DRY_RUN and not os.path.isfile(cfg.VIT.STEM_FILE):
        print(f"dry run: VIT.STEM_FILE {cfg.VIT.STEM_FILE!r} does not exist; using a random conv VAE stand-in")
        return _conv_vae_stand_in(cfg)
    return ConvVAETokenizer.from_file(cfg.VIT.STEM_FILE, None, layout[0] * p * p * layout[2], layout)


def classifier_args(cfg: CfgNode) -> dict:
    return dict(encoder_args(cfg), num_classes=cfg.MODEL.NUM_CLASSES, dropout=cfg.MODEL.DROPOUT_RATE,
                label_smoothing=cfg.MODEL.LABEL_SMOOTHING)


def _linear_probe_args(cfg: CfgNode) -> dict:
    return dict(encoder_args(cfg), num_classes=cfg.MODEL.NUM_CLASSES, final_norm=cfg.VIT.FINAL_NORM)


register_model("VitClassifier", VitClassifier, classifier_args)
register_model("VitLinearProbe", VitLinearProbe, _linear_probe_args)


def _masked_decoder_args(cfg: CfgNode) -> dict:
    """Masking and decoder size, shared by DiffMAE and the MAE baseline (identical dimensions)."""
    d = cfg.DIFFMAE
    return dict(vit_args(cfg), decoder_depth=d.DECODER_DEPTH, decoder_embed_dim=d.DECODER_EMBED_DIM,
                decoder_num_heads=d.DECODER_NUM_HEADS, mask_type=cfg.MASK.TYPE, mask_ratio=cfg.MASK.RATIO)


def _masked_decoder_rules(cfg: CfgNode) -> ConfigProblems:
    """DiffMAE and MAE pretrain with sin-cos positions, no class token, and a decoder that heads and 3-D sin-cos
    positions divide."""
    name = cfg.MODEL.MODEL_NAME
    if cfg.VIT.POS_EMBED != "sincos" or cfg.VIT.CLS_TOKEN:
        yield "VIT.POS_EMBED", (f"/ VIT.CLS_TOKEN are for downstream models; {name} pretrains with sin-cos "
                                f"positions and no class token")
    dec, heads = cfg.DIFFMAE.DECODER_EMBED_DIM, cfg.DIFFMAE.DECODER_NUM_HEADS
    if dec % heads:
        yield "DIFFMAE.DECODER_EMBED_DIM", f"= {dec} is not divisible by DIFFMAE.DECODER_NUM_HEADS = {heads}"
    if dec % 8:
        yield "DIFFMAE.DECODER_EMBED_DIM", f"= {dec} is not divisible by 8 (3-D sin-cos position embedding)"
    yield from labels_unused(cfg)


def labels_unused(cfg: CfgNode) -> ConfigProblems:
    """A model that trains without labels pretrains on every clip: a few-label subset would only discard data."""
    k = cfg.DATA.LABELS_PER_CLASS
    if k:
        yield "DATA.LABELS_PER_CLASS", (f"= {k}: {cfg.MODEL.MODEL_NAME} trains without labels, on every clip of the "
                                        f"train list; few labels are for fine-tuning and probing (set 0)")


def _diffmae_rules(cfg: CfgNode) -> ConfigProblems:
    yield from _masked_decoder_rules(cfg)
    if cfg.DIFFUSION.BETA_START > cfg.DIFFUSION.BETA_END:
        yield "DIFFUSION.BETA_START", f"= {cfg.DIFFUSION.BETA_START} exceeds DIFFUSION.BETA_END = {cfg.DIFFUSION.BETA_END}"
    tp = cfg.VIT.TEMPORAL_PATCH_SIZE
    if cfg.DIFFMAE.TARGET_SLICE >= tp:
        yield "DIFFMAE.TARGET_SLICE", (f"= {cfg.DIFFMAE.TARGET_SLICE} is not a frame of a token: expected 0 .. "
                                       f"VIT.TEMPORAL_PATCH_SIZE - 1 = {tp - 1}")


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


register_model("DiffMAE", DiffMAE, _diffmae_args, _diffmae_rules)
register_model("MAE", MAE, _mae_args, _masked_decoder_rules)


def patch_layout(cfg: CfgNode) -> Tuple[int, int, int]:
    """(t_patch, p, C): the layout of one flat patch (``patchify.py``)."""
    return cfg.VIT.TEMPORAL_PATCH_SIZE, cfg.VIT.PATCH_SIZE, cfg.VIT.IN_CHANNELS


# LDAE.TOKENIZER values (models/tokenizers.py, models/conv_vae.py). "ae" / "vae" / "conv_vae" read a file of their kind.
TOKENIZERS = ("pca", "ae", "vae", "pixel", "conv_vae")
_FILE_TOKENIZERS = {"ae": PatchAETokenizer, "vae": PatchVAETokenizer, "conv_vae": ConvVAETokenizer}


def tokenizer_layout(cfg: CfgNode) -> Tuple[int, int, int]:
    """(t_patch, p, C) of the patches the l-DAE tokenizer works on and is fitted on (tools/fit_pca.py,
    fit_tokenizer.py): a whole token's, or one frame of it, (1, p, C), with LDAE.TOKENIZER_SCOPE frame."""
    return scope_layout(patch_layout(cfg), cfg.LDAE.TOKENIZER_SCOPE)


def tokenizer_latent_dim(cfg: CfgNode) -> int:
    """d of the tokenizer itself: LDAE.LATENT_DIM (d per token), shared out over the frames with scope frame."""
    return cfg.LDAE.LATENT_DIM // (cfg.VIT.TEMPORAL_PATCH_SIZE // tokenizer_layout(cfg)[0])


def _ldae_tokenizer(cfg: CfgNode) -> PatchTokenizer:
    """LDAE.TOKENIZER's tokenizer for LDAE.TOKENIZER_SCOPE: with "frame", a single-frame tokenizer applied to each
    frame of a token (``per_frame.py``)."""
    tokenizer = _patch_tokenizer(cfg, tokenizer_layout(cfg), tokenizer_latent_dim(cfg))
    if cfg.LDAE.TOKENIZER_SCOPE == "frame":
        return PerFrameTokenizer(tokenizer, cfg.VIT.TEMPORAL_PATCH_SIZE)
    return tokenizer


def _patch_tokenizer(cfg: CfgNode, layout: Tuple[int, int, int], d: int) -> PatchTokenizer:
    """LDAE.TOKENIZER's tokenizer of ``layout`` patches and latent size d: the fitted PCA / patch AE / patch VAE of
    LDAE.TOKENIZER_FILE, or the pixel identity (no file; LDAE.TOKENIZER_FILE is not read). A dry run without the
    file gets an identity-basis stand-in of the same kind and sizes (shapes and FLOPs are the same), and says so."""
    l = cfg.LDAE
    big_d = layout[0] * layout[1] * layout[1] * layout[2]
    if l.TOKENIZER == "pixel":
        return PixelTokenizer(big_d)
    if cfg.TRAIN.DRY_RUN and not os.path.isfile(l.TOKENIZER_FILE):
        print(f"dry run: LDAE.TOKENIZER_FILE {l.TOKENIZER_FILE!r} does not exist; using an identity-basis "
              f"{l.TOKENIZER} stand-in")
        if l.TOKENIZER == "conv_vae":
            return _conv_vae_stand_in(cfg)
        if l.TOKENIZER == "pca":
            return PCATokenizer(torch.zeros(big_d), torch.eye(big_d), torch.ones(big_d), d, l.PCA_WHITEN)
        eye = torch.eye(big_d)[:d]
        return _FILE_TOKENIZERS[l.TOKENIZER](torch.zeros(big_d), eye, eye, torch.ones(d))
    if not l.TOKENIZER_FILE:
        raise FileNotFoundError(f"LDAE.TOKENIZER_FILE is empty: fit the tokenizer first with "
                                f"python {fit_command(l.TOKENIZER).replace('<config>', '<this config>')} "
                                f"[KEY VALUE ...]")
    if l.TOKENIZER == "pca":
        return PCATokenizer.from_file(l.TOKENIZER_FILE, d, l.PCA_WHITEN, big_d, layout)
    return _FILE_TOKENIZERS[l.TOKENIZER].from_file(l.TOKENIZER_FILE, d, big_d, layout)


def conv_vae_args(cfg: CfgNode) -> dict:
    """The conv VAE's constructor arguments from CONV_VAE.* (tools/fit_tokenizer.py --kind conv_vae builds it)."""
    c = cfg.CONV_VAE
    return dict(in_chans=cfg.VIT.IN_CHANNELS, latent_channels=c.LATENT_CHANNELS, width=c.WIDTH,
                num_res_blocks=c.NUM_RES_BLOCKS, stride=c.STRIDE)


def _conv_vae_token_dim(cfg: CfgNode) -> int:
    t_patch, p, _ = patch_layout(cfg)
    return t_patch * (p // cfg.CONV_VAE.STRIDE) ** 2 * cfg.CONV_VAE.LATENT_CHANNELS


def _conv_vae_stand_in(cfg: CfgNode) -> ConvVAETokenizer:
    """A randomly initialised conv VAE of CONV_VAE.*'s sizes with unit latent statistics (dry runs only)."""
    c = cfg.CONV_VAE.LATENT_CHANNELS
    return ConvVAETokenizer(ConvVAE(**conv_vae_args(cfg)), torch.zeros(c), torch.ones(c), cfg.VIT.PATCH_SIZE,
                            cfg.VIT.TEMPORAL_PATCH_SIZE)


def _ldae_args(cfg: CfgNode) -> dict:
    l, v = cfg.LDAE, cfg.VIT
    return dict(tokenizer=_ldae_tokenizer(cfg), patch_size=v.PATCH_SIZE, t_patch=v.TEMPORAL_PATCH_SIZE,
                in_chans=v.IN_CHANNELS, embed_dim=v.EMBED_DIM, depth=v.DEPTH, num_heads=v.NUM_HEADS,
                mlp_ratio=v.MLP_RATIO, encoder_depth=l.ENCODER_DEPTH or None, cond_dim=l.COND_DIM or None,
                schedule=l.SCHEDULE, num_steps=l.STEPS, sigma_max=l.SIGMA_MAX, single_sigma=l.SINGLE_SIGMA,
                predict=l.PREDICT, input_space=l.INPUT_SPACE, output_space=l.OUTPUT_SPACE,
                loss_weight_kind=l.LOSS_WEIGHT, residual_weight=l.RESIDUAL_WEIGHT,
                num_classes=cfg.MODEL.NUM_CLASSES if l.CLASS_COND else 0, class_dropout=l.CLASS_DROPOUT,
                act_checkpoint=cfg.MODEL.ACT_CHECKPOINT)


def _ldae_rules(cfg: CfgNode) -> ConfigProblems:
    """The paper's combinations of target and spaces, and sizes that fit the DiT."""
    l, layout = cfg.LDAE, patch_layout(cfg)
    if not l.CLASS_COND:
        yield from labels_unused(cfg)
    big_d = layout[0] * layout[1] * layout[1] * layout[2]
    problem = output_space_problem(l.PREDICT, l.OUTPUT_SPACE)
    if problem:
        yield "LDAE.OUTPUT_SPACE", f"= {l.OUTPUT_SPACE!r}: {problem}"
    yield from _tokenizer_scope_rules(cfg)
    if not 1 <= l.LATENT_DIM <= big_d:
        yield "LDAE.LATENT_DIM", f"= {l.LATENT_DIM} must lie in 1 .. {big_d} (the values of one {layout} patch)"
    elif l.TOKENIZER == "conv_vae" and layout[1] % cfg.CONV_VAE.STRIDE:
        yield "CONV_VAE.STRIDE", f"= {cfg.CONV_VAE.STRIDE} does not divide VIT.PATCH_SIZE = {layout[1]}"
    elif l.TOKENIZER == "conv_vae" and l.LATENT_DIM != _conv_vae_token_dim(cfg):
        yield "LDAE.LATENT_DIM", (f"= {l.LATENT_DIM}, but a conv VAE token is t_patch x (p / CONV_VAE.STRIDE)^2 x "
                                  f"CONV_VAE.LATENT_CHANNELS = {_conv_vae_token_dim(cfg)} values (paper footnote 2)")
    elif l.TOKENIZER == "pixel" and l.LATENT_DIM != big_d:
        yield "LDAE.LATENT_DIM", (f"= {l.LATENT_DIM}, but LDAE.TOKENIZER pixel keeps every value of a {layout} "
                                  f"patch: set it to {big_d} (t_patch x p x p x C; choose d through "
                                  f"DATA.TRAIN_CROP_SIZE and VIT.PATCH_SIZE)")
    if l.ENCODER_DEPTH > cfg.VIT.DEPTH:
        yield "LDAE.ENCODER_DEPTH", f"= {l.ENCODER_DEPTH} exceeds the DiT's VIT.DEPTH = {cfg.VIT.DEPTH}"
    if not l.ENCODER_DEPTH and cfg.VIT.DEPTH < 2:
        yield "VIT.DEPTH", f"= {cfg.VIT.DEPTH}: the DiT needs 2 or more blocks for its encoder to be the first half"
    if l.PROBE_T >= l.STEPS:
        yield "LDAE.PROBE_T", f"= {l.PROBE_T} is not a step: expected 0 .. LDAE.STEPS - 1 = {l.STEPS - 1}"
    if cfg.VIT.POS_EMBED != "sincos" or cfg.VIT.CLS_TOKEN:
        yield "VIT.POS_EMBED", "/ VIT.CLS_TOKEN are for downstream models; LDAE uses sin-cos positions, no class token"


def _tokenizer_scope_rules(cfg: CfgNode) -> ConfigProblems:
    """LDAE.TOKENIZER_SCOPE frame shares d per token out over the frames, and needs a patch-wise tokenizer."""
    l, t_patch = cfg.LDAE, cfg.VIT.TEMPORAL_PATCH_SIZE
    if l.TOKENIZER_SCOPE != "frame":
        return
    if l.TOKENIZER == "conv_vae":
        yield "LDAE.TOKENIZER_SCOPE", ("= 'frame' is for the patch-wise tokenizers (pca, ae, vae, pixel); the conv "
                                       "VAE already encodes frame by frame: use 'spacetime'")
    elif l.LATENT_DIM % t_patch:
        yield "LDAE.LATENT_DIM", (f"= {l.LATENT_DIM} is d per token, and LDAE.TOKENIZER_SCOPE frame gives each of "
                                  f"its VIT.TEMPORAL_PATCH_SIZE = {t_patch} frames the same share: use a multiple "
                                  f"of {t_patch}")


register_model("LDAE", LDAE, _ldae_args, _ldae_rules)


def build_model(cfg: CfgNode) -> nn.Module:
    name = cfg.MODEL.MODEL_NAME
    if name not in MODELS:
        raise ValueError(f"MODEL.MODEL_NAME = {name!r} is not a registered model; choose one of "
                         f"{', '.join(sorted(MODELS))}")
    entry = MODELS[name]
    return entry.cls(**entry.args_from_cfg(cfg))
