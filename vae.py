"""Auto-encoders: the bottleneck (AE), the denoising AE (DAE) and the variational AE (VAE).

An auto-encoder squeezes an image x through a low-dimensional code z = enc(x) and rebuilds it,
x_hat = dec(z); the bottleneck forces it to keep what matters. A denoising AE (Vincent et al.
2008) rebuilds x from a corrupted copy (here, with Gaussian noise added), which makes the code
robust. The VAE (Kingma & Welling 2013, arXiv 1312.6114) makes the code a distribution
q(z | x) = N(mu, diag sigma^2), samples it with the reparameterisation trick, and maximises the
evidence lower bound (their eq. 3):

    log p(x) >= ELBO = E_q[log p(x | z)] - KL(q(z | x) || N(0, I)).

Here p(x | z) is a discretised Gaussian over the 256 pixel levels, so -ELBO is an upper bound on
the true code length of the image: reported in nats per image and in bits per dimension.
Diffusion models (diffusion.py) are the same bound taken over many small noising steps.

Defines: VAEConfig, Encoder, Decoder, gaussian_kl, reparameterise,
discretized_gaussian_log_likelihood, AutoEncoder (kind "ae" | "dae" | "vae": loss, sample,
interpolate).
Run `python vae.py` to train a small VAE on shapes for a minute and save reconstructions.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class VAEConfig:
    kind: str = "vae"            # "ae", "dae" or "vae"
    resolution: int = 32
    channels: int = 32           # width after the first downsampling; doubles at each after
    latent_dim: int = 32         # the bottleneck
    noise_std: float = 0.4       # DAE only: std of the noise added, on the [-1, 1] scale
    kl_weight: float = 1.0       # 1 is the ELBO; other values give a beta-VAE


def downsamplings(resolution):
    """Number of stride-2 stages from the image down to a 4x4 map."""
    if resolution < 8 or resolution & (resolution - 1):
        raise ValueError(f"auto-encoders support power-of-two resolutions >= 8, got {resolution}")
    return int(math.log2(resolution // 4))


class Encoder(nn.Module):
    """(B, 3, R, R) -> (B, out_dim): stride-2 convolutions down to 4x4, then a linear layer."""

    def __init__(self, cfg, out_dim):
        super().__init__()
        layers, c_in = [], 3
        for i in range(downsamplings(cfg.resolution)):
            c_out = cfg.channels * 2 ** i
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.SiLU(),
                       nn.Conv2d(c_out, c_out, 3, padding=1), nn.SiLU()]
            c_in = c_out
        self.conv = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in * 16, out_dim)

    def forward(self, x):
        return self.fc(self.conv(x).flatten(1))  # (B, C, 4, 4) -> (B, out_dim)


class Decoder(nn.Module):
    """(B, latent_dim) -> (B, out_channels, R, R): the encoder's mirror, transposed convolutions."""

    def __init__(self, cfg, out_channels=3):
        super().__init__()
        n = downsamplings(cfg.resolution)
        self.c0 = cfg.channels * 2 ** (n - 1)
        self.fc = nn.Linear(cfg.latent_dim, self.c0 * 16)
        layers, c_in = [], self.c0
        for i in reversed(range(n)):
            c_out = cfg.channels * 2 ** max(i - 1, 0)
            layers += [nn.SiLU(), nn.Conv2d(c_in, c_in, 3, padding=1), nn.SiLU(),
                       nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1)]
            c_in = c_out
        self.conv = nn.Sequential(*layers, nn.SiLU(), nn.Conv2d(c_in, out_channels, 3, padding=1))

    def forward(self, z):
        return self.conv(self.fc(z).view(len(z), self.c0, 4, 4))  # (B, out_channels, R, R)


