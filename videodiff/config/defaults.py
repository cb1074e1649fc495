"""The one defaults tree. Every key a YAML file or the command line may set is declared here.

Keys follow SlowFast's names where the concept exists there. A method adds its own sub-tree here
(and nowhere else); models never read this tree, ``videodiff/models/build.py`` maps it to arguments.
"""
from fvcore.common.config import CfgNode

_C = CfgNode()

# ---------------------------------------------------------------- training
_C.TRAIN = CfgNode()
_C.TRAIN.ENABLE = True
_C.TRAIN.DATASET = "kinetics"
# Global batch size in *original* samples (repeated-augmentation copies are not counted).
_C.TRAIN.BATCH_SIZE = 64
# Gradient accumulation: each optimizer step sums the gradients of this many loader batches of BATCH_SIZE /
# (world size x ACCUM_STEPS) samples per rank, so a large global batch fits in less memory. 1 (off): the same
# batch in one pass is faster. The lr rule, schedule, logging and checkpoints count optimizer steps.
_C.TRAIN.ACCUM_STEPS = 1
_C.TRAIN.AUTO_RESUME = True
# Save a checkpoint every this many epochs (the last epoch is always saved).
_C.TRAIN.CHECKPOINT_PERIOD = 1
# Also save a mid-epoch checkpoint every this many iterations (0 = off); resuming skips exactly the
# samples already seen in that epoch.
_C.TRAIN.CHECKPOINT_ITER_PERIOD = 0
# On a NaN / Inf loss or gradient: False stops with the iteration and the last good checkpoint; True skips the step.
_C.TRAIN.SKIP_NONFINITE_LOSS = False
# With SKIP_NONFINITE_LOSS: stop anyway once this many steps in a row were skipped (the weights are then broken).
_C.TRAIN.SKIP_NONFINITE_LIMIT = 10
# Load checkpoints with torch.load(weights_only=True). Set False only for trusted legacy files that
# pickle Python objects: unpickling runs arbitrary code.
_C.TRAIN.CHECKPOINT_WEIGHTS_ONLY = True
# Evaluate on the validation split every this many epochs (0 = never).
_C.TRAIN.EVAL_PERIOD = 1
# Initialise from this checkpoint when there is nothing to resume from.
_C.TRAIN.CHECKPOINT_FILE_PATH = ""
# When initialising from TRAIN.CHECKPOINT_FILE_PATH, drop the checkpoint's classification head (e.g. a
# Kinetics-400 classifier fine-tuned on another label set). Off: a head of another shape is an error.
_C.TRAIN.CHECKPOINT_DROP_HEAD = False
# bf16 autocast on GPU (ignored on CPU, where fp32 is both faster and exact).
_C.TRAIN.MIXED_PRECISION = True
# Autocast dtype on GPU: bfloat16 (no loss scaling needed) or float16 (uses a GradScaler).
_C.TRAIN.AMP_DTYPE = "bfloat16"
# Several processes: "ddp" keeps a full replica of weights, gradients and optimizer state on every rank; "fsdp" shards
# them over the ranks (1/world each; torch's fully_shard, each transformer block a unit) for models whose replica does
# not fit, such as ViT-H or the 32x280 fine-tune. Same checkpoints and numbers (engine/fsdp.py); no MODEL_EMA.
_C.TRAIN.PARALLEL = "ddp"
# Build the model, count parameters and FLOPs, run one forward/backward on a random batch of 1, exit.
_C.TRAIN.DRY_RUN = False

# ---------------------------------------------------------------- testing
_C.TEST = CfgNode()
_C.TEST.ENABLE = False
_C.TEST.DATASET = "kinetics"
_C.TEST.BATCH_SIZE = 64
# Uniformly spaced temporal windows per video x spatial crops (left/centre/right) per window.
_C.TEST.NUM_ENSEMBLE_VIEWS = 1
_C.TEST.NUM_SPATIAL_CROPS = 1
# Evaluate this checkpoint; empty = the newest one in OUTPUT_DIR/checkpoints.
_C.TEST.CHECKPOINT_FILE_PATH = ""
# Save per-video scores of the final test (softmax averaged over views, labels, views found) to this
# file with torch.save; a relative path is inside OUTPUT_DIR. Empty = do not save.
_C.TEST.SAVE_RESULTS_PATH = ""

