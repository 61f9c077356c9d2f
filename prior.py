"""The prior: from a caption to a CLIP image embedding (unCLIP section 2.2).

CLIP maps a caption y to a text embedding z_t and its image x to an image embedding z_i; the two
point the same way only roughly. unCLIP's decoder turns z_i back into an image, so going from text
to image needs a model of p(z_i | y): the prior. Sampling is then
    P(x | y) = P(x | z_i, y) P(z_i | y)                               (unCLIP eq. 1)
The paper tries two priors, both conditioned on the caption and on z_t:

The diffusion prior runs diffusion.py's Gaussian process on the vector z_i. Its network is a
decoder-only transformer with a causal mask over the sequence
    [caption tokens ..., z_t, timestep, noised z_i, query]
and the query's output is the clean z_i itself: the paper found predicting z_i better than
predicting the noise, and trains with
    L_prior = E_t || f(z_i^(t), t, y) - z_i ||^2                       (section 2.2).
The caption and z_t are dropped (zeroed) 10% of the time, for classifier-free guidance; sampling
draws two candidates per caption and keeps the one with the higher dot product with z_t.

The autoregressive prior (the paper's comparison) turns z_i into a short sequence of discrete
codes: project on the top principal components (PCA, ordered by variance), quantise each
coordinate into buckets, and predict the codes one by one with a causal transformer whose
prefix is the caption and z_t. (The paper also prefixes the quantised dot product z_i . z_t and
samples with a high one; that refinement is left out here.)

Both work on embeddings normalised by clip.normalise_embedding: unit length times sqrt(D), so the
coordinates have about unit variance, the scale of the diffusion's noise.

Defines: PrefixEncoder, drop_text, PriorConfig, DiffusionPrior (loss, sample),
select_candidates, ARPriorConfig, ARPrior (fit_codebook, encode, decode, loss, sample).
Run `python prior.py` to fit both priors to a toy caption -> embedding task in a minute.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from clip import Block, normalise_embedding
from diffusion import DiffusionConfig, classifier_free_guidance, drop_condition, make_diffusion
from unet import timestep_embedding


class PrefixEncoder(nn.Module):
    """The caption part of both priors' sequences: token features (B, L, text_width) and z_t
    (B, D) -> (B, L + 1, width)."""

    def __init__(self, cfg):
        super().__init__()
        self.token_proj = nn.Linear(cfg.text_width, cfg.width)
        self.text_proj = nn.Linear(cfg.embed_dim, cfg.width)

    def forward(self, tokens, z_t):
        return torch.cat([self.token_proj(tokens), self.text_proj(z_t)[:, None]], dim=1)


def drop_text(tokens, z_t, p_uncond):
    """Zero the caption's tokens (B, L, W) and z_t (B, D) together, for the same rows, with
    probability p_uncond: classifier-free guidance's null text condition."""
    keep = drop_condition(torch.ones(len(z_t), device=z_t.device), p_uncond)
    return tokens * keep[:, None, None], z_t * keep[:, None]


# ----------------------------------------------------------------------------------------------
# The diffusion prior.

@dataclass
class PriorConfig(DiffusionConfig):
    prediction: str = "x0"     # the clean z_i itself, as the paper found best (see above)
    clip_x0: str = "none"      # an embedding has no [-1, 1] range to clip to
    embed_dim: int = 64        # CLIP's joint embedding size (z_t and z_i)
    text_width: int = 96       # CLIP's text transformer width: the caption token features
    context_length: int = 24   # caption tokens (CLIP's)
    width: int = 64
    layers: int = 4
    heads: int = 4
    p_uncond: float = 0.1      # caption and z_t dropped this often in training


