"""unCLIP: text to image through CLIP's latents (Ramesh et al. 2022, arXiv 2204.06125, Fig. 2).

The paper's cascade, as code. A caption y goes through four trained models:
    y -> CLIP text encoder -> z_t                          (clip.py, frozen)
      -> prior P(z_i | y)   -> z_i, a CLIP image embedding (prior.py, section 2.2)
      -> decoder P(x | z_i, y) -> a small image            (decoder.py, section 2.1)
      -> upsamplers         -> the final image             (upsample.py, section 2.1)
so that P(x | y) = P(x | z_i, y) P(z_i | y)                (unCLIP eq. 1).

Because the decoder inverts CLIP's image embedding, the embedding itself becomes a handle on
images, with no caption at all (section 3):
  - variations (Fig. 3): decode one image's z_i many times: what CLIP keeps stays, the rest varies;
  - interpolations (Fig. 4): slerp between two images' z_i, decoding each with the same noise;
  - text diffs (Fig. 5): rotate an image's z_i towards the difference of two captions' z_t.

Defines: slerp, text_diff (the embedding operations); the cascade's two samplers, unclip_sample
(text -> images at every resolution) and decode (image embeddings -> images); and section 3's
figures from loaded models: image_embedding, variations, interpolate, text_diff_images.
Run `python unclip.py` after `python train.py` to draw a few prompts with the trained cascade;
`python sample.py variations|interpolate|text-diff ...` draws the figures from image files.
"""
import math

import torch
import torch.nn.functional as F

from clip import image_embeddings, normalise_embedding


def slerp(a, b, theta):
    """Spherical interpolation between (D,) vectors a and b at fractions theta (K,) -> (K, D),
    on the sphere of their (common) norm."""
    a_unit, b_unit = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    omega = torch.acos((a_unit @ b_unit).clamp(-1 + 1e-7, 1 - 1e-7))
    theta = theta[:, None]
    unit = (torch.sin((1 - theta) * omega) * a_unit + torch.sin(theta * omega) * b_unit) \
        / torch.sin(omega)
    return unit * a.norm()


def text_diff(z_i, z_t_before, z_t_after, theta):
    """unCLIP Fig. 5: rotate an image embedding z_i (D,) towards the normalised difference of two
    captions' text embeddings, z_d = norm(z_t_after - z_t_before), by slerp at fractions theta."""
    return slerp(z_i, normalise_embedding(z_t_after - z_t_before), theta)


@torch.no_grad()
def unclip_sample(clip, prior, decoder, upsamplers, captions, prior_guidance=1.0,
                  decoder_guidance=None, steps=None, upsampler_steps=None, bf16=False):
    """Captions -> the images at every resolution of the cascade (a list: the decoder's
    (B, 3, r, r), then each upsampler's; the last is the final) and the prior's image embeddings
    (B, D). decoder_guidance, steps (the decoder's) and upsampler_steps None: each model's own
    (its config's). bf16: the decoder and upsamplers in bfloat16 autocast (twice as fast where the
    device computes bf16 natively, as many scenes right: docs/decisions.md)."""
    z_t, tokens = clip.encode_text(captions, return_tokens=True)
    z_t = normalise_embedding(z_t)
    z_i = prior.sample(z_t, tokens, prior_guidance)
    with torch.autocast(z_t.device.type, dtype=torch.bfloat16, enabled=bf16):
        images = [decoder.sample(z_i, tokens, decoder_guidance, steps)]
        for upsampler in upsamplers:
            images.append(upsampler.sample(images[-1], upsampler_steps))
    return images, z_i


