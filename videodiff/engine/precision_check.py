"""bf16 / SDPA correctness against fp32 (``tools/check_precision.py``; the first part of ``tools/gpu_check.sh``).

Two checks, each a forward AND a backward with one fixed upstream gradient, compared by relative error
``||x - ref|| / ||ref||`` (Frobenius, over the whole tensor):

1. ``scaled_dot_product_attention`` of every backend that runs here (flash, memory-efficient, cuDNN, math; on the
   CPU the one CPU kernel), in fp32 and in bf16, against explicit ``softmax(q k^T / sqrt(d)) v`` in float64 on the
   same (bf16-rounded, for the bf16 case) inputs: output and the gradients of q, k, v.
2. Our ViT blocks (``VisionTransformer.blocks``: timm's Block on SDPA) in bf16 autocast against the same blocks in
   strict fp32 (TF32 off): output, input gradient and the gradients of all parameters together.

Tolerances (PASS / FAIL), stated here once:
  fp32 SDPA vs float64          1e-4   fp32 rounds at ~6e-8 per operation; measured 2e-7 to 4e-7 on the CPU
  bf16 SDPA vs float64          2e-2   bf16 keeps 8 significant bits (rounding up to 2^-9 = 0.2%), and flash kernels
                                       also round the probabilities to bf16 before P·V; measured 2e-3 to 4e-3 (CPU)
  bf16 autocast blocks vs fp32  5e-2   every linear layer rounds its inputs and weights to bf16, and the errors add up
                                       through the residual stream and the LayerNorm gradients; measured 3e-3 to 5e-3
                                       for 2-4 blocks on the CPU. The margin is for deeper stacks and GPU kernels (not
                                       measured yet); a broken kernel (wrong scale, layout or mask) errs by order 1
"""
from contextlib import nullcontext
from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from videodiff.models.vit import VisionTransformer

TOLERANCE = {"fp32_sdpa": 1e-4, "bf16_sdpa": 2e-2, "bf16_blocks": 5e-2}


@dataclass(frozen=True)
class CheckResult:
    name: str
    errors: dict            # what -> relative error
    tolerance: float
    note: str = ""

    @property
    def passed(self) -> bool:
        return all(e <= self.tolerance for e in self.errors.values())

    def line(self) -> str:
        errs = ", ".join(f"{k} {v:.2e}" for k, v in self.errors.items())
        verdict = "PASS" if self.passed else "FAIL"
        return f"{verdict} {self.name}: relative error {errs} (tolerance {self.tolerance:g}){self.note}"


def relative_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.double()
    return float((x.double() - ref).norm() / ref.norm().clamp_min(1e-30))


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v, written out, in the inputs' dtype."""
    scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
    return scores.softmax(dim=-1) @ v


def forward_backward(fn, inputs: List[torch.Tensor], grad_out: torch.Tensor) -> List[torch.Tensor]:
    """[output, grad of each input] of ``fn(*inputs)`` for the upstream gradient ``grad_out``."""
    leaves = [x.detach().requires_grad_(True) for x in inputs]
    out = fn(*leaves)
    grads = torch.autograd.grad(out, leaves, grad_out.to(out.dtype))
    return [out.detach()] + [g.detach() for g in grads]


def sdpa_backends(device: torch.device) -> list:
    """(name, sdpa_kernel context or None) for each backend to try; on the CPU the default dispatch only."""
    if device.type != "cuda":
        return [("cpu", None)]
    from torch.nn.attention import SDPBackend
    return [(b.name.lower(), b) for b in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                                          SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH)]


def check_sdpa(device: torch.device, batch: int, heads: int, tokens: int, head_dim: int) -> List[CheckResult]:
    from torch.nn.attention import sdpa_kernel

    gen = torch.Generator(device="cpu").manual_seed(0)
    q, k, v, grad = (torch.randn(batch, heads, tokens, head_dim, generator=gen).to(device) for _ in range(4))
    results = []
    for dtype, key in ((torch.float32, "fp32_sdpa"), (torch.bfloat16, "bf16_sdpa")):
        inputs = [x.to(dtype) for x in (q, k, v)]
        ref = forward_backward(reference_attention, [x.double() for x in inputs], grad.double())
        for name, backend in sdpa_backends(device):
            try:
                with sdpa_kernel(backend) if backend is not None else nullcontext():
                    got = forward_backward(F.scaled_dot_product_attention, inputs, grad)
            except RuntimeError as e:  # this backend does not take these inputs on this device
                print(f"skip {key} {name}: {str(e).splitlines()[0][:120]}")
                continue
            errors = dict(zip(("out", "dq", "dk", "dv"), (relative_error(g, r) for g, r in zip(got, ref))))
            results.append(CheckResult(f"{key} {name}", errors, TOLERANCE[key]))
    return results


def block_outputs(blocks: nn.Module, x: torch.Tensor, grad: torch.Tensor, device: torch.device,
                  dtype: Optional[torch.dtype]) -> List[torch.Tensor]:
    """[output, input grad, all parameter grads flattened] of the blocks, under autocast to ``dtype`` if given."""
    blocks.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_(True)
    with torch.autocast(device.type, dtype=dtype) if dtype else nullcontext():
        out = blocks(x)
    out.float().backward(grad)
    params = torch.cat([p.grad.flatten().float() for p in blocks.parameters()])
    return [out.detach().float(), x.grad.detach(), params]


def check_blocks(device: torch.device, depth: int, dim: int, heads: int, tokens: int, batch: int) -> CheckResult:
    torch.manual_seed(0)
    with device:
        blocks = nn.Sequential(*VisionTransformer(embed_dim=dim, depth=depth, num_heads=heads).blocks)
        x, grad = torch.randn(batch, tokens, dim), torch.randn(batch, tokens, dim)
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        ref = block_outputs(blocks, x, grad, device, None)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    got = block_outputs(blocks, x, grad, device, torch.bfloat16)
    errors = dict(zip(("out", "dx", "dparams"), (relative_error(g, r) for g, r in zip(got, ref))))
    note = f" [{depth} blocks x {dim} wide, {heads} heads, {batch} x {tokens} tokens]"
    return CheckResult("bf16_blocks autocast vs fp32", errors, TOLERANCE["bf16_blocks"], note)


def run_precision_check(device: torch.device, depth: int, dim: int, heads: int, tokens: int, batch: int) -> bool:
    """Print one PASS / FAIL line per check and ``precision_check=PASS`` or ``=FAIL`` last; True when all pass."""
    print(f"precision check on {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, "
          f"torch {torch.__version__}")
    results = check_sdpa(device, batch, heads, tokens, dim // heads)
    results.append(check_blocks(device, depth, dim, heads, tokens, batch))
    for result in results:
        print(result.line())
    passed = bool(results) and all(r.passed for r in results)
    print(f"precision_check={'PASS' if passed else 'FAIL'}")
    return passed
