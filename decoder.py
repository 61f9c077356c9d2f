"""The decoder: a diffusion model that inverts CLIP's image encoder (unCLIP section 2.1).

Given a CLIP image embedding z_i (and optionally the caption), generate an image whose embedding
is z_i. It is GLIDE's text-conditional U-Net (Nichol et al. 2021, arXiv 2112.10741) with two
additions, as the paper describes:
  - z_i is projected and added to the timestep embedding, so every residual block sees it;
  - z_i is projected into four extra context tokens, concatenated with the caption's token
    features, which every attention layer attends to.
GLIDE trains its own text transformer for the caption tokens; here they are the frozen CLIP
text transformer's per-token features, which saves training one (a cheaper, documented change).

For classifier-free guidance the condition is dropped in training: z_i 10% of the time and the
caption 50% (both set to zeros, the null condition). At sampling,
    out = out(x_t | null) + w (out(x_t | z_i, y) - out(x_t | null))
with diffusion.py's classifier_free_guidance, at w = 1.5 unless told (guidance_scale: a stronger
w draws two-object scenes right less often), over 15 DDIM steps (sample_steps: more draw no more
scenes right; the evidence for both is in docs/decisions.md). What the decoder is given decides
what it can do: z_i alone gives variations of an image (Fig. 3), z_i from the prior gives text
to image, the caption alone is a GLIDE-like text-to-image model (the paper's Fig. 8 ablation).

Defines: DecoderConfig, embedding_context, Decoder (context, forward, loss, sample).
Run `python decoder.py` to fit a decoder to CLIP-like embeddings of shapes scenes (a minute).
"""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from diffusion import DiffusionConfig, classifier_free_guidance, drop_condition, make_diffusion
from unet import UNet, UNetConfig


@dataclass
class DecoderConfig(DiffusionConfig, UNetConfig):
    embed_dim: int = 64             # CLIP's image embedding size
    text_width: int = 96            # the caption's token features (CLIP's text transformer)
    context_dim: int = 128          # width of the context tokens attention layers read
    embedding_tokens: int = 4       # context tokens made from z_i (the paper: four)
    min_snr_gamma: float = 5.0      # cap on the loss weight, so nearly clean steps do not
                                    # dominate it (Min-SNR; GaussianDiffusion.loss_weight)
    min_snr_offset: float = 0.5     # weight min(SNR + 0.5, 5): the noisiest steps, where the
                                    # layout is set, keep half the simple loss's weight
    p_drop_embedding: float = 0.1   # z_i zeroed this often in training
    p_drop_caption: float = 0.5     # the caption zeroed this often
    dropout: float = 0.0            # the U-Net's: a few epochs of training do not overfit
    guidance_scale: float = 1.5     # w when sampling: two-object scenes are right most often
    sample_steps: int = 15          # DDIM steps: more draw no more scenes right


def embedding_context(z_i, caption, embedding_proj, num_tokens):
    """z_i (B, E) -> num_tokens context tokens by one linear map (E -> num_tokens C), put before
    the caption's projected token features (B, L, C): (B, num_tokens + L, C)."""
    extra = embedding_proj(z_i).view(len(z_i), num_tokens, -1)            # (B, num_tokens, C)
    return torch.cat([extra, caption], dim=1)


class Decoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        # Its vector_embed adds the projected z_i to the timestep embedding (GLIDE's way).
        self.unet = UNet(cfg, embed_dim=cfg.embed_dim, context_dim=cfg.context_dim)
        self.caption_proj = nn.Linear(cfg.text_width, cfg.context_dim)
        self.embedding_proj = nn.Linear(cfg.embed_dim, cfg.embedding_tokens * cfg.context_dim)
        self.diffusion = make_diffusion(cfg, cfg.min_snr_gamma, cfg.min_snr_offset)

    def context(self, z_i, tokens):
        """z_i (B, E), caption features (B, L, W) -> context tokens (B, 4 + L', context_dim)
        and which of them to attend to (B, 4 + L'): not the caption's padding, whose features
        are zero (as are those of a dropped caption), and L' stops at the longest caption."""
        present = tokens.abs().amax(-1) > 0                                     # (B, L)
        length = int(present.any(0).nonzero().max()) + 1 if present.any() else 0
        caption = self.caption_proj(tokens[:, :length])                        # (B, L', C)
        context = embedding_context(z_i, caption, self.embedding_proj, self.cfg.embedding_tokens)
        return context, F.pad(present[:, :length], (self.cfg.embedding_tokens, 0), value=True)

    def forward(self, x_t, t, z_i, tokens):
        context, mask = self.context(z_i, tokens)
        return self.unet(x_t, t, embedding=z_i, context=context, context_mask=mask)

    def loss(self, x0, z_i, tokens):
        """x0 (B, 3, R, R) in [-1, 1], z_i (B, E) normalised, tokens (B, L, W)."""
        z_i = drop_condition(z_i, self.cfg.p_drop_embedding)
        tokens = drop_condition(tokens, self.cfg.p_drop_caption)
        loss = self.diffusion.training_loss(lambda x, t: self(x, t, z_i, tokens), x0)
        return loss, {"mse": loss.item()}

    @torch.no_grad()
    def sample(self, z_i, tokens, guidance_scale=None, steps=None, noise=None):
        """Images (B, 3, R, R) in [-1, 1] for z_i (B, E) and tokens (B, L, W); zeros in either
        mean "not given". guidance_scale and steps None: the config's. noise (B, 3, R, R) fixes
        x_T (interpolations hold it fixed)."""
        null = (torch.zeros_like(z_i), torch.zeros_like(tokens))
        w = self.cfg.guidance_scale if guidance_scale is None else guidance_scale
        model_fn = classifier_free_guidance(lambda x, t, c: self(x, t, *c), (z_i, tokens), null, w)
        shape = (len(z_i), self.cfg.in_channels, self.cfg.resolution, self.cfg.resolution)
        x = self.diffusion.ddim_sample_loop(model_fn, shape, steps or self.cfg.sample_steps,
                                            device=z_i.device, noise=noise)
        return x.clamp(-1, 1)


if __name__ == "__main__":
    # Without a trained CLIP: a fixed random linear map of the image stands in for the image
    # encoder, which is enough to show that the decoder learns to invert an embedding.
    import time
    import data as datasets
    torch.manual_seed(0)
    train_data = datasets.shapes_data(4000, 16, seed=0, objects=1)
    encoder = torch.randn(3 * 16 * 16, 64) / 28
    cfg = DecoderConfig(resolution=16, channels=32, channel_mult=(1, 2), num_res_blocks=1,
                        attention_resolutions=(8,), text_width=8, context_dim=32, dropout=0.0)
    model = Decoder(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    start = time.time()
    for step in range(600):
        x, _, _ = train_data.batch(torch.randint(len(train_data), (64,)))
        loss, _ = model.loss(x, x.flatten(1) @ encoder, torch.zeros(64, 1, 8))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 200 == 0:
            print(f"step {step}: loss {loss.item():.4f} ({time.time() - start:.0f}s)")
    x, captions, _ = datasets.shapes_data(16, 16, objects=1, stream="test").batch(torch.arange(16))
    recon = model.eval().sample(x.flatten(1) @ encoder, torch.zeros(16, 1, 8), 3.0, steps=25)
    print(f"decoded from the embedding: mse {(recon - x).pow(2).mean():.3f} "
          f"(mean image {(x - x.mean(0)).pow(2).mean():.3f})")
    datasets.save_grid(torch.cat([x, recon]), "out/decoder_demo.png", nrow=16, scale=4)
    print("wrote out/decoder_demo.png: originals above, decoded below")