# ---------------------------------------------------------------- data
_C.DATA = CfgNode()
_C.DATA.PATH_TO_DATA_DIR = ""
# Prepended to every path read from a CSV file.
_C.DATA.PATH_PREFIX = ""
_C.DATA.PATH_LABEL_SEPARATOR = " "
_C.DATA.NUM_FRAMES = 16
_C.DATA.SAMPLING_RATE = 4
_C.DATA.TRAIN_CROP_SIZE = 224
_C.DATA.TEST_CROP_SIZE = 224
# "decord" (default), "pyav" or "torchcodec" (optional; needs FFmpeg's shared libraries): videodiff/data/decoding.py.
_C.DATA.DECODING_BACKEND = "decord"
# Sampling clock (videodiff/data/sampling.py): 0 = step over the video's own frames; f > 0 = ticks 1/f seconds
# apart in presentation time (same seconds per clip at any source rate; even spacing on variable frame rate).
_C.DATA.TARGET_FPS = 0.0
_C.DATA.MEAN = [0.45, 0.45, 0.45]
_C.DATA.STD = [0.225, 0.225, 0.225]
# RandomResizedCrop area and aspect-ratio ranges.
_C.DATA.TRAIN_JITTER_SCALES_RELATIVE = [0.08, 1.0]
_C.DATA.TRAIN_JITTER_ASPECT_RELATIVE = [0.75, 1.3333]
_C.DATA.RANDOM_FLIP = True
# Bad media (videodiff/data/bad_media.py): a train item whose file cannot be read tries up to this many other
# random samples; the skipped files go to OUTPUT_DIR/skipped_videos.txt. Val/test leave such videos out.
_C.DATA.MAX_RETRIES = 10
# Stop with an error when more than this fraction of a split's files cannot be read.
_C.DATA.MAX_FAILED_FRACTION = 0.05
# Few-label fine-tuning / probing (videodiff/data/few_labels.py): train on this many labelled entries per class,
# drawn from the train list by LABELS_SEED (not RNG_SEED: other seeds keep the same labels); 0 = every label.
# Val/test are never subsampled. Models that train without labels (DiffMAE, MAE, unconditional l-DAE) refuse it.
_C.DATA.LABELS_PER_CLASS = 0
_C.DATA.LABELS_SEED = 0

_C.DATA_LOADER = CfgNode()
_C.DATA_LOADER.NUM_WORKERS = 4
# Page-locked host batches (used only when CUDA is available): faster, asynchronous host-to-device copies.
_C.DATA_LOADER.PIN_MEMORY = True
# Keep worker processes alive between epochs (and validation runs): re-forking them costs start-up time every epoch.
# False frees their memory between epochs. Ignored with NUM_WORKERS 0.
_C.DATA_LOADER.PERSISTENT_WORKERS = True
# Batches each worker prepares ahead (torch's default, 2): each costs one batch of shared memory per worker; raise it
# when data time is spiky. Ignored with NUM_WORKERS 0.
_C.DATA_LOADER.PREFETCH_FACTOR = 2
# Workers hand over uint8 clips, normalised by DATA.MEAN / STD on the training device (videodiff/data/normalize.py):
# 4x fewer bytes through shared memory, pinning and the copy to the device. Identical clips to False (workers
# normalise, float32) except after AUG.RAND_AUG, whose float output is rounded to whole grey levels (<= 0.5 / 255).
# Without a GPU the main process normalises on the CPU, about what the workers save (BENCHMARKS.md, uint8 hand-over).
_C.DATA_LOADER.UINT8_HANDOVER = True

