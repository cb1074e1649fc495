"""videodiff: denoising pretraining (DiffMAE, l-DAE) of Vision Transformers on video and images."""
from videodiff.compat import patch_torchvision_for_pytorchvideo

# Must run before any pytorchvideo import anywhere in the process (see compat.py).
patch_torchvision_for_pytorchvideo()

__version__ = "0.1.0"
