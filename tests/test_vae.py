"""vae.py: the closed-form KL, the discretised likelihood, and that each auto-encoder learns."""
import math

import pytest
import torch

from data import shapes_data
from vae import AutoEncoder, VAEConfig, discretized_gaussian_log_likelihood, gaussian_kl


def test_gaussian_kl_matches_torch_and_monte_carlo():
    torch.manual_seed(0)
    mean, logvar = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    exact = torch.distributions.kl_divergence(q, p).sum(-1)
    assert torch.allclose(gaussian_kl(mean, logvar), exact, atol=1e-12)
    z = q.sample((200000,))  # E_q[log q(z) - log p(z)], within 5 standard errors
    samples = (q.log_prob(z) - p.log_prob(z)).sum(-1)
    stderr = samples.std(0) / math.sqrt(len(samples))
    assert ((samples.mean(0) - exact).abs() < 5 * stderr).all()


def test_discretized_likelihood_sums_to_one_over_pixel_levels():
    levels = torch.arange(256, dtype=torch.float64) / 127.5 - 1  # the 256 values of 8-bit data
    for mean, log_scale in [(0.0, -3.0), (0.9, -1.0), (-1.2, -5.0)]:
        p = discretized_gaussian_log_likelihood(levels, torch.tensor(mean, dtype=torch.float64),
                                                torch.tensor(log_scale, dtype=torch.float64)).exp()
        assert abs(p.sum().item() - 1) < 1e-9


def test_reparameterised_sample_carries_gradient_to_mean_and_variance():
    torch.manual_seed(0)
    model = AutoEncoder(VAEConfig(kind="vae", channels=8, latent_dim=4))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    log_px, kl = model.elbo_terms(x)
    # The reconstruction term alone: the KL term sends gradient to both halves whatever z is, so
    # only log p(x | z) tells z = mean + sigma * eps from z = mean (no gradient to the variance).
    (-log_px).sum().backward()
    head = model.encoder.fc.weight.grad  # rows 0..3 produce the mean, rows 4..7 the log-variance
    assert head[:4].abs().sum() > 0 and head[4:].abs().sum() > 0


@pytest.mark.parametrize("kind,factor", [
    ("ae", 3), ("dae", 3),
    ("vae", 1.5),  # -ELBO per dimension, which includes the irreducible KL and entropy
])
def test_autoencoder_loss_falls_on_tiny_shapes(kind, factor):
    torch.manual_seed(0)
    x = shapes_data(32, 16, seed=0).batch(torch.arange(32))[0]
    model = AutoEncoder(VAEConfig(kind=kind, resolution=16, channels=16, latent_dim=16))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(150):
        loss, _ = model.loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first / factor, (first, last)


def test_dae_corruption_adds_noise_of_noise_std():
    torch.manual_seed(0)
    x = torch.zeros(4, 3, 32, 32) + 0.5
    noisy = AutoEncoder(VAEConfig(kind="dae", noise_std=0.4)).corrupt(x)
    assert abs((noisy - x).mean().item()) < 0.02
    assert abs((noisy - x).std().item() - 0.4) < 0.02


def test_shapes_of_sample_and_interpolation():
    model = AutoEncoder(VAEConfig(kind="vae", resolution=16, channels=8, latent_dim=4)).eval()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert model.sample(5).shape == (5, 3, 16, 16)
    path = model.interpolate(x[0], x[1], steps=6)
    assert path.shape == (6, 3, 16, 16)
    assert torch.allclose(path[0], model.reconstruct(x[:1])[0].clamp(-1, 1), atol=1e-5)
    with pytest.raises(ValueError, match="power-of-two"):
        AutoEncoder(VAEConfig(resolution=24))
    with pytest.raises(ValueError, match="only the VAE"):
        AutoEncoder(VAEConfig(kind="ae")).sample(1)