# ---------------------------------------------------------------- augmentation
_C.AUG = CfgNode()
# Repeated augmentation: clips drawn per decoded video (their copies share one decode).
_C.AUG.NUM_SAMPLE = 1
# RandAugment in timm's notation, e.g. "rand-m9-n2-mstd0.5" (magnitude 9 of 10, 2 ops, magnitude std 0.5);
# "" = off. The same ops hit every frame of a clip (videodiff/data/randaug.py).
_C.AUG.RAND_AUG = ""

# ---------------------------------------------------------------- optimisation
_C.SOLVER = CfgNode()
_C.SOLVER.OPTIMIZING_METHOD = "adamw"
# lr = BASE_LR x global batch (original samples) / 256.
_C.SOLVER.BASE_LR = 1.5e-4
_C.SOLVER.LR_POLICY = "cosine"
_C.SOLVER.WARMUP_EPOCHS = 0.0
# Absolute lr at the end of the cosine (not scaled by the batch size).
_C.SOLVER.COSINE_END_LR = 0.0
_C.SOLVER.MAX_EPOCH = 100
_C.SOLVER.WEIGHT_DECAY = 0.05
_C.SOLVER.BETAS = [0.9, 0.95]
_C.SOLVER.MOMENTUM = 0.9
# LARS only (OPTIMIZING_METHOD lars): a weight matrix steps lr x LARS_TRUST_COEFF x ||w|| / ||g|| along g;
# 0.001 as in MAE's LARS (facebookresearch/mae util/lars.py).
_C.SOLVER.LARS_TRUST_COEFF = 0.001
# Max gradient norm; 0 disables clipping.
_C.SOLVER.CLIP_GRAD = 0.0
# Layer-wise lr decay (1.0 = off).
_C.SOLVER.LAYER_DECAY = 1.0
# AdamW's fused kernel (one launch for every parameter): auto uses it on CUDA, where it is faster, and logs why
# not elsewhere; always / never force it (always falls back, logging why, where torch lacks the kernel).
_C.SOLVER.FUSED = "auto"

# ---------------------------------------------------------------- model
_C.MODEL = CfgNode()
_C.MODEL.MODEL_NAME = "VitClassifier"
_C.MODEL.NUM_CLASSES = 400
# Dropout before the classification layer.
_C.MODEL.DROPOUT_RATE = 0.0
_C.MODEL.LABEL_SMOOTHING = 0.0
# Activation checkpointing: each transformer block keeps only its input and recomputes the rest in backward,
# trading about a third more compute for much less activation memory. Off by default: it only pays when memory,
# not speed, is the limit.
_C.MODEL.ACT_CHECKPOINT = False
# torch.compile the model (after DDP wrapping, as torch recommends). Off by default: compiling takes minutes at
# start-up and only pays back on long GPU runs; where it is unsupported the run logs why and stays eager.
_C.MODEL.COMPILE = False
# torch.compile's mode: default, reduce-overhead, max-autotune or max-autotune-no-cudagraphs.
_C.MODEL.COMPILE_MODE = "default"

_C.VIT = CfgNode()
_C.VIT.PATCH_SIZE = 16
_C.VIT.TEMPORAL_PATCH_SIZE = 2
_C.VIT.IN_CHANNELS = 3
_C.VIT.EMBED_DIM = 768
_C.VIT.DEPTH = 12
_C.VIT.NUM_HEADS = 12
_C.VIT.MLP_RATIO = 4.0
_C.VIT.QKV_BIAS = True
_C.VIT.DROP_PATH_RATE = 0.0
# "sincos" (fixed, regenerated for any clip size; our pretraining) or "learned" (absolute, one table for the
# train clip's token grid; imported checkpoints, see tools/convert_checkpoint.py). Downstream models only.
_C.VIT.POS_EMBED = "sincos"
# Prepend a class token (imported MAE / MAE-ST checkpoints have one); classification still pools patch tokens.
_C.VIT.CLS_TOKEN = False
# LayerNorm eps of the encoder and head: 1e-6 reproduces MAE / MAE-ST / VideoMAE weights exactly.
_C.VIT.NORM_EPS = 1e-5
# The encoder ends with a LayerNorm (MAE, DiffMAE). A linear probe of an l-DAE encoder (the first half of a DiT,
# folded at a fixed t) sets False: its features are pooled straight into the BatchNorm (l-DAE appendix).
_C.VIT.FINAL_NORM = True
# A frozen stem before the patch embedding: a conv VAE tokenizer file (tools/fit_tokenizer.py --kind conv_vae). Set it
# to probe or fine-tune an l-DAE that read conv VAE latents (l-DAE Table 1): its encoder is a ViT on that latent map,
# which cannot be folded into a linear patch embedding. "" = the ViT reads pixels.
_C.VIT.STEM_FILE = ""

