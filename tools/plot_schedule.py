#!/usr/bin/env python
"""Draw the supplement's Fig. 1: the data coefficient ᾱ_t over the diffusion steps for several ρ.

Each β_t of the linear DDPM schedule is raised to ρ (DIFFUSION.RHO); ρ < 1 enlarges every β_t, so ᾱ_t is lower at
every step. Besides the PNG, prints per ρ the fraction of steps whose √ᾱ_t < 0.05 (almost no signal left in x_t)
and ᾱ_t at a few steps, so the figure's message can be checked as numbers.

Example:
  python tools/plot_schedule.py --rho 1.0 0.8 0.6 --out output/schedule_rho.png
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import matplotlib  # noqa: E402

matplotlib.use("Agg")  # files only; no display on training machines
import matplotlib.pyplot as plt  # noqa: E402

from videodiff.models.diffusion import GaussianDiffusion  # noqa: E402

REPORT_STEPS = (0, 250, 500, 750, 999)


def plot_schedules(rhos, out_path: str, num_steps: int = 1000, beta_start: float = 1e-4,
                   beta_end: float = 0.02) -> dict:
    """Write the figure to ``out_path``; return {ρ: GaussianDiffusion} for the numbers."""
    diffusions = {rho: GaussianDiffusion(num_steps, beta_start, beta_end, rho=rho) for rho in rhos}
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    for rho, diffusion in diffusions.items():
        ax.plot(diffusion.alphas_cumprod.numpy(), label=f"ρ = {rho:g}")
    ax.set_xlabel("diffusion step t")
    ax.set_ylabel("ᾱ_t")
    ax.set_title("data coefficient ᾱ_t with β_t^ρ")
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    fig.savefig(out_path)
    plt.close(fig)
    return diffusions


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rho", type=float, nargs="+", default=[1.0, 0.8, 0.6])
    parser.add_argument("--steps", type=int, default=1000, help="DIFFUSION.STEPS")
    parser.add_argument("--out", default="output/schedule_rho.png")
    args = parser.parse_args(argv)
    if any(rho <= 0 for rho in args.rho):
        parser.error(f"--rho must be positive, got {args.rho}")
    diffusions = plot_schedules(args.rho, args.out, num_steps=args.steps)
    steps = [t for t in REPORT_STEPS if t < args.steps]
    print("rho  frac(sqrt(abar)<0.05)  " + "  ".join(f"abar[{t}]" for t in steps))
    for rho, d in diffusions.items():
        values = "  ".join(f"{d.alphas_cumprod[t].item():.2e}" for t in steps)
        print(f"{rho:<4g} {d.fraction_of_steps_with_low_signal(0.05):<22.3f} {values}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
