import os
import sys

import pytest
import torch

from cli_helpers import ROOT
from videodiff.models.diffusion import GaussianDiffusion, get_beta_schedule


def ddpm_alphas_cumprod(num_steps=1000):
    return torch.cumprod(1.0 - torch.linspace(1e-4, 0.02, num_steps, dtype=torch.float64), dim=0)


@pytest.fixture(scope="module")
def diffusions():
    return {rho: GaussianDiffusion(rho=rho) for rho in (1.0, 0.8, 0.6)}


def test_rho_one_reproduces_ddpm_alphas_cumprod_exactly(diffusions):
    d = diffusions[1.0]
    assert d.alphas_cumprod.dtype == torch.float64
    assert torch.equal(d.alphas_cumprod, ddpm_alphas_cumprod())
    assert d.alphas_cumprod[-1].item() == pytest.approx(4.0358e-5, rel=1e-4)


def test_smaller_rho_gives_lower_alphas_cumprod_at_every_step(diffusions):
    a10, a08, a06 = (diffusions[r].alphas_cumprod for r in (1.0, 0.8, 0.6))
    assert bool((a08 < a10).all()) and bool((a06 < a08).all())


def test_low_signal_fractions_match_documented_numbers(diffusions):
    measured = {rho: d.fraction_of_steps_with_low_signal(0.05) for rho, d in diffusions.items()}
    assert measured == {1.0: pytest.approx(0.231), 0.8: pytest.approx(0.547), 0.6: pytest.approx(0.769)}


def test_schedule_arrays_are_consistent(diffusions):
    d = diffusions[0.8]
    assert torch.allclose(d.betas, torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64) ** 0.8)
    assert d.alphas_cumprod_prev[0] == 1.0
    assert torch.equal(d.alphas_cumprod_prev[1:], d.alphas_cumprod[:-1])
    assert d.posterior_variance[0] == 0.0
    assert torch.isfinite(d.posterior_log_variance_clipped).all()


def test_cosine_schedule_is_valid_and_decreasing():
    d = GaussianDiffusion(num_steps=100, schedule="cosine")
    assert bool((d.betas > 0).all() and (d.betas < 1).all())
    assert bool((d.alphas_cumprod[1:] < d.alphas_cumprod[:-1]).all())


@pytest.mark.parametrize("kwargs, word", [
    (dict(rho=0.0), "rho"), (dict(rho=-1.0), "rho"), (dict(num_steps=0), "num_steps"),
    (dict(beta_end=1.5), "beta_end"), (dict(beta_start=0.0), "beta_start"),
    (dict(schedule="quadratic"), "quadratic"),
])
def test_bad_arguments_raise_with_the_offending_value(kwargs, word):
    with pytest.raises(ValueError, match=word):
        GaussianDiffusion(**kwargs)


def test_from_betas_rejects_betas_outside_unit_interval():
    with pytest.raises(ValueError, match="beta"):
        GaussianDiffusion.from_betas([0.1, 1.0])


def test_q_sample_matches_forward_marginal_statistics(diffusions):
    d = diffusions[0.8]
    g = torch.Generator().manual_seed(0)
    x0 = torch.tensor([1.5, -0.7, 0.3], dtype=torch.float64)
    t = torch.tensor([0, 100, 400], dtype=torch.long)
    n = 20000
    x0_b = x0.repeat(n)  # [n*3], one scalar "sample" per row
    t_b = t.repeat(n)
    xt = d.q_sample(x0_b.view(-1, 1), t_b, noise=torch.randn(3 * n, 1, generator=g, dtype=torch.float64))
    xt = xt.view(n, 3)
    a = d.alphas_cumprod[t]
    assert torch.allclose(xt.mean(0), a.sqrt() * x0, atol=0.03)
    assert torch.allclose(xt.var(0), 1 - a, atol=0.03)


def test_q_sample_broadcasts_over_trailing_shape(diffusions):
    d = diffusions[1.0]
    x0 = torch.randn(2, 3, 2, 4, 4)
    t = torch.tensor([5, 900])
    eps = torch.randn_like(x0)
    xt = d.q_sample(x0, t, eps)
    for b in range(2):
        a = d.alphas_cumprod[t[b]].float()
        assert torch.allclose(xt[b], a.sqrt() * x0[b] + (1 - a).sqrt() * eps[b], atol=1e-6)


def test_q_sample_rejects_out_of_range_timesteps(diffusions):
    with pytest.raises(ValueError, match="1000"):
        diffusions[1.0].q_sample(torch.zeros(1, 4), torch.tensor([1000]))


def test_posterior_mean_variance_equals_textbook_formula(diffusions):
    d = diffusions[0.8]
    x0, xt = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    t = torch.tensor([1, 17, 500, 999])
    mean, var, _ = d.q_posterior_mean_variance(x0, xt, t)
    for b, tb in enumerate(t.tolist()):
        beta, a, a_prev = d.betas[tb], d.alphas_cumprod[tb], d.alphas_cumprod[tb - 1]
        want = a_prev.sqrt() * beta / (1 - a) * x0[b] + (1 - beta).sqrt() * (1 - a_prev) / (1 - a) * xt[b]
        assert torch.allclose(mean[b], want)
        assert torch.allclose(var[b], (1 - a_prev) / (1 - a) * beta)