# ---------------------------------------------------------------- masked pretraining (MAE, DiffMAE)
_C.MASK = CfgNode()
# "random" (over all T'·H'·W' tokens), "tube" (one spatial mask for every t) or "center" (centred block).
_C.MASK.TYPE = "random"
# Fraction of tokens masked: 0.9 for video, 0.75 for images.
_C.MASK.RATIO = 0.9

_C.DIFFUSION = CfgNode()
_C.DIFFUSION.STEPS = 1000
_C.DIFFUSION.BETA_START = 1e-4
_C.DIFFUSION.BETA_END = 0.02
# Each beta_t is raised to the power RHO (DiffMAE supplement A.1). Public re-implementations use 0.8; it
# leaves ~55% of the steps with sqrt(alpha_bar_t) < 0.05, i.e. almost pure noise (see diffusion.py). To be measured.
_C.DIFFUSION.RHO = 0.8
# "linear" (DDPM) or "cosine".
_C.DIFFUSION.SCHEDULE = "linear"

_C.DIFFMAE = CfgNode()
# "joint" (self-attention over encoder + noisy tokens), "cross" or "cross_self" (top-down to encoder blocks).
_C.DIFFMAE.DECODER_TYPE = "cross_self"
_C.DIFFMAE.DECODER_DEPTH = 8
_C.DIFFMAE.DECODER_EMBED_DIM = 512
_C.DIFFMAE.DECODER_NUM_HEADS = 16
# Which frame of each t_patch-frame token is the target (and the decoder's noisy input).
_C.DIFFMAE.TARGET_SLICE = 0
# Off: with per-patch normalised targets, generation can only return normalised patches.
_C.DIFFMAE.NORM_PIX_LOSS = False
# CLIP-aided DiffMAE (videodiff/models/clip_target.py): a local state-dict file of a timm CLIP ViT image encoder,
# whose patch features of the clip's middle frame become an extra target of the masked tokens. "" = off.
_C.DIFFMAE.CLIP_CHECKPOINT = ""
# Weight of that CLIP feature loss, added to the pixel loss.
_C.DIFFMAE.CLIP_LOSS_WEIGHT = 1.0
# The CLIP ViT's MLP activation: "quick_gelu" for OpenAI's weights, "gelu" for OpenCLIP's.
_C.DIFFMAE.CLIP_ACT = "gelu"

_C.MAE = CfgNode()
# The MAE baseline reuses DIFFMAE.DECODER_DEPTH / DECODER_EMBED_DIM / DECODER_NUM_HEADS, so both run at
# identical dimensions.
_C.MAE.NORM_PIX_LOSS = True

