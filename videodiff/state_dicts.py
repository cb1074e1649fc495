"""What models and the engine both need about saved weights: the error for a checkpoint that is unreadable or does
not fit, and the bare model behind a wrapper. Neutral ground, so that models never import the engine."""
from torch import nn


class CheckpointError(RuntimeError):
    """A checkpoint is unreadable or does not fit the model; the message names the file."""


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside torch.compile's wrapper (``_orig_mod``, whose keys it would prefix) and DDP (or any
    wrapper exposing ``.module``)."""
    model = getattr(model, "_orig_mod", model)
    return model.module if hasattr(model, "module") else model