def test_p_sample_from_x0_is_posterior_sample_and_noise_free_at_t0(diffusions):
    d = diffusions[1.0]
    x0, xt, eps = (torch.randn(3, 6, dtype=torch.float64) for _ in range(3))
    t = torch.tensor([0, 10, 999])
    out = d.p_sample_from_x0(x0, xt, t, noise=eps)
    mean, var, _ = d.q_posterior_mean_variance(x0, xt, t)
    assert torch.allclose(out, mean + var.sqrt() * eps)
    assert torch.allclose(out[0], x0[0])


def test_strided_step_equals_ddpm_step_of_respaced_chain(diffusions):
    d = diffusions[0.8]
    ts = d.sampling_timesteps(50)
    respaced = GaussianDiffusion.from_betas(d.respaced_betas(ts))
    assert torch.allclose(respaced.alphas_cumprod, d.alphas_cumprod[ts.flip(0)])
    x0, xt, eps = (torch.randn(3, 6, dtype=torch.float64) for _ in range(3))
    k = torch.tensor([1, 20, 49])  # indices in the respaced chain (ascending time)
    asc = ts.flip(0)
    ours = d.p_sample_step(x0, xt, asc[k], asc[k - 1], noise=eps)
    theirs = respaced.p_sample_from_x0(x0, xt, k, noise=eps)
    assert torch.allclose(ours, theirs)


def test_sampling_timesteps_are_strictly_decreasing_from_last_to_zero(diffusions):
    d = diffusions[1.0]
    for n in (2, 7, 50, 333, 999, 1000):
        ts = d.sampling_timesteps(n)
        assert ts.dtype == torch.long and len(ts) == n
        assert ts[0] == 999 and ts[-1] == 0
        assert bool((ts[1:] < ts[:-1]).all())
    assert torch.equal(d.sampling_timesteps(), torch.arange(999, -1, -1))
    with pytest.raises(ValueError, match="1001"):
        d.sampling_timesteps(1001)


@pytest.mark.parametrize("steps", [None, 50])
def test_oracle_denoiser_sample_loop_returns_x0(diffusions, steps):
    d = diffusions[0.8]
    x0 = torch.randn(2, 3, 2, 4, 4)
    calls = []

    def oracle(x_t, t):
        calls.append(t[0].item())
        return x0

    out = d.sample_loop(oracle, x0.shape, num_sample_steps=steps, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, x0, atol=1e-5)
    assert calls == d.sampling_timesteps(steps).tolist()


def test_oracle_strided_chain_has_forward_marginals():
    # with the true x0, every x_s on the respaced chain must be distributed as q(x_s | x0)
    d = GaussianDiffusion(rho=0.8)
    x0 = torch.full((20000, 1), 0.8, dtype=torch.float64)
    ts = d.sampling_timesteps(10)
    inter = {step.t: step.x_t for step in d.sample_loop_progressive(
        lambda x, t: x0, x0.shape, num_sample_steps=10, dtype=torch.float64, generator=torch.Generator().manual_seed(1))}
    assert sorted(inter) == sorted(ts.tolist())
    for t, x in inter.items():
        a = d.alphas_cumprod[t]
        assert x.mean().item() == pytest.approx((a.sqrt() * 0.8).item(), abs=0.03)
        assert x.var().item() == pytest.approx((1 - a).item(), abs=0.03)


def test_sample_loop_intermediates_map_to_nearest_chain_step_and_is_reproducible():
    d = GaussianDiffusion(num_steps=100)
    fn = lambda x, t: 0.5 * x  # noqa: E731
    steps = list(d.sample_loop_progressive(fn, (2, 3), num_sample_steps=10,
                                           generator=torch.Generator().manual_seed(3)))
    out2 = d.sample_loop(fn, (2, 3), num_sample_steps=10, generator=torch.Generator().manual_seed(3))
    assert torch.equal(steps[-1].x_next, out2)                        # the same draws, one return type each
    assert [s.t for s in steps] == d.sampling_timesteps(10).tolist()
    assert all(torch.equal(a.x_next, b.x_t) for a, b in zip(steps, steps[1:]))
    assert d.chain_steps_nearest((99, 50, 0), 10) == {0, 55, 99}  # chain: 99, 88, ..., 55, 44; 50 nearer 55
    with pytest.raises(ValueError, match="integers in \\[0, 100\\)"):
        d.chain_steps_nearest((100,), 10)
    xT = torch.randn(2, 3)
    first = next(iter(d.sample_loop_progressive(fn, xT, num_sample_steps=10)))
    assert first.t == 99 and torch.equal(first.x_t, xT)


def test_beta_schedule_function_matches_class():
    assert torch.equal(get_beta_schedule("linear", 1000, 1e-4, 0.02, 0.6), GaussianDiffusion(rho=0.6).betas)


def test_schedule_figure_tool_draws_every_rho_and_prints_the_low_signal_fractions(tmp_path, capsys):
    from PIL import Image

    sys.path.insert(0, os.path.join(ROOT, "tools"))  # as tests/test_visualize.py imports its tool
    import plot_schedule

    out = tmp_path / "fig" / "schedule.png"
    plot_schedule.main(["--rho", "1.0", "0.8", "0.6", "--out", str(out)])
    assert Image.open(out).size[0] > 300
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:4]}
    assert [float(rows[r][1]) for r in ("1", "0.8", "0.6")] == [0.231, 0.547, 0.769]
    assert float(rows["1"][-1]) == pytest.approx(GaussianDiffusion(rho=1.0).alphas_cumprod[999].item(), rel=1e-2)