# l-DAE (Chen et al., "Deconstructing Denoising Diffusion Models for Self-Supervised Learning"; models/ldae.py).
# The DiT is sized by VIT.* (its full depth); patches by VIT.PATCH_SIZE / TEMPORAL_PATCH_SIZE. Every choice the paper
# leaves open is a key here, with the default the paper's final l-DAE uses or, where it is silent, ours (said so).
_C.LDAE = CfgNode()
# Tokenizer (paper Sec. 4.2, models/tokenizers.py): "pca" (fit with tools/fit_pca.py), "ae" / "vae" (linear
# patch AE / VAE, fit with tools/fit_tokenizer.py --kind ae|vae), "pixel" (the identity on patches, Fig. 4: nothing
# to fit; d = D, chosen through DATA.TRAIN_CROP_SIZE and VIT.PATCH_SIZE), "conv_vae" (Table 1 and Table 2's first
# column: models/conv_vae.py, sized by CONV_VAE.*, fit with tools/fit_tokenizer.py --kind conv_vae).
_C.LDAE.TOKENIZER = "pca"
# The fitted tokenizer file (tools/fit_pca.py / fit_tokenizer.py write it; a missing or mismatched file stops the run
# naming it). One PCA file serves every d; an AE / VAE file is fitted for one d. Not read for "pixel".
_C.LDAE.TOKENIZER_FILE = ""
# Video (VIT.TEMPORAL_PATCH_SIZE > 1, models/per_frame.py): "spacetime" fits and applies the tokenizer on whole
# t_patch x p x p x C tokens; "frame" fits it on single-frame p x p x C patches (tools/fit_pca.py writes a (1, p, C)
# file for this scope) and applies it to each frame of a token, LATENT_DIM / t_patch components per frame. Which is
# better is an open question (the paper has no video); "spacetime" is the default as the image recipe read literally
# for spacetime tokens, whose basis can use the redundancy between a token's frames. Images: both are the same.
_C.LDAE.TOKENIZER_SCOPE = "spacetime"
# Latent dimension d per token (paper: 16 or 32 best for 16x16x3 patches). "pixel" requires d = D = t_patch x p^2 x C.
_C.LDAE.LATENT_DIM = 16
# Whiten the PCA latents (divide each component by sqrt(eigenvalue)). The paper does not say. Ours: True, because
# its schedules (gamma^2 + sigma^2 = 1, sigma up to sqrt(2)) assume unit-variance latents, as DiT's VAE latents are
# scaled to be; unwhitened, sigma = sqrt(2) hardly touches the first components. Measured both (BENCHMARKS.md).
# Only "pca" reads it. The patch AE / VAE always divide each latent component by its RMS on the fit patches (the
# same unit-variance aim; an AE latent has no scale of its own), and "pixel" uses the normalised pixels as they are.
_C.LDAE.PCA_WHITEN = True
# Noise schedule (models/noise_levels.py): "ddpm", "linear_gamma2", "linear_sigma" (final l-DAE) or "single".
_C.LDAE.SCHEDULE = "linear_sigma"
_C.LDAE.STEPS = 1000
# linear_sigma: sigma_t from 0 to SIGMA_MAX (paper: sqrt(2)); single: sigma = SINGLE_SIGMA (paper: sqrt(1/3)).
_C.LDAE.SIGMA_MAX = 1.4142135623730951
_C.LDAE.SINGLE_SIGMA = 0.5773502691896257
# What the network predicts: "eps" (noise, DDPM), "z0" (the clean latent) or "image" (the original image, with the
# PCA-weighted loss: weight 1 on the first d components, RESIDUAL_WEIGHT on the rest).
_C.LDAE.PREDICT = "image"
# Where the network reads and writes: "latent" (tokens of the latent space) or "image" (through the inverse PCA).
_C.LDAE.INPUT_SPACE = "image"
_C.LDAE.OUTPUT_SPACE = "image"
# lambda_t: "auto" is the paper's choice per line (1 for eps; gamma^2; 1 / (1 + sigma^2) once gamma = 1).
_C.LDAE.LOSS_WEIGHT = "auto"
_C.LDAE.RESIDUAL_WEIGHT = 0.1
# The first ENCODER_DEPTH DiT blocks are the encoder that is probed / fine-tuned (0: half, the paper's default).
_C.LDAE.ENCODER_DEPTH = 0
# Width of the t-embedding MLP and adaLN input (0: VIT.EMBED_DIM / 4, the paper's appendix).
_C.LDAE.COND_DIM = 0
# Class conditioning (only Table 1's first line; the run then uses labels and is not self-supervised).
_C.LDAE.CLASS_COND = False
# With CLASS_COND: the probability that a training label is replaced by DiT's null class (DiT's 0.1, which its
# classifier-free guidance needs). The probe folds the null class, so probing uses no label (the paper is silent).
_C.LDAE.CLASS_DROPOUT = 0.1
# Probing / fine-tuning an l-DAE checkpoint: the fixed step t whose conditioning is folded into a plain ViT (clean input).
_C.LDAE.PROBE_T = 10