@torch.no_grad()
def decode(clip, decoder, upsamplers, z_i, decoder_guidance=None, steps=None,
           upsampler_steps=None, same_noise=False):
    """Image embeddings (B, D) alone (no caption) -> final images, through the decoder and the
    upsamplers. With same_noise, every image starts from one x_T: only the embedding differs."""
    def noise(resolution):
        x_T = torch.randn(1 if same_noise else len(z_i), 3, resolution, resolution)
        return x_T.to(z_i.device).expand(len(z_i), -1, -1, -1)
    # No caption: zeros, the decoder's "not given", as many tokens as in training.
    tokens = torch.zeros(len(z_i), clip.cfg.context_length, decoder.cfg.text_width,
                         device=z_i.device)
    images = decoder.sample(z_i, tokens, decoder_guidance, steps,
                            noise=noise(decoder.cfg.resolution))
    for upsampler in upsamplers:
        images = upsampler.sample(images, upsampler_steps, noise=noise(upsampler.cfg.resolution))
    return images


# ----------------------------------------------------------------------------------------------
# Section 3's figures. Each takes images (3, R, R) in [-1, 1] at CLIP's resolution and returns the
# final images (n, 3, R', R'); decoder_guidance, steps and upsampler_steps as in decode.

def image_embedding(clip, image):
    """An image (3, R, R) -> its CLIP image embedding z_i (D,), on normalise_embedding's scale."""
    return image_embeddings(clip, image[None])[0] * math.sqrt(clip.cfg.embed_dim)


@torch.no_grad()
def variations(clip, decoder, upsamplers, image, n, decoder_guidance=None, steps=None,
               upsampler_steps=None):
    """Fig. 3: the image's z_i decoded n times, each from its own x_T. The paper also adds noise
    at every DDIM step (eta > 0); here the starting noise alone makes the images differ."""
    z_i = image_embedding(clip, image).expand(n, -1)                       # (D,) -> (n, D)
    return decode(clip, decoder, upsamplers, z_i, decoder_guidance, steps, upsampler_steps)


@torch.no_grad()
def interpolate(clip, decoder, upsamplers, image_a, image_b, n, decoder_guidance=None,
                steps=None, upsampler_steps=None):
    """Fig. 4: n embeddings on the slerp from image_a's z_i to image_b's, decoded from one x_T so
    that only the embedding changes along the row."""
    a, b = image_embedding(clip, image_a), image_embedding(clip, image_b)
    z_i = slerp(a, b, torch.linspace(0, 1, n, device=a.device))
    return decode(clip, decoder, upsamplers, z_i, decoder_guidance, steps, upsampler_steps,
                  same_noise=True)


@torch.no_grad()
def text_diff_images(clip, decoder, upsamplers, image, before, after, n, decoder_guidance=None,
                     steps=None, upsampler_steps=None):
    """Fig. 5: the image's z_i turned towards the text diff from caption `before` to `after`, at
    n angles theta from 0 to 0.5, the top of the paper's range for Fig. 5 (0.25 to 0.50), so the
    row starts at the image itself; decoded from one x_T."""
    z_t = normalise_embedding(clip.encode_text([before, after]))                   # (2, D)
    z_i = image_embedding(clip, image)
    z_i = text_diff(z_i, z_t[0], z_t[1], torch.linspace(0, 0.5, n, device=z_i.device))
    return decode(clip, decoder, upsamplers, z_i, decoder_guidance, steps, upsampler_steps,
                  same_noise=True)


if __name__ == "__main__":
    import os
    import sys

    import data as datasets
    from checkpoint import load_unclip
    if not os.path.exists("out/upsampler.pt"):
        sys.exit("no trained cascade in out/: run `python train.py` first (16-20 minutes)")
    clip_model, prior, decoder, upsamplers = load_unclip("out")
    prompts = ["a large red circle in the center", "a small blue square at the top",
               "a large green triangle to the left of a small yellow circle"]
    torch.manual_seed(0)
    stages, _ = unclip_sample(clip_model, prior, decoder, upsamplers,
                              [p for p in prompts for _ in range(4)])
    datasets.save_grid(stages[-1], "out/unclip_demo.png", nrow=4, scale=2)
    print("wrote out/unclip_demo.png: one row of four samples per prompt:\n" + "\n".join(prompts))
