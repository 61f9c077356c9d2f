"""The notebooks' exercise checkers: each runs the reader's function on fixed inputs, compares it
with the project's own implementation (or a closed form) and says plainly whether it is right.

    check_q_sample(my_q_sample)   # prints "q_sample: right" or what is wrong; returns True/False

A function that still raises NotImplementedError is "not answered yet". tests/test_notebooks.py
checks every checker against notebooks/solutions.py (right) and against a wrong answer (wrong).
"""
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import clip  # noqa: E402
import prior  # noqa: E402
import unclip  # noqa: E402
import vae  # noqa: E402
from diffusion import (ClassifierConfig, GaussianDiffusion, NoisyClassifier,  # noqa: E402
                       classifier_free_guidance, classifier_guidance, cosine_beta_schedule)
from upsample import Upsampler, UpsamplerConfig  # noqa: E402
from vqvae import VectorQuantizer, VQVAEConfig  # noqa: E402


def verdict(name, answer, expected, *inputs, atol=1e-5):
    """Call answer(*inputs), compare it with expected (a tensor), print and return the verdict."""
    try:
        got = answer(*inputs)
    except NotImplementedError:
        print(f"{name}: not answered yet (the function still raises NotImplementedError)")
        return False
    except Exception as e:  # a mistake in the answer: say what, without a traceback
        print(f"{name}: not yet right: it raised {type(e).__name__}: {e}")
        return False
    if not torch.is_tensor(got):
        print(f"{name}: not yet right: expected a tensor, got {type(got).__name__}")
        return False
    if got.shape != expected.shape:
        print(f"{name}: not yet right: shape {tuple(got.shape)}, expected "
              f"{tuple(expected.shape)}")
        return False
    error = (got.double() - expected.double()).abs().max().item()
    if not error <= atol:  # NaN counts as wrong
        print(f"{name}: not yet right: largest difference from the answer {error:.3g}")
        return False
    print(f"{name}: right")
    return True


def _inputs(seed=0):
    return torch.Generator().manual_seed(seed)


# 1. Auto-encoders ------------------------------------------------------------------------------

def check_gaussian_kl(answer):
    """answer(mean, logvar) -> (B,) KL(N(mean, exp(logvar)) || N(0, I)), summed over dims."""
    g = _inputs()
    mean, logvar = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    return verdict("gaussian_kl", answer, vae.gaussian_kl(mean, logvar), mean, logvar)


def check_reparameterise(answer):
    """answer(mean, logvar, eps) -> z: a sample of N(mean, exp(logvar)) made from eps ~ N(0, I)."""
    g = _inputs()
    mean, logvar, eps = (torch.randn(5, 4, generator=g) for _ in range(3))
    return verdict("reparameterise", answer, mean + torch.exp(0.5 * logvar) * eps,
                   mean, logvar, eps)


# 2. VQ-VAE -------------------------------------------------------------------------------------

def check_nearest_code(answer):
    """answer(flat (N, D), codebook (K, D)) -> (N,) index of each vector's nearest code."""
    g = _inputs()
    quantizer = VectorQuantizer(VQVAEConfig(num_codes=16, embedding_dim=4))
    with torch.no_grad():
        quantizer.codebook.copy_(torch.randn(16, 4, generator=g))
    flat = torch.randn(50, 4, generator=g)
    return verdict("nearest_code", answer, quantizer.nearest(flat), flat,
                   quantizer.codebook.detach(), atol=0)


def check_straight_through(answer):
    """answer(z_e, z_q) -> a tensor equal to z_q whose gradient flows to z_e unchanged."""
    g = _inputs()
    z_e = torch.randn(2, 4, 3, 3, generator=g, requires_grad=True)
    z_q = torch.randn(2, 4, 3, 3, generator=g)
    weights = torch.randn(2, 4, 3, 3, generator=g)

    def value_and_gradient(z_e, z_q):
        z_e.grad = None
        out = answer(z_e, z_q)
        if not out.requires_grad:  # no gradient can reach z_e at all
            return torch.full((2, 2, 4, 3, 3), float("nan"))
        (out * weights).sum().backward()  # the gradient reaching z_e must be `weights` itself
        return torch.stack([out.detach(), z_e.grad])
    return verdict("straight_through", value_and_gradient, torch.stack([z_q, weights]), z_e, z_q)


# 3. DDPM ---------------------------------------------------------------------------------------

def _diffusion():
    return GaussianDiffusion(cosine_beta_schedule(1000))


def check_q_sample(answer):
    """answer(diffusion, x0, t, noise) -> x_t, DDPM eq. 4."""
    g, diffusion = _inputs(), _diffusion()
    x0, noise = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    return verdict("q_sample", answer, diffusion.q_sample(x0, t, noise), diffusion, x0, t, noise)


def check_q_posterior_mean(answer):
    """answer(diffusion, x0, x_t, t) -> the mean of q(x_{t-1} | x_t, x_0), DDPM eq. 7."""
    g, diffusion = _inputs(), _diffusion()
    x0, x_t = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    t = torch.tensor([1, 10, 500, 999])
    return verdict("q_posterior_mean", answer, diffusion.q_posterior(x0, x_t, t)[0],
                   diffusion, x0, x_t, t)


# 4. Guidance -----------------------------------------------------------------------------------

