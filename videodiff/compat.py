"""The one place where videodiff papers over a broken dependency.

pytorchvideo 0.1.5 (its latest release) does ``import torchvision.transforms.functional_tensor``;
torchvision 0.17 renamed that private module to ``_functional_tensor`` and later releases removed the
old name. Registering the new module under the old name before pytorchvideo is imported lets its
transforms (which only call ``rgb_to_grayscale`` from there) work unchanged. ``videodiff/__init__.py``
calls this, so importing anything from videodiff first is enough.
"""
import importlib
import sys

_OLD = "torchvision.transforms.functional_tensor"
_NEW = "torchvision.transforms._functional_tensor"


def patch_torchvision_for_pytorchvideo() -> None:
    if _OLD in sys.modules:
        return
    try:
        importlib.import_module(_OLD)
    except ImportError:
        sys.modules[_OLD] = importlib.import_module(_NEW)