class DiffusionPrior(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.prefix = PrefixEncoder(cfg)
        self.time_embed = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w))
        self.image_proj = nn.Linear(cfg.embed_dim, w)
        self.query = nn.Parameter(0.02 * torch.randn(w))
        self.positional_embedding = nn.Parameter(0.01 * torch.randn(cfg.context_length + 4, w))
        self.blocks = nn.Sequential(*[Block(w, cfg.heads, causal=True) for _ in range(cfg.layers)])
        self.ln_final = nn.LayerNorm(w)
        self.out = nn.Linear(w, cfg.embed_dim)
        self.diffusion = make_diffusion(cfg)

    def forward(self, z_noisy, t, tokens, z_t):
        """Noised z_i (B, D), t (B,), caption features (B, L, W_text), z_t (B, D) -> z_i (B, D)."""
        b, w = len(z_noisy), self.cfg.width
        sequence = torch.cat([self.prefix(tokens, z_t),                              # (B, L+1, w)
                              self.time_embed(timestep_embedding(t, w))[:, None],   # (B, 1, w)
                              self.image_proj(z_noisy)[:, None],                     # (B, 1, w)
                              self.query.expand(b, 1, w)], dim=1)                    # (B, L+4, w)
        x = self.blocks(sequence + self.positional_embedding)
        return self.out(self.ln_final(x[:, -1]))  # the query token sees everything before it

    def loss(self, z_i, z_t, tokens):
        """All embeddings normalised (clip.normalise_embedding). -> (loss, figures)."""
        tokens, z_t = drop_text(tokens, z_t, self.cfg.p_uncond)
        loss = self.diffusion.training_loss(lambda x, t: self(x, t, tokens, z_t), z_i)
        return loss, {"mse": loss.item()}

    @torch.no_grad()
    def sample(self, z_t, tokens, guidance_scale=1.0, steps=64, candidates=2):
        """(B, D) image embeddings, normalised, for captions given as z_t (B, D) and tokens
        (B, L, W). DDIM over `steps` strided steps (the paper's prior used 64), classifier-free
        guided."""
        b = len(z_t)
        z_t = z_t.repeat_interleave(candidates, 0)                # (B K, D), K candidates
        tokens = tokens.repeat_interleave(candidates, 0)
        model_fn = classifier_free_guidance(
            lambda x, t, c: self(x, t, *c), (tokens, z_t),
            (torch.zeros_like(tokens), torch.zeros_like(z_t)), guidance_scale)
        z_i = self.diffusion.ddim_sample_loop(model_fn, z_t.shape, steps, device=z_t.device)
        z_i = normalise_embedding(z_i)  # back on the sphere the decoder was trained on
        return select_candidates(z_i.view(b, candidates, -1), z_t.view(b, candidates, -1)[:, 0])


def select_candidates(candidates, z_t):
    """(B, K, D) candidate image embeddings, (B, D) text embeddings -> (B, D): per caption, the
    candidate with the highest dot product with z_t (unCLIP section 2.2: two candidates)."""
    best = torch.einsum("bkd,bd->bk", candidates, z_t).argmax(1)    # (B,)
    return candidates[torch.arange(len(candidates)), best]


# ----------------------------------------------------------------------------------------------
# The autoregressive prior: PCA, buckets, next-code prediction.

@dataclass
class ARPriorConfig:
    embed_dim: int = 64
    text_width: int = 96
    context_length: int = 24
    width: int = 64
    layers: int = 4
    heads: int = 4
    pca_dim: int = 16          # components kept (the paper: 319 of 1,024; ours keep 99.5%)
    buckets: int = 32          # values per component (the paper: 1,024)
    p_uncond: float = 0.1