# The convolutional VAE tokenizer (models/conv_vae.py: LDM's KL autoencoder, scaled down) and how
# tools/fit_tokenizer.py --kind conv_vae trains it. Its latent map is STRIDE times smaller than the image; DiT reads
# each (VIT.PATCH_SIZE / STRIDE)^2 cell of it as one token, so LDAE.LATENT_DIM = t_patch x (p / STRIDE)^2 x
# LATENT_CHANNELS (16 for LDM's c = 4 with 16x16 patches; paper footnote 2).
_C.CONV_VAE = CfgNode()
_C.CONV_VAE.LATENT_CHANNELS = 4
_C.CONV_VAE.STRIDE = 8
# Ours, smaller than LDM's f8 (width 128, two ResNet blocks per level, attention in the middle): see conv_vae.py.
_C.CONV_VAE.WIDTH = 64
_C.CONV_VAE.NUM_RES_BLOCKS = 1
# Weight of KL[f(x) | N] against ||x - g(f(x))||^2, both summed over an image. LDM's KL-f8 value 1e-6: the paper's
# Table 1 tokenizers are LDM's VAE with losses removed, so its weight stays (the patch VAE's formula weight 1 would
# collapse most of a conv latent to the prior).
_C.CONV_VAE.KL_WEIGHT = 1.0e-6
# Perceptual loss (LPIPS-style distance between VGG16 features; Table 1's first two lines). Needs PERCEPTUAL_WEIGHT > 0
# and a local torchvision VGG16 state dict in PERCEPTUAL_CHECKPOINT: nothing is downloaded, a missing file stops the
# fit naming it. (The VGG is ImageNet-supervised, which is why the paper drops this loss.)
_C.CONV_VAE.PERCEPTUAL_WEIGHT = 0.0
_C.CONV_VAE.PERCEPTUAL_CHECKPOINT = ""
# Adversarial loss (a PatchGAN discriminator, hinge loss, VQGAN's adaptive weight x ADVERSARIAL_WEIGHT; LDM: 0.5),
# switched on after ADVERSARIAL_START fit steps (LDM: 50001 of its much longer fit). 0 = off (Table 1 from line 4).
_C.CONV_VAE.ADVERSARIAL_WEIGHT = 0.0
_C.CONV_VAE.ADVERSARIAL_START = 0

# ---------------------------------------------------------------- fine-tuning regularisers
# Mixup / CutMix on training batches (timm's Mixup, "batch" mode), soft targets with label smoothing.
_C.MIXUP = CfgNode()
_C.MIXUP.ENABLE = False
# Beta(ALPHA, ALPHA) mixing weight for mixup; 0 disables mixup.
_C.MIXUP.ALPHA = 0.8
# Beta(CUTMIX_ALPHA, CUTMIX_ALPHA) area for cutmix (one box, same in every frame); 0 disables cutmix.
_C.MIXUP.CUTMIX_ALPHA = 1.0
# Probability of mixing a batch at all, and of choosing cutmix over mixup when both are on.
_C.MIXUP.PROB = 1.0
_C.MIXUP.SWITCH_PROB = 0.5
_C.MIXUP.LABEL_SMOOTH_VALUE = 0.1

# Exponential moving average of the weights (timm's ModelEmaV3), kept in checkpoints; when on, validation also
# reports the EMA model ("val_ema") and the final test evaluates the EMA weights.
_C.MODEL_EMA = CfgNode()
_C.MODEL_EMA.ENABLE = False
_C.MODEL_EMA.DECAY = 0.9999

# ---------------------------------------------------------------- run
_C.OUTPUT_DIR = "./output"
_C.RNG_SEED = 0
# Log a json_stats line and a progress line every LOG_PERIOD iterations.
_C.LOG_PERIOD = 10

_C.TENSORBOARD = CfgNode()
_C.TENSORBOARD.ENABLE = True


def get_defaults() -> CfgNode:
    """A fresh, mutable copy of the defaults tree."""
    return _C.clone()