def check_classifier_free_guidance(answer):
    """answer(out_cond, out_uncond, guidance_scale) -> the guided output."""
    g = _inputs()
    out_cond, out_uncond = torch.randn(3, 2, generator=g), torch.randn(3, 2, generator=g)
    x_t, t, w = torch.zeros(3, 2), torch.zeros(3, dtype=torch.long), 3.0

    def model_fn(x, t, c):  # the conditional outputs for c = 1, the unconditional for c = 0
        return torch.where(c[:, None] == 1, torch.cat([out_cond, out_cond]),
                           torch.cat([out_uncond, out_uncond]))
    expected = classifier_free_guidance(model_fn, torch.ones(3), torch.zeros(3), w)(x_t, t)
    return verdict("classifier_free_guidance", answer, expected, out_cond, out_uncond, w)


def check_classifier_gradient(answer):
    """answer(classifier, x_t, t, y) -> grad over x_t of sum_i log p(y_i | x_t_i, t_i)."""
    torch.manual_seed(0)
    classifier = NoisyClassifier(ClassifierConfig(resolution=8, channels=8, channel_mult=(1,),
                                                  num_res_blocks=1, attention_resolutions=(),
                                                  num_classes=3))
    g = _inputs()
    x_t, t, y = torch.randn(4, 3, 8, 8, generator=g), torch.tensor([5, 50, 500, 900]), \
        torch.tensor([0, 1, 2, 1])
    expected = classifier_guidance(classifier, y, 1.0)(x_t, t)
    return verdict("classifier_gradient", answer, expected, classifier, x_t, t, y)


# 5. CLIP ---------------------------------------------------------------------------------------

def check_clip_logits(answer):
    """answer(image_features (B, D), text_features (B, D), logit_scale) -> (B, B) scaled cosine
    similarities; logit_scale is the log of the inverse temperature, as CLIP learns it."""
    g = _inputs()
    image_features, text_features = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    logit_scale = torch.tensor(2.5)
    expected = (logit_scale.exp() * F.normalize(image_features, dim=-1)
                @ F.normalize(text_features, dim=-1).T)
    return verdict("clip_logits", answer, expected, image_features, text_features, logit_scale)


def check_contrastive_loss(answer):
    """answer(logits (B, B), matching pairs on the diagonal) -> the symmetric InfoNCE loss."""
    logits = 4 * torch.randn(6, 6, generator=_inputs())
    return verdict("contrastive_loss", answer, clip.contrastive_loss(logits), logits)


# 6. The prior ----------------------------------------------------------------------------------

def check_normalise_embedding(answer):
    """answer(z (B, D)) -> the embedding at unit length times sqrt(D), the prior's scale."""
    z = torch.randn(4, 16, generator=_inputs())
    return verdict("normalise_embedding", answer, clip.normalise_embedding(z), z)


def check_select_candidates(answer):
    """answer(candidates (B, K, D), z_t (B, D)) -> (B, D): per caption, the candidate with the
    highest dot product with z_t."""
    g = _inputs()
    candidates, z_t = torch.randn(5, 3, 4, generator=g), torch.randn(5, 4, generator=g)
    return verdict("select_candidates", answer, prior.select_candidates(candidates, z_t),
                   candidates, z_t)


# 7. Decoder and upsamplers ---------------------------------------------------------------------

def check_upsampler_condition(answer):
    """answer(low (B, 3, r, r), resolution) -> the low-resolution image resized to resolution
    by bilinear interpolation (pixel centres aligned: align_corners=False)."""
    low = torch.rand(2, 3, 8, 8, generator=_inputs()) * 2 - 1
    upsampler = Upsampler(UpsamplerConfig(resolution=16, low_resolution=8, channels=8,
                                          channel_mult=(1,), num_res_blocks=1))
    return verdict("upsampler_condition", answer, upsampler.condition(low), low, 16)


def check_drop_condition(answer):
    """answer(c (B, ...), u (B,) uniform draws, p_uncond) -> c with row i zeroed where
    u_i < p_uncond: classifier-free guidance's training-time dropout of a condition."""
    g = _inputs()
    c, u = torch.randn(8, 3, 2, generator=g), torch.rand(8, generator=g)
    return verdict("drop_condition", answer, c * (u >= 0.3).float()[:, None, None], c, u, 0.3)


# 8. unCLIP end to end --------------------------------------------------------------------------

def check_slerp(answer):
    """answer(a (D,), b (D,), theta (K,)) -> (K, D) spherical interpolation on a's sphere."""
    g = _inputs()
    a, b = torch.randn(8, generator=g), torch.randn(8, generator=g)
    a, b = clip.normalise_embedding(a), clip.normalise_embedding(b)
    theta = torch.linspace(0, 1, 5)
    return verdict("slerp", answer, unclip.slerp(a, b, theta), a, b, theta)


def check_text_diff(answer):
    """answer(z_i, z_t_before, z_t_after, theta) -> (K, D) the image embedding rotated towards
    the normalised text difference (unCLIP Fig. 5)."""
    g = _inputs()
    z_i, before, after = (clip.normalise_embedding(torch.randn(8, generator=g)) for _ in range(3))
    theta = torch.linspace(0, 0.5, 4)
    return verdict("text_diff", answer, unclip.text_diff(z_i, before, after, theta),
                   z_i, before, after, theta)


CHECKERS = {  # notebook -> its exercises, in order
    "01_autoencoders": [check_gaussian_kl, check_reparameterise],
    "02_vqvae": [check_nearest_code, check_straight_through],
    "03_ddpm": [check_q_sample, check_q_posterior_mean],
    "04_guidance": [check_classifier_free_guidance, check_classifier_gradient],
    "05_clip": [check_clip_logits, check_contrastive_loss],
    "06_prior": [check_normalise_embedding, check_select_candidates],
    "07_decoder_upsamplers": [check_upsampler_condition, check_drop_condition],
    "08_unclip": [check_slerp, check_text_diff],
}
