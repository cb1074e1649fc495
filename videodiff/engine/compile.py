"""torch.compile for training (MODEL.COMPILE), or eager with one logged line saying why not.

The model is compiled after DDP wrapping, as torch recommends (DDP's bucket boundaries then split the graph, so
gradient all-reduces still overlap the backward). Compilation is lazy: ``torch.compile`` only wraps the module, and
the graph is built at the first step. So the known blockers are checked first (a Python that dynamo does not run on,
inductor without a C++ compiler on the CPU or without Triton on the GPU); any error while wrapping is caught too.

The wrapper's own state dict prefixes every key with ``_orig_mod.``; checkpoints are written from
``state_dicts.unwrap(model)``, which looks through it, so saved keys stay those of the bare model.
"""
import os
import shutil

import torch
from torch import nn

from videodiff.engine.logging import logger

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # MODEL.COMPILE_MODE


def compile_unsupported(device: torch.device, backend: str = "inductor") -> str:
    """Why ``torch.compile`` cannot run here with ``backend`` on ``device``, or "" when nothing known stops it."""
    try:
        from torch._dynamo.eval_frame import check_if_dynamo_supported
        check_if_dynamo_supported()  # raises naming the reason (e.g. a Python version dynamo does not support)
    except Exception as e:  # noqa: BLE001 - any failure here means dynamo cannot run
        return str(e).splitlines()[0] if str(e) else type(e).__name__
    if backend != "inductor":
        return ""
    if device.type == "cpu" and not any(shutil.which(c) for c in (os.environ.get("CXX", ""), "g++", "clang++", "c++")
                                        if c):
        return "inductor needs a C++ compiler for CPU code and none was found (set CXX or install g++)"
    if device.type == "cuda":
        from torch.utils._triton import has_triton
        if not has_triton():
            return "inductor needs Triton for GPU code and it is not installed for this GPU"
    return ""


def compile_model(model: nn.Module, device: torch.device, mode: str = "default",
                  backend: str = "inductor") -> nn.Module:
    """``torch.compile(model)``, or ``model`` itself (eager) with one logged line where that is unsupported."""
    reason = compile_unsupported(device, backend)
    if not reason:
        try:
            compiled = torch.compile(model, mode=None if mode == "default" else mode, backend=backend)
        except Exception as e:  # noqa: BLE001 - whatever stops the wrapping, training still runs eagerly
            reason = f"torch.compile raised {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        else:
            logger.info(f"MODEL.COMPILE: compiling with {backend} (mode {mode}); the first steps are slow")
            return compiled
    logger.warning(f"MODEL.COMPILE True but the model runs eagerly: {reason}")
    return model
