"""Worked answers to the notebooks' exercises, one function per exercise, each written from the
equation rather than copied from the module it is checked against. Instructors: remove this file
from the copy you hand out (tests/test_notebooks.py uses it to prove every checker can say
"right").
"""
import math

import torch
import torch.nn.functional as F


def gaussian_kl(mean, logvar):
    # KL(N(mu, s^2) || N(0, 1)) = (mu^2 + s^2 - 1 - log s^2) / 2 per dimension, summed.
    return 0.5 * (mean ** 2 + logvar.exp() - 1 - logvar).sum(1)


def reparameterise(mean, logvar, eps):
    return mean + (0.5 * logvar).exp() * eps


def nearest_code(flat, codebook):
    return torch.cdist(flat, codebook).argmin(1)


def straight_through(z_e, z_q):
    return z_e + (z_q - z_e).detach()


def q_sample(diffusion, x0, t, noise):
    abar = diffusion.alphas_cumprod[t].view(-1, 1, 1, 1)
    return abar.sqrt() * x0 + (1 - abar).sqrt() * noise


def q_posterior_mean(diffusion, x0, x_t, t):
    beta = diffusion.betas[t].view(-1, 1, 1, 1)
    abar = diffusion.alphas_cumprod[t].view(-1, 1, 1, 1)
    abar_prev = diffusion.alphas_cumprod[t - 1].view(-1, 1, 1, 1)
    return (abar_prev.sqrt() * beta * x0 + (1 - beta).sqrt() * (1 - abar_prev) * x_t) / (1 - abar)


def ddpm_loss(model_fn, diffusion, x0, t, noise):
    # Algorithm 1: noise x_0 to step t in one go (eq. 4), regress the network on the noise.
    abar = diffusion.alphas_cumprod[t].to(x0.dtype).view(-1, *[1] * (x0.dim() - 1))
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    return (noise - model_fn(x_t, t)).pow(2).mean()


def ddim_step(diffusion, x_t, eps, t, t_prev):
    # DDIM eq. 12, sigma = 0: predict x_0, then move it to t_prev along the same eps.
    shape = (-1, *[1] * (x_t.dim() - 1))  # one value per item, broadcast over the rest
    abar = diffusion.alphas_cumprod[t].to(x_t.dtype).view(shape)
    abar_prev = torch.where(t_prev >= 0, diffusion.alphas_cumprod[t_prev.clamp(min=0)], 1.0)
    abar_prev = abar_prev.to(x_t.dtype).view(shape)
    x0 = (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()
    return abar_prev.sqrt() * x0 + (1 - abar_prev).sqrt() * eps


def classifier_free_guidance(out_cond, out_uncond, guidance_scale):
    return out_uncond + guidance_scale * (out_cond - out_uncond)


def classifier_gradient(classifier, x_t, t, y):
    x = x_t.clone().requires_grad_(True)
    log_p = classifier(x, t).log_softmax(-1).gather(1, y[:, None]).sum()
    return torch.autograd.grad(log_p, x)[0]


def clip_logits(image_features, text_features, logit_scale):
    image = image_features / image_features.norm(dim=-1, keepdim=True)
    text = text_features / text_features.norm(dim=-1, keepdim=True)
    return logit_scale.exp() * image @ text.T


def contrastive_loss(logits):
    labels = torch.arange(len(logits))
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def normalise_embedding(z):
    return z / z.norm(dim=-1, keepdim=True) * math.sqrt(z.shape[-1])


def select_candidates(candidates, z_t):
    scores = (candidates * z_t[:, None, :]).sum(-1)                 # (B, K)
    return candidates[torch.arange(len(candidates)), scores.argmax(1)]


def prior_loss(model_fn, diffusion, z_i, t, noise):
    # unCLIP section 2.1: noise z_i as DDPM's eq. 4 does, but regress on z_i itself, not the noise.
    abar = diffusion.alphas_cumprod[t].to(z_i.dtype)[:, None]
    z_noisy = abar.sqrt() * z_i + (1 - abar).sqrt() * noise
    return (model_fn(z_noisy, t) - z_i).pow(2).mean()


def upsampler_condition(low, resolution):
    return F.interpolate(low, size=(resolution, resolution), mode="bilinear",
                         align_corners=False)


def drop_condition(c, u, p_uncond):
    keep = (u >= p_uncond).to(c.dtype)
    return c * keep.view(-1, *[1] * (c.dim() - 1))


def embedding_context(z_i, caption, embedding_proj, num_tokens):
    b, _, width = caption.shape
    return torch.cat([embedding_proj(z_i).reshape(b, num_tokens, width), caption], dim=1)


def slerp(a, b, theta):
    cos = torch.dot(a, b) / (a.norm() * b.norm())
    omega = torch.arccos(cos)
    a_hat, b_hat = a / a.norm(), b / b.norm()
    mix = (torch.sin((1 - theta)[:, None] * omega) * a_hat
           + torch.sin(theta[:, None] * omega) * b_hat) / torch.sin(omega)
    return mix * a.norm()


def text_diff(z_i, z_t_before, z_t_after, theta):
    difference = z_t_after - z_t_before
    return slerp(z_i, normalise_embedding(difference[None])[0], theta)


def frechet_distance(mu_1, sigma_1, mu_2, sigma_2):
    # Tr((S_1 S_2)^(1/2)) is the sum of the square roots of the eigenvalues of S_1 S_2, which
    # are real and non-negative for two covariances (up to round-off: the real part, clamped).
    eigenvalues = torch.linalg.eigvals(sigma_1 @ sigma_2).real.clamp(min=0)
    return ((mu_1 - mu_2).pow(2).sum() + sigma_1.trace() + sigma_2.trace()
            - 2 * eigenvalues.sqrt().sum())
