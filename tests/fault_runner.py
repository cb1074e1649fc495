"""Entry point for fault-injection tests: run_net plus test-only models, in a real subprocess.

``NanAfter`` is a VitClassifier whose loss turns NaN from its N-th training step on (counted in a
buffer, so the count survives checkpoints). Production code has no fault-injection switches.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import videodiff  # noqa: E402,F401
from videodiff.engine.launch import main  # noqa: E402
from videodiff.models.build import classifier_args, register_model  # noqa: E402
from videodiff.models.classifier import VitClassifier  # noqa: E402

NAN_FROM_STEP = int(os.environ.get("NAN_FROM_STEP", "3"))
NAN_STEPS = int(os.environ.get("NAN_STEPS", "1000000"))


class NanAfter(VitClassifier):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def forward(self, clip, label=None):
        out = super().forward(clip, label)
        if self.training and label is not None:
            self.steps += 1
            if NAN_FROM_STEP <= int(self.steps) < NAN_FROM_STEP + NAN_STEPS:
                out["loss"] = out["loss"] * float("nan")
        return out


register_model("NanAfter", NanAfter, classifier_args)

if __name__ == "__main__":
    sys.exit(main(sys.argv[2], sys.argv[3:]))