class ARPrior(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        k, n, w = cfg.pca_dim, cfg.buckets, cfg.width
        if k > cfg.embed_dim:
            raise ValueError(f"pca_dim {k} exceeds the embedding size {cfg.embed_dim}")
        # The codebook, set from data by fit_codebook (buffers: saved with the weights).
        self.register_buffer("pca_mean", torch.zeros(cfg.embed_dim))
        self.register_buffer("pca_components", torch.zeros(k, cfg.embed_dim))
        self.register_buffer("bucket_edges", torch.zeros(k, n - 1))
        self.register_buffer("bucket_centres", torch.zeros(k, n))
        self.prefix = PrefixEncoder(cfg)
        self.code_embed = nn.Embedding(k * n, w)  # each component has its own n values
        self.positional_embedding = nn.Parameter(0.01 * torch.randn(cfg.context_length + k, w))
        self.blocks = nn.Sequential(*[Block(w, cfg.heads, causal=True) for _ in range(cfg.layers)])
        self.ln_final = nn.LayerNorm(w)
        self.head = nn.Linear(w, n)

    @torch.no_grad()
    def fit_codebook(self, z_i):
        """PCA of (N, D) embeddings, then per component bucket edges at the quantiles (every
        bucket equally likely) and centres at each bucket's mean. Returns the variance kept."""
        k, n = self.cfg.pca_dim, self.cfg.buckets
        mean = z_i.mean(0)
        _, s, v = torch.linalg.svd(z_i - mean, full_matrices=False)   # rows of v: components
        self.pca_mean.copy_(mean)
        self.pca_components.copy_(v[:k])
        coords = (z_i - mean) @ v[:k].T                                  # (N, k)
        quantiles = torch.linspace(0, 1, n + 1, device=z_i.device)[1:-1]
        self.bucket_edges.copy_(torch.quantile(coords, quantiles, dim=0).T)
        codes = self.encode(z_i)                                         # (N, k)
        for j in range(k):
            sums = torch.zeros(n, device=z_i.device).index_add_(0, codes[:, j], coords[:, j])
            counts = torch.bincount(codes[:, j], minlength=n).clamp(min=1)
            self.bucket_centres[j] = sums / counts
        return (s[:k] ** 2).sum().item() / (s ** 2).sum().item()

    def encode(self, z_i):
        """(B, D) embeddings -> (B, k) codes in [0, buckets)."""
        coords = (z_i - self.pca_mean) @ self.pca_components.T
        return torch.stack([torch.bucketize(coords[:, j].contiguous(), self.bucket_edges[j])
                            for j in range(self.cfg.pca_dim)], dim=1)

    def decode(self, codes):
        """(B, k) codes -> (B, D) embeddings, renormalised to the embeddings' scale."""
        coords = self.bucket_centres.gather(1, codes.T).T                # (B, k)
        z = coords @ self.pca_components + self.pca_mean
        return F.normalize(z, dim=-1) * math.sqrt(z.shape[-1])

    def logits(self, codes, tokens, z_t):
        """Codes (B, j) so far -> (B, j + 1, buckets): the distribution of every next code."""
        offsets = torch.arange(codes.shape[1], device=codes.device) * self.cfg.buckets
        sequence = torch.cat([self.prefix(tokens, z_t), self.code_embed(codes + offsets)], dim=1)
        x = self.blocks(sequence + self.positional_embedding[:sequence.shape[1]])
        return self.head(self.ln_final(x[:, -(codes.shape[1] + 1):]))

    def loss(self, z_i, z_t, tokens):
        tokens, z_t = drop_text(tokens, z_t, self.cfg.p_uncond)
        codes = self.encode(z_i)                                          # (B, k)
        logits = self.logits(codes[:, :-1], tokens, z_t)                  # (B, k, buckets)
        loss = F.cross_entropy(logits.flatten(0, 1), codes.flatten())
        return loss, {"nll": loss.item()}

    @torch.no_grad()
    def sample(self, z_t, tokens, guidance_scale=1.0, temperature=1.0):
        """(B, D) embeddings, normalised, one code at a time; guidance mixes conditional and
        unconditional logits the way classifier-free guidance mixes a diffusion model's
        outputs."""
        next_logits = classifier_free_guidance(
            lambda codes, c: self.logits(codes, *c)[:, -1], (tokens, z_t),
            (torch.zeros_like(tokens), torch.zeros_like(z_t)), guidance_scale)
        codes = torch.zeros(len(z_t), 0, dtype=torch.long, device=z_t.device)
        for _ in range(self.cfg.pca_dim):
            logits = next_logits(codes)
            next_code = torch.multinomial(F.softmax(logits / temperature, -1), 1)
            codes = torch.cat([codes, next_code], dim=1)
        return normalise_embedding(self.decode(codes))


if __name__ == "__main__":
    # A toy with the prior's difficulty: the "caption" (a class among 8) fixes the direction of
    # z_i only up to noise, and z_t is a fixed, different vector per class.
    import time
    torch.manual_seed(0)
    D, L, classes = 16, 6, 8
    means = F.normalize(torch.randn(classes, D), dim=-1) * math.sqrt(D)
    text_vectors, token_table = torch.randn(classes, D), torch.randn(classes, L, 8)

    def toy_batch(n):
        y = torch.randint(classes, (n,))
        z_i = F.normalize(means[y] + 0.5 * torch.randn(n, D), dim=-1) * math.sqrt(D)
        return y, z_i, text_vectors[y], token_table[y]

    sizes = dict(embed_dim=D, text_width=8, context_length=L, width=64, layers=2, heads=4)
    for name, model in [("diffusion", DiffusionPrior(PriorConfig(**sizes, timesteps=200))),
                        ("autoregressive", ARPrior(ARPriorConfig(D, 8, L, 64, 2, 4, 8, 16)))]:
        start = time.time()
        if name == "autoregressive":
            print(f"PCA keeps {model.fit_codebook(toy_batch(4000)[1]):.1%} of the variance")
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        for step in range(1500):
            loss, _ = model.loss(*toy_batch(128)[1:])
            opt.zero_grad()
            loss.backward()
            opt.step()
        y, z_i, z_t, tokens = toy_batch(512)
        z = model.eval().sample(z_t, tokens)
        nearest = (z @ means.T).argmax(1)
        print(f"{name} prior: {(nearest == y).float().mean():.1%} of samples nearest their "
              f"class mean, cosine to it {F.cosine_similarity(z, means[y]).mean():.2f} (data: "
              f"{F.cosine_similarity(z_i, means[y]).mean():.2f}), {time.time() - start:.0f}s")
