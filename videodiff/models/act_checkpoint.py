"""Activation checkpointing of transformer blocks (MODEL.ACT_CHECKPOINT).

A checkpointed block keeps only its inputs during the forward pass and recomputes everything inside it during the
backward, so activation memory grows with the number of blocks instead of with everything inside each one, for
about one extra forward pass of compute. torch's non-reentrant checkpoint restores the random state for the
recomputation, so dropout and drop path draw the same masks twice and the gradients are those of the plain block.
"""
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def run_block(block: nn.Module, *inputs: torch.Tensor, act_checkpoint: bool = False) -> torch.Tensor:
    """``block(*inputs)``, checkpointed when ``act_checkpoint`` is on and a training backward will follow (in eval
    or under ``no_grad`` there is nothing to save, so the block runs plainly)."""
    if act_checkpoint and block.training and torch.is_grad_enabled():
        return checkpoint(block, *inputs, use_reentrant=False)
    return block(*inputs)
