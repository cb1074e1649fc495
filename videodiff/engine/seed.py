"""Seeding: one function, so every process and epoch derives its randomness the same way."""
import ast
import random

import numpy as np
import torch


def seed_everything(seed: int, epoch: int = 0, rank: int = 0) -> None:
    """Seed python, numpy and torch from (seed, epoch, rank): reproducible, distinct per rank and epoch."""
    value = (seed * 1_000_003 + epoch * 10_007 + rank) % 2 ** 31
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


def rng_state() -> dict:
    """This process's generator states, in types that load with ``weights_only=True``."""
    _, keys, pos, has_gauss, cached = np.random.get_state()  # numpy: timm's Mixup draws from it
    state = {"torch": torch.get_rng_state(), "python": repr(random.getstate()),
             "numpy": [torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Inverse of ``rng_state`` (a resumed mid-epoch run continues the same random stream)."""
    torch.set_rng_state(state["torch"])
    random.setstate(ast.literal_eval(state["python"]))
    if "numpy" in state:
        keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
