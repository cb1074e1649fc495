"""Seeding: one function, so every process and epoch derives its randomness the same way."""
import random

import numpy as np
import torch


def seed_everything(seed: int, epoch: int = 0, rank: int = 0) -> None:
    """Seed python, numpy and torch from (seed, epoch, rank): reproducible, distinct per rank and epoch."""
    value = (seed * 1_000_003 + epoch * 10_007 + rank) % 2 ** 31
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)
