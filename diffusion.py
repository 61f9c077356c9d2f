"""Diffusion models: the process, DDPM and DDIM sampling, classifier and classifier-free guidance.

The forward process adds Gaussian noise to an image x_0 over T steps with variances beta_t,
    q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I)            (DDPM eq. 2)
and in closed form, with alpha_t = 1 - beta_t and abar_t = prod_{s<=t} alpha_s,
    q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)                  (DDPM eq. 4).
A network learns to undo one step, p(x_{t-1} | x_t) = N(mu(x_t, t), sigma_t^2 I), by predicting
the noise eps in x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps with the simple loss
    L_simple = E ||eps - eps_theta(x_t, t)||^2                          (DDPM eq. 14);
mu is then the mean of the posterior q(x_{t-1} | x_t, x_0) (eqs. 6-7) at the predicted x_0.
The network may equally predict x_0 or v = sqrt(abar) eps - sqrt(1 - abar) x_0: all three say
the same thing, and conversions among them are one line each. DDIM samples the same model with a
non-Markovian process that can skip steps (eta = 0: deterministic; eta = 1: DDPM's variance).
For images the network is unet.py's U-Net.

Guidance trades diversity for fidelity. Classifier guidance adds the gradient of a noise-aware
classifier's log p(y | x_t) to each step's mean; classifier-free guidance trains one model with
and without its condition and extrapolates, eps = eps(x_t) + w (eps(x_t, y) - eps(x_t)).

Papers: DDPM, Ho et al. 2020 (arXiv 2006.11239); improved DDPM (cosine schedule), Nichol &
Dhariwal 2021 (arXiv 2102.09672); DDIM, Song et al. 2020 (arXiv 2010.02502); classifier guidance,
Dhariwal & Nichol 2021 (arXiv 2105.05233); classifier-free guidance, Ho & Salimans 2022
(arXiv 2207.12598); v-prediction, Salimans & Ho 2022 (arXiv 2202.00512); Min-SNR loss weighting
(the decoder's), Hang et al. 2023 (arXiv 2303.09556).

Defines: schedules, GaussianDiffusion (q_sample, q_posterior, predictions, loss_weight,
training_loss, p_sample, ddim_sample and their loops), DiffusionConfig (the settings every
diffusion model's config inherits), make_diffusion, DDPMConfig, drop_labels, drop_condition, DDPM
(loss, model_fn, sample), classifier_free_guidance, ClassifierConfig, NoisyClassifier,
classifier_guidance; a 2-D toy with an exact posterior (toy_rings, ring_posterior, ring_fidelity,
ring_angle_entropy, PointDenoiser, PointClassifier, fit_ring_toy).
Run `python diffusion.py` to fit a 2-D toy distribution and show both guidances at work.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from unet import UNet, UNetConfig, group_norm, timestep_embedding


# ----------------------------------------------------------------------------------------------
# Noise schedules, in float64: the products over 1000 steps lose precision in float32.

def linear_beta_schedule(T):
    """Ho et al.: betas from 1e-4 to 0.02 over 1000 steps (rescaled for other T)."""
    scale = 1000 / T
    return torch.linspace(scale * 1e-4, scale * 0.02, T, dtype=torch.float64)


def cosine_beta_schedule(T, s=0.008):
    """Nichol & Dhariwal eq. 17: abar_t = f(t) / f(0), f(t) = cos^2((t / T + s) / (1 + s) pi / 2);
    beta_t = 1 - abar_t / abar_{t-1}, clipped at 0.999 to avoid a singularity at t = T."""
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=0.999)


def extract(a, t, x):
    """Coefficients a[t] for a batch of timesteps, shaped to broadcast against x: (B, 1, ...)."""
    return a.to(x.device)[t].float().view(-1, *([1] * (x.dim() - 1)))


# ----------------------------------------------------------------------------------------------
# The process: forward noising, posterior, predictions, loss, and the two samplers.

class GaussianDiffusion:
    """The fixed forward process and the sampling rules, given a model's raw output.

    Every method that runs the network takes model_fn(x_t, t) -> prediction (of eps, x0 or v,
    per `prediction`); conditioning and guidance are wrapped into model_fn by the caller."""

    def __init__(self, betas, prediction="eps", clip_x0="clip", min_snr_gamma=0.0,
                 min_snr_offset=1.0):
        if prediction not in ("eps", "x0", "v"):
            raise ValueError(f"prediction must be 'eps', 'x0' or 'v', got {prediction!r}")
        if clip_x0 not in ("none", "clip"):
            raise ValueError(f"clip_x0 must be 'none' or 'clip', got {clip_x0!r}")
        self.prediction, self.clip_x0, self.min_snr_gamma = prediction, clip_x0, min_snr_gamma
        self.min_snr_offset = min_snr_offset
        self.num_timesteps = len(betas)
        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1 - betas, 0)
        self.alphas_cumprod_prev = F.pad(self.alphas_cumprod[:-1], (1, 0), value=1.0)
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1 - self.alphas_cumprod).sqrt()
        # DDPM eq. 7: the posterior q(x_{t-1} | x_t, x_0) = N(mean, beta_tilde_t I), with
        # mean = coef1 x_0 + coef2 x_t and beta_tilde_t = beta_t (1 - abar_{t-1}) / (1 - abar_t).
        self.posterior_variance = (betas * (1 - self.alphas_cumprod_prev)
                                   / (1 - self.alphas_cumprod))
        # beta_tilde_0 = 0: take the log of beta_tilde_1 there, as improved DDPM does.
        self.posterior_log_variance_clipped = torch.log(
            torch.cat([self.posterior_variance[1:2], self.posterior_variance[1:]]))
        self.posterior_mean_coef1 = (betas * self.alphas_cumprod_prev.sqrt()
                                     / (1 - self.alphas_cumprod))
        self.posterior_mean_coef2 = ((1 - self.alphas_cumprod_prev) * (1 - betas).sqrt()
                                     / (1 - self.alphas_cumprod))

    def q_sample(self, x0, t, noise):
        """DDPM eq. 4: x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps."""
        return (extract(self.sqrt_alphas_cumprod, t, x0) * x0
                + extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise)

    def q_posterior(self, x0, x_t, t):
        """DDPM eqs. 6-7: mean, variance and log-variance of q(x_{t-1} | x_t, x_0)."""
        mean = (extract(self.posterior_mean_coef1, t, x_t) * x0
                + extract(self.posterior_mean_coef2, t, x_t) * x_t)
        return (mean, extract(self.posterior_variance, t, x_t),
                extract(self.posterior_log_variance_clipped, t, x_t))

    # The three parameterisations, and the conversions among them (each exact given x_t).
    def x0_from_eps(self, x_t, t, eps):
        return (x_t - extract(self.sqrt_one_minus_alphas_cumprod, t, x_t) * eps) / extract(
            self.sqrt_alphas_cumprod, t, x_t)

    def eps_from_x0(self, x_t, t, x0):
        return (x_t - extract(self.sqrt_alphas_cumprod, t, x_t) * x0) / extract(
            self.sqrt_one_minus_alphas_cumprod, t, x_t)

    def v_from_x0_eps(self, x0, t, eps):
        return (extract(self.sqrt_alphas_cumprod, t, x0) * eps
                - extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * x0)

    def x0_from_v(self, x_t, t, v):
        return (extract(self.sqrt_alphas_cumprod, t, x_t) * x_t
                - extract(self.sqrt_one_minus_alphas_cumprod, t, x_t) * v)

    def training_target(self, x0, t, noise):
        if self.prediction == "eps":
            return noise
        return x0 if self.prediction == "x0" else self.v_from_x0_eps(x0, t, noise)

    def loss_weight(self, t):
        """(B,) weights of the per-timestep errors. The simple loss weights the error in x_0 by
        SNR (eps), 1 (x0) or SNR + 1 (v), SNR = abar / (1 - abar). min_snr_gamma > 0 caps that
        weight at gamma, so the nearly clean timesteps stop dominating the gradient (Min-SNR,
        Hang et al. 2023: min(SNR, gamma) for eps). For v the cap is min(SNR + min_snr_offset,
        gamma): the paper's offset 0 starves the noisiest steps (SNR -> 0), where the layout is
        decided; 1 weights them as the simple loss does."""
        if not self.min_snr_gamma:
            return torch.ones(len(t), device=t.device)
        snr = (self.alphas_cumprod / (1 - self.alphas_cumprod)).float().to(t.device)[t]  # (B,)
        implicit = {"eps": snr, "x0": torch.ones_like(snr), "v": snr + 1}[self.prediction]
        capped = snr + self.min_snr_offset if self.prediction == "v" else implicit
        return capped.clamp(max=self.min_snr_gamma) / implicit

    def training_loss(self, model_fn, x0, t=None, noise=None):
        """The simple loss (DDPM eq. 14), for whichever target the model predicts (weighted per
        timestep by loss_weight); t and the noise are drawn unless given."""
        if t is None:  # t ~ Uniform{0, ..., T-1} (the paper's 1..T, shifted to index arrays)
            t = torch.randint(0, self.num_timesteps, (len(x0),), device=x0.device)
        noise = torch.randn_like(x0) if noise is None else noise
        prediction = model_fn(self.q_sample(x0, t, noise), t)
        error = (prediction.float() - self.training_target(x0, t, noise)).pow(2)
        return (self.loss_weight(t) * error.flatten(1).mean(1)).mean()

    def process_x0(self, x0):
        """Keep a predicted x_0 in the data range [-1, 1] (clip_x0 "clip"), or leave it."""
        return x0.clamp(-1, 1) if self.clip_x0 == "clip" else x0

    def predict_eps_x0(self, model_fn, x_t, t):
        """Run the model; return (eps, x_0), with x_0 processed and eps consistent with it."""
        out = model_fn(x_t, t).float()
        if self.prediction == "eps":
            x0 = self.x0_from_eps(x_t, t, out)
        else:
            x0 = out if self.prediction == "x0" else self.x0_from_v(x_t, t, out)
        x0 = self.process_x0(x0)
        return self.eps_from_x0(x_t, t, x0), x0

    def p_mean_variance(self, model_fn, x_t, t):
        """p(x_{t-1} | x_t): the posterior at the predicted x_0, variance beta_tilde_t (fixed)."""
        _, x0 = self.predict_eps_x0(model_fn, x_t, t)
        mean, variance, log_variance = self.q_posterior(x0, x_t, t)
        return mean, variance, log_variance, x0

    def p_sample(self, model_fn, x_t, t, cond_fn=None):
        """One ancestral step x_t -> x_{t-1} (DDPM Algorithm 2). With cond_fn(x_t, t) returning
        grad log p(y | x_t) (already scaled), the mean moves by variance * gradient
        (classifier guidance, Dhariwal & Nichol Algorithm 1)."""
        mean, variance, log_variance, _ = self.p_mean_variance(model_fn, x_t, t)
        if cond_fn is not None:
            mean = mean + variance * cond_fn(x_t, t)
        nonzero = (t > 0).float().view(-1, *([1] * (x_t.dim() - 1)))  # no noise at the last step
        return mean + nonzero * torch.exp(0.5 * log_variance) * torch.randn_like(x_t)

    def ddim_sample(self, model_fn, x_t, t, t_prev, eta=0.0, cond_fn=None):
        """One DDIM step from t to t_prev < t (Song et al. eq. 12; t_prev = -1 means x_0).
        Classifier guidance enters through eps (Dhariwal & Nichol Algorithm 2):
        eps <- eps - sqrt(1 - abar_t) grad log p(y | x_t)."""
        eps, x0 = self.predict_eps_x0(model_fn, x_t, t)
        abar_t = extract(self.alphas_cumprod, t, x_t)
        if cond_fn is not None:
            eps = eps - (1 - abar_t).sqrt() * cond_fn(x_t, t)
            x0 = self.process_x0(self.x0_from_eps(x_t, t, eps))
        abar_prev = extract(self.alphas_cumprod_prev, t_prev + 1, x_t)  # abar_{-1} = 1: x_0
        # Song et al. eq. 16:
        # sigma_t = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)
        sigma = eta * ((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)).sqrt()
        direction = (1 - abar_prev - sigma ** 2).clamp(min=0).sqrt() * eps
        return abar_prev.sqrt() * x0 + direction + sigma * torch.randn_like(x_t)

    @torch.no_grad()
    def p_sample_loop(self, model_fn, shape, device="cpu", cond_fn=None, noise=None):
        """Ancestral sampling through all T steps, from x_T ~ N(0, I) (or the given noise)."""
        x = torch.randn(shape, device=device) if noise is None else noise
        for i in reversed(range(self.num_timesteps)):
            t = torch.full((shape[0],), i, device=device, dtype=torch.long)
            x = self.p_sample(model_fn, x, t, cond_fn)
        return x

    @torch.no_grad()
    def ddim_sample_loop(self, model_fn, shape, steps=50, eta=0.0, device="cpu", cond_fn=None,
                         noise=None, start=None):
        """DDIM over `steps` evenly spaced timesteps (any number up to T), from x_T = noise; or
        from x_start = noise at an earlier timestep `start`."""
        start = self.num_timesteps - 1 if start is None else start
        if not 1 <= steps <= start + 1:
            raise ValueError(f"DDIM steps must be in 1..{start + 1}, got {steps}")
        times = torch.linspace(start, 0, steps).round().long().tolist()
        x = torch.randn(shape, device=device) if noise is None else noise
        for i, i_prev in zip(times, times[1:] + [-1]):
            t = torch.full((shape[0],), i, device=device, dtype=torch.long)
            x = self.ddim_sample(model_fn, x, t, torch.full_like(t, i_prev), eta, cond_fn)
        return x


# ----------------------------------------------------------------------------------------------
# The settings every diffusion model's config inherits: one --flag and one default for each.

@dataclass
class DiffusionConfig:
    timesteps: int = 1000
    schedule: str = "cosine"    # "linear" or "cosine"
    prediction: str = "v"       # "eps", "x0" or "v"; v: eps's x_0 = (x_t - sqrt(1 - abar) eps)
                                # / sqrt(abar) blows up where abar ~ 0: short runs draw bad shapes
    clip_x0: str = "clip"       # "clip" a predicted x_0 to the data's [-1, 1], or "none"


def make_diffusion(cfg, min_snr_gamma=0.0, min_snr_offset=1.0):
    """The GaussianDiffusion a DiffusionConfig describes (a loss-weight cap: the decoder's)."""
    schedules = {"linear": linear_beta_schedule, "cosine": cosine_beta_schedule}
    if cfg.schedule not in schedules:
        raise ValueError(f"schedule must be 'linear' or 'cosine', got {cfg.schedule!r}")
    return GaussianDiffusion(schedules[cfg.schedule](cfg.timesteps), cfg.prediction, cfg.clip_x0,
                             min_snr_gamma, min_snr_offset)


# ----------------------------------------------------------------------------------------------
# DDPM: a U-Net and a process, trained with the simple loss; optional class conditioning.

@dataclass
class DDPMConfig(DiffusionConfig, UNetConfig):
    num_classes: int = 0        # > 0: class-conditional (the data's: stages.data_fields)
    p_uncond: float = 0.1       # class label dropped this often in training (classifier-free)
    sample_steps: int = 50      # DDIM steps unless told (25 to 100 draw alike: docs/guidance.md)


def drop_labels(y, p_uncond, null_label):
    """Replace each label by the null label with probability p_uncond (Ho & Salimans Alg. 1)."""
    return torch.where(torch.rand(y.shape, device=y.device) < p_uncond, null_label, y)


def drop_condition(c, p_uncond):
    """The same for a continuous condition (B, ...): each row zeroed with probability p_uncond.
    Zeros are the null condition that classifier-free guidance samples with."""
    keep = torch.rand(len(c), device=c.device) >= p_uncond
    return c * keep.view(-1, *([1] * (c.dim() - 1)))


class DDPM(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.unet = UNet(cfg, num_classes=cfg.num_classes)
        self.diffusion = make_diffusion(cfg)

    def loss(self, x0, y=None):
        """x0: (B, 3, R, R) in [-1, 1], y: (B,) labels or None -> (loss, figures)."""
        if self.cfg.num_classes:
            y = drop_labels(y, self.cfg.p_uncond, self.cfg.num_classes)
        loss = self.diffusion.training_loss(lambda x_t, t: self.unet(x_t, t, y), x0)
        return loss, {"mse": loss.item()}

    def model_fn(self, y=None, guidance_scale=1.0):
        """The function the samplers call: conditional, or classifier-free guided."""
        if y is None:
            return lambda x_t, t: self.unet(x_t, t)
        null = torch.full_like(y, self.cfg.num_classes)
        return classifier_free_guidance(lambda x_t, t, c: self.unet(x_t, t, c), y, null,
                                        guidance_scale)

    @torch.no_grad()
    def sample(self, n, y=None, guidance_scale=1.0, sampler="ddim", steps=None, eta=0.0,
               cond_fn=None, device="cpu"):
        """n images in [-1, 1]. y: (n,) labels for a class-conditional model. steps: DDIM's
        (None: the config's sample_steps)."""
        if self.cfg.num_classes and y is None:
            y = torch.full((n,), self.cfg.num_classes, device=device)  # the null label
        shape = (n, self.cfg.in_channels, self.cfg.resolution, self.cfg.resolution)
        model_fn = self.model_fn(y, guidance_scale)
        if sampler == "ddpm":
            return self.diffusion.p_sample_loop(model_fn, shape, device, cond_fn).clamp(-1, 1)
        if sampler == "ddim":
            steps = self.cfg.sample_steps if steps is None else steps
            return self.diffusion.ddim_sample_loop(model_fn, shape, steps, eta, device,
                                                   cond_fn).clamp(-1, 1)
        raise ValueError(f"sampler must be 'ddpm' or 'ddim', got {sampler!r}")


# ----------------------------------------------------------------------------------------------
# Guidance: two thin wrappers around one model and one sampler.

def classifier_free_guidance(model_fn, cond, null_cond, guidance_scale):
    """Run the model with and without its condition in one batch and extrapolate:
    out = out_uncond + w (out_cond - out_uncond). w = 0 is the unconditional model, w = 1 the
    conditional one, w > 1 guides (the GLIDE / DALL-E 2 convention; Ho & Salimans' w is ours - 1).
    Mixing the raw outputs is exact for eps, x0 and v alike, since each is linear in the others.

    model_fn(*inputs, cond) -> output; cond and null_cond are tensors, or tuples of tensors for a
    model with several conditions. Returns guided(*inputs), e.g. guided(x_t, t) for a sampler;
    at w = 1 it runs the conditional model alone (half the work)."""
    if guidance_scale == 1.0:
        return lambda *inputs: model_fn(*inputs, cond)
    if torch.is_tensor(cond):
        both = torch.cat([cond, null_cond])
    else:
        both = tuple(torch.cat(pair) for pair in zip(cond, null_cond))

    def guided(*inputs):
        out = model_fn(*[torch.cat([x, x]) for x in inputs], both)
        out_cond, out_uncond = out.chunk(2)
        return out_uncond + guidance_scale * (out_cond - out_uncond)
    return guided


@dataclass
class ClassifierConfig(DiffusionConfig, UNetConfig):  # it only noises: prediction, clip_x0 unused
    num_classes: int = 3
    max_timestep: int = 0    # trained on t < this (0: all of them); 1: clean images only, a plain
                             # classifier that scores generated samples (evaluate.py)


class NoisyClassifier(nn.Module):
    """p(y | x_t, t): the U-Net's down half and middle, pooled, then a linear head
    (Dhariwal & Nichol's classifier). Trained on images noised to a random t."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        # Build a U-Net without label conditioning (the label is the output here) and keep its
        # encoding half; the decoding half is dropped.
        unet = UNet(cfg)
        self.time_embed, self.input_conv = unet.time_embed, unet.input_conv
        self.down, self.middle = unet.down, unet.middle
        c = cfg.channels * cfg.channel_mult[-1]
        self.head = nn.Sequential(group_norm(c), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(c, cfg.num_classes))  # (B, C, h, w) -> (B, classes)
        self.diffusion = make_diffusion(cfg)

    def features(self, x_t, t):
        """(B, C) pooled features, what the linear head reads."""
        emb = self.time_embed(timestep_embedding(t, self.cfg.channels))
        h = self.input_conv(x_t)
        for block in self.down:
            h = block(h, emb)
        return self.head[:-1](self.middle(h, emb))

    def forward(self, x_t, t):
        return self.head[-1](self.features(x_t, t))

    def loss(self, x0, y):
        t = torch.randint(0, self.cfg.max_timestep or self.cfg.timesteps, (len(x0),),
                          device=x0.device)
        logits = self(self.diffusion.q_sample(x0, t, torch.randn_like(x0)), t)
        loss = F.cross_entropy(logits.float(), y)
        return loss, {"accuracy": (logits.argmax(1) == y).float().mean().item()}


def classifier_guidance(classifier, y, scale):
    """cond_fn(x_t, t) = scale * grad_x log p(y | x_t): the samplers add it to the mean (DDPM)
    or subtract it from eps (DDIM)."""
    def cond_fn(x_t, t):
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(True)
            log_probs = F.log_softmax(classifier(x, t).float(), dim=-1)
            selected = log_probs[torch.arange(len(y)), y].sum()
            return scale * torch.autograd.grad(selected, x)[0]
    return cond_fn


# ----------------------------------------------------------------------------------------------
# A 2-D toy where every figure is exact: three rings that cross, one per class. An MLP learns it in
# seconds, and p(y | x) under the data is known (by quadrature over each ring), so guidance's
# fidelity is measured without a model of our own. Notebooks 3 and 4 train and guide on it, with
# the linear schedule: the cosine one ends at abar_T = 6e-8, where a DDIM step's x_0 = (x_t -
# sqrt(1 - abar) eps) / sqrt(abar) explodes unless clipped to the data's range, as images are.

RING_CENTRES = torch.tensor([[0.0, 1.0], [-0.866, -0.5], [0.866, -0.5]])  # (3, 2); all 3 rings
RING_RADIUS, RING_BLUR = 1.0, 0.15                                      # pass through the origin


def toy_rings(n, generator=None):
    """n points (n, 2) and their classes (n,): class y is a circle of radius 1 around
    RING_CENTRES[y], blurred by N(0, 0.15^2 I)."""
    y = torch.randint(0, len(RING_CENTRES), (n,), generator=generator)
    angle = 2 * math.pi * torch.rand(n, generator=generator)
    circle = RING_RADIUS * torch.stack([angle.cos(), angle.sin()], 1)
    return RING_CENTRES[y] + circle + RING_BLUR * torch.randn(n, 2, generator=generator), y


def ring_distance(x):
    """(N, 2) points -> (N, 3) distance from each point to each class's circle."""
    return (torch.cdist(x.float(), RING_CENTRES) - RING_RADIUS).abs()


def ring_posterior(x, angles=720):
    """(N, 2) points -> (N, 3) p(y | x) under toy_rings: each class's density is its circle
    blurred, a mean of Gaussians over `angles` points of the circle (equal priors)."""
    a = torch.arange(angles) * (2 * math.pi / angles)
    on_ring = RING_CENTRES[:, None] + RING_RADIUS * torch.stack([a.cos(), a.sin()], 1)  # (3, A, 2)
    squared = (x[:, None, None].float() - on_ring).pow(2).sum(-1)                     # (N, 3, A)
    return torch.logsumexp(-squared / (2 * RING_BLUR ** 2), -1).softmax(-1)           # (N, 3)


def ring_fidelity(x, y):
    """Fidelity: the share of points on their class's ring (within 3 blurs of its circle) where
    that class is also the likeliest under the data (about 0.8 for real points: the rest lie
    where the rings cross). Both count: a point far off every ring is no sample of y, however
    surely the nearest ring is y's."""
    on_ring = ring_distance(x)[torch.arange(len(x)), y] < 3 * RING_BLUR
    return (on_ring & (ring_posterior(x).argmax(1) == y)).float().mean().item()


def ring_angle_entropy(x, y, bins=12):
    """Diversity: where on its class's circle each point lies, as the entropy (bits) of its angle
    around RING_CENTRES[y] in `bins` sectors, averaged over the classes present (log2 12 = 3.58
    bits if spread evenly, 0 if every point sits in one sector)."""
    offset = x.float() - RING_CENTRES[y]
    sector = ((torch.atan2(offset[:, 1], offset[:, 0]) + math.pi) / (2 * math.pi) * bins).long()
    entropies = []
    for label in y.unique():
        p = torch.bincount(sector[y == label].clamp(max=bins - 1), minlength=bins).float()
        p = p[p > 0] / p.sum()
        entropies.append(-(p * p.log2()).sum())
    return torch.stack(entropies).mean().item()


class PointDenoiser(nn.Module):
    """An MLP eps(x_t, t, y) for 2-D points; with num_classes > 0, label num_classes is the null
    label of classifier-free guidance (y = None means it). It reads each coordinate as sinusoids,
    as the U-Net reads t: a small MLP of the raw coordinates is too smooth to draw thin rings."""

    def __init__(self, num_classes=0, width=256, coordinate_dim=64, coordinate_scale=10.0):
        super().__init__()
        self.num_classes, self.width = num_classes, width
        self.coordinate_dim, self.coordinate_scale = coordinate_dim, coordinate_scale
        self.label = nn.Embedding(num_classes + 1, width) if num_classes else None
        self.net = nn.Sequential(nn.Linear(2 * coordinate_dim + width, width), nn.SiLU(),
                                 nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width),
                                 nn.SiLU(), nn.Linear(width, 2))

    def forward(self, x_t, t, y=None):  # (B, 2), (B,), (B,) -> (B, 2)
        emb = timestep_embedding(t, self.width)
        if self.label is not None:
            emb = emb + self.label(torch.full_like(t, self.num_classes) if y is None else y)
        coordinates = [timestep_embedding(self.coordinate_scale * x_t[:, i], self.coordinate_dim)
                       for i in range(2)]                                    # 2 x (B, dim)
        return self.net(torch.cat([*coordinates, emb], 1))


class PointClassifier(nn.Module):
    """p(y | x_t, t) for 2-D points, as logits: the noisy classifier of classifier guidance."""

    def __init__(self, num_classes=3, width=128):
        super().__init__()
        self.width = width
        self.net = nn.Sequential(nn.Linear(2 + width, width), nn.SiLU(), nn.Linear(width, width),
                                 nn.SiLU(), nn.Linear(width, num_classes))

    def forward(self, x_t, t):  # (B, 2), (B,) -> (B, classes)
        return self.net(torch.cat([x_t, timestep_embedding(t, self.width)], 1))


def fit_ring_toy(net, diffusion, steps, batch_size=256, p_uncond=0.1):
    """Train a PointDenoiser (the simple loss, its label dropped p_uncond of the time) or a
    PointClassifier (cross-entropy on noised points) on toy_rings with Adam, the rate decaying
    to 0 on a cosine; returns the last step's loss."""
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
    for step in range(steps):
        x0, y = toy_rings(batch_size)                                         # (B, 2), (B,)
        t = torch.randint(0, diffusion.num_timesteps, (batch_size,))
        if isinstance(net, PointDenoiser):
            y = drop_labels(y, p_uncond, null_label=net.num_classes)
            loss = diffusion.training_loss(lambda x_t, t: net(x_t, t, y), x0, t)
        else:
            x_t = diffusion.q_sample(x0, t, torch.randn_like(x0))
            loss = F.cross_entropy(net(x_t, t), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        decay.step()
    return loss.item()


if __name__ == "__main__":
    # The toy: a PointDenoiser learns eps(x_t, t, y) with the label dropped 10% of the time, a
    # PointClassifier learns p(y | x_t, t) on noised points. Then both guidances draw class 0 (the
    # top ring) at growing scales: fidelity (on ring 0, where class 0 is the likeliest) rises,
    # diversity (where on the ring they lie) falls.
    import os
    import time

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    torch.manual_seed(0)
    diffusion = GaussianDiffusion(linear_beta_schedule(200), clip_x0="none")
    model, classifier = PointDenoiser(num_classes=3), PointClassifier()
    start = time.time()
    for net, steps in ((model, 4000), (classifier, 2000)):
        loss = fit_ring_toy(net, diffusion, steps)
        print(f"trained {type(net).__name__}: loss {loss:.3f} ({time.time() - start:.0f} s)")
    n = 1000
    label, null = torch.zeros(n, dtype=torch.long), torch.full((n,), 3)
    points, y = toy_rings(3 * n)
    panels = [("data, class 0", points[y == 0])]
    with torch.no_grad():
        for w in (1.0, 3.0, 10.0):
            fn = classifier_free_guidance(model, label, null, w)
            panels.append((f"classifier-free w = {w:g}", diffusion.ddim_sample_loop(fn, (n, 2))))
        unconditional = lambda x_t, t: model(x_t, t, null)  # noqa: E731
        panels.append(("classifier guidance s = 1", diffusion.ddim_sample_loop(
            unconditional, (n, 2), cond_fn=classifier_guidance(classifier, label, 1.0))))
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), sharex=True,
                             sharey=True)
    for ax, (title, points) in zip(axes, panels):
        label = torch.zeros(len(points), dtype=torch.long)
        fidelity, diversity = ring_fidelity(points, label), ring_angle_entropy(points, label)
        print(f"{title}: fidelity {fidelity:.2f}, diversity {diversity:.2f} bits")
        ax.scatter(points[:, 0], points[:, 1], s=2)
        ax.set_title(f"{title}\nfidelity {fidelity:.2f}, angle entropy {diversity:.2f} bits",
                     fontsize=9)
        ax.set_aspect("equal")
    os.makedirs("out", exist_ok=True)
    fig.savefig("out/diffusion_demo.png", dpi=80, bbox_inches="tight")
    print("wrote out/diffusion_demo.png")