def gaussian_kl(mean, logvar):
    """KL(N(mean, exp(logvar)) || N(0, I)), summed over dimensions (Kingma & Welling, appendix B):
    -1/2 sum(1 + logvar - mean^2 - exp(logvar))."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).sum(-1)


def reparameterise(mean, logvar, eps):
    """A sample of N(mean, exp(logvar)) written as a function of mean and logvar, the randomness
    eps ~ N(0, I) an input (Kingma & Welling, section 2.4), so gradients reach the encoder."""
    return mean + torch.exp(0.5 * logvar) * eps


def discretized_gaussian_log_likelihood(x, mean, log_scale):
    """log P(x) of 8-bit data x in [-1, 1] under N(mean, scale^2) integrated over each pixel's bin
    (width 2/255); the edge bins take the tails, so probabilities sum to one over the 256 levels."""
    def cdf(v):
        return 0.5 * (1 + torch.erf(v / math.sqrt(2)))
    centred, inv_scale = x - mean, torch.exp(-log_scale)
    upper, lower = cdf(inv_scale * (centred + 1 / 255)), cdf(inv_scale * (centred - 1 / 255))
    prob = torch.where(x < -0.999, upper, torch.where(x > 0.999, 1 - lower, upper - lower))
    return torch.log(prob.clamp(min=1e-12))


class AutoEncoder(nn.Module):
    """One encoder-decoder pair, three training objectives chosen by cfg.kind."""

    def __init__(self, cfg):
        super().__init__()
        if cfg.kind not in ("ae", "dae", "vae"):
            raise ValueError(f"kind must be 'ae', 'dae' or 'vae', got {cfg.kind!r}")
        self.cfg = cfg
        self.encoder = Encoder(cfg, 2 * cfg.latent_dim if cfg.kind == "vae" else cfg.latent_dim)
        # The VAE's decoder also predicts a per-pixel log-scale: the white background can be
        # certain while edges stay uncertain (one global scale would be set by the worst pixels).
        self.decoder = Decoder(cfg, 6 if cfg.kind == "vae" else 3)

    def corrupt(self, x):
        """The DAE's input: x plus Gaussian noise."""
        return x + self.cfg.noise_std * torch.randn_like(x)

    def encode(self, x):
        """(B, 3, R, R) -> the code: z for AE/DAE, the posterior mean for the VAE."""
        h = self.encoder(x)
        return h[:, : self.cfg.latent_dim] if self.cfg.kind == "vae" else h

    def decode(self, z):
        """(B, latent_dim) -> the reconstruction (the likelihood's mean for the VAE)."""
        return self.decoder(z)[:, :3]

    def reconstruct(self, x):
        return self.decode(self.encode(x))

    def elbo_terms(self, x):
        """Per image: reconstruction log-likelihood (nats) and KL (nats)."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)  # (B, 2 * latent) -> 2 x (B, latent)
        z = reparameterise(mean, logvar, torch.randn_like(mean))
        mean_x, log_scale = self.decoder(z).chunk(2, dim=1)  # (B, 6, R, R) -> 2 x (B, 3, R, R)
        log_px = discretized_gaussian_log_likelihood(x, mean_x, log_scale.clamp(min=-7))
        return log_px.flatten(1).sum(1), gaussian_kl(mean, logvar)

    def loss(self, x):
        """x: (B, 3, R, R) in [-1, 1] -> (scalar loss, dict of figures to log)."""
        if self.cfg.kind == "vae":
            log_px, kl = self.elbo_terms(x)
            nats = (-log_px + kl).mean()  # -ELBO, nats per image
            dims = x[0].numel()
            loss = (-log_px + self.cfg.kl_weight * kl).mean() / dims
            return loss, {"nats": nats.item(), "bpd": nats.item() / (dims * math.log(2)),
                          "kl": kl.mean().item()}
        x_in = self.corrupt(x) if self.cfg.kind == "dae" else x
        mse = F.mse_loss(self.decode(self.encode(x_in)), x)
        return mse, {"mse": mse.item()}

    @torch.no_grad()
    def sample(self, n, device="cpu"):
        """Decode codes drawn from the VAE's prior N(0, I)."""
        if self.cfg.kind != "vae":
            raise ValueError("only the VAE has a prior to sample from; AE codes are not N(0, I)")
        return self.decode(torch.randn(n, self.cfg.latent_dim, device=device)).clamp(-1, 1)

    @torch.no_grad()
    def interpolate(self, x_a, x_b, steps=8):
        """Decode evenly spaced points on the line between the codes of two images."""
        z_a, z_b = self.encode(x_a[None]), self.encode(x_b[None])
        w = torch.linspace(0, 1, steps, device=z_a.device)[:, None]
        return self.decode((1 - w) * z_a + w * z_b).clamp(-1, 1)  # (steps, 3, R, R)


if __name__ == "__main__":
    import time

    from data import save_grid, shapes_data
    torch.manual_seed(0)
    data = shapes_data(4000, 32)
    model = AutoEncoder(VAEConfig())
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    start = time.time()
    for step in range(501):
        x = data.batch(torch.randint(len(data), (64,)))[0]
        loss, figures = model.loss(x)
        opt.zero_grad()
        loss.backward()
        # As train.py does: unclipped, this demo's loss turns NaN within a few hundred steps.
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 100 == 0:
            print(f"step {step}: {figures['bpd']:.3f} bits/dim ({time.time() - start:.0f}s)")
    x = data.batch(torch.arange(8))[0]
    with torch.no_grad():
        rows = torch.cat([x, model.reconstruct(x), model.sample(8)])  # (24, 3, R, R)
    save_grid(rows, "out/vae_demo.png", scale=2)
    print("wrote out/vae_demo.png (rows: data, reconstructions, prior samples)")
