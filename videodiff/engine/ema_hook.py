"""Exponential moving average of the model's weights, as a trainer hook around timm's ``ModelEmaV3``.

The average is updated after every optimizer step, saved in checkpoints (``hooks.EmaHook.module``), evaluated
on the validation split as ``"split": "val_ema"`` by a second ``EvalHook`` over ``EmaHook.module`` (``engine/build.py``),
and used by the final test when MODEL_EMA.ENABLE is on.
"""
from typing import Dict, Optional

import torch
from timm.utils import ModelEmaV3

from videodiff.engine.hooks import Hook
from videodiff.state_dicts import CheckpointError, unwrap


class EmaHook(Hook):
    def __init__(self, decay: float):
        self.decay = decay
        self.ema: Optional[ModelEmaV3] = None
        self._restored: Optional[Dict[str, torch.Tensor]] = None  # from a resumed checkpoint, before the EMA exists

    def before_train(self, trainer):
        # Built here, after restore(): a fine-tuning run averages from the pretrained weights onwards.
        self.ema = ModelEmaV3(unwrap(trainer.model), decay=self.decay)
        if self._restored is not None:
            self.ema.module.load_state_dict(self._restored)
            self._restored = None

    def after_step(self, trainer, metrics):
        if metrics:  # no metrics: a skipped (non-finite) step left the weights unchanged
            self.ema.update(unwrap(trainer.model))

    @property
    def module(self) -> torch.nn.Module:
        """The averaged model (exists from ``before_train`` on)."""
        return self.ema.module

    def state_dict(self):
        return {"module": self.ema.module.state_dict() if self.ema is not None else self._restored}

    def load_state_dict(self, state):
        if self.ema is None:
            self._restored = state["module"]
        else:
            self.ema.module.load_state_dict(state["module"])


def ema_weights(checkpoint: dict, path: str) -> Dict[str, torch.Tensor]:
    """The EMA model's state dict saved in a training checkpoint (for testing with MODEL_EMA.ENABLE)."""
    state = checkpoint.get("hooks", {}).get(EmaHook.__name__, {}).get("module")
    if not state:
        raise CheckpointError(f"checkpoint {path} holds no EMA weights (it was not written by a run with "
                              f"MODEL_EMA.ENABLE True); test the plain weights with MODEL_EMA.ENABLE False")
    return state
