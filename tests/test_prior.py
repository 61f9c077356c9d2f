"""prior.py: candidate selection, condition dropout, the AR prior's codebook, and both priors
learning a toy caption -> embedding map."""
import math

import pytest
import torch
import torch.nn.functional as F

from prior import ARPrior, ARPriorConfig, DiffusionPrior, PriorConfig, select_candidates

D, L, W = 8, 3, 4
TINY = dict(embed_dim=D, text_width=W, context_length=L, width=32, layers=2, heads=2)


def toy_batch(n, generator):
    """4 'captions'; each fixes its image embeddings' direction up to a little noise."""
    g = torch.Generator().manual_seed(0)
    means = F.normalize(torch.randn(4, D, generator=g), dim=-1) * math.sqrt(D)
    text, tokens = torch.randn(4, D, generator=g), torch.randn(4, L, W, generator=g)
    y = torch.randint(4, (n,), generator=generator)
    z_i = F.normalize(means[y] + 0.3 * torch.randn(n, D, generator=generator), dim=-1)
    return y, means, z_i * math.sqrt(D), text[y], tokens[y]


def test_select_candidates_picks_the_higher_dot_product():
    z_t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    candidates = torch.tensor([[[0.2, 5.0], [0.9, 0.0]],     # caption 0: the second wins
                               [[3.0, 0.7], [0.0, 0.6]]])    # caption 1: the first (by dot
    chosen = select_candidates(candidates, z_t)                # product; cosine would differ)
    assert torch.equal(chosen, torch.tensor([[0.9, 0.0], [3.0, 0.7]]))


@pytest.mark.parametrize("cls,config", [(DiffusionPrior, PriorConfig(**TINY, p_uncond=0.3)),
                                        (ARPrior, ARPriorConfig(**TINY, pca_dim=4, buckets=8,
                                                                p_uncond=0.3))])
def test_text_condition_is_dropped_at_the_configured_rate(cls, config):
    torch.manual_seed(0)
    model = cls(config)
    seen = []
    forward = model.forward if cls is DiffusionPrior else model.logits
    def spy(*args):  # record which rows arrive with a zeroed caption and z_t
        tokens, z_t = args[-2:]
        seen.append(((z_t == 0).all(1) & (tokens == 0).flatten(1).all(1)).float().mean())
        return forward(*args)
    setattr(model, "forward" if cls is DiffusionPrior else "logits", spy)
    n = 4000
    model.loss(torch.randn(n, D), torch.randn(n, D) + 1, torch.randn(n, L, W) + 1)
    assert abs(seen[0].item() - 0.3) < 0.03


def test_diffusion_prior_learns_a_toy_caption_to_embedding_map():
    torch.manual_seed(0)
    model = DiffusionPrior(PriorConfig(**TINY, timesteps=100))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(1)
    losses = []
    for step in range(300):
        loss, _ = model.loss(*toy_batch(128, g)[2:])
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert sum(losses[-20:]) < sum(losses[:20]) / 3
    y, means, _, z_t, tokens = toy_batch(200, g)
    sampled = model.eval().sample(z_t, tokens, steps=20)
    assert sampled.shape == (200, D)
    assert ((sampled @ means.T).argmax(1) == y).float().mean() > 0.95


def test_ar_codebook_recovers_embeddings_from_their_codes():
    torch.manual_seed(0)
    model = ARPrior(ARPriorConfig(**TINY, pca_dim=3, buckets=64))
    basis = torch.linalg.qr(torch.randn(D, 3))[0].T                    # a 3-d subspace
    z = F.normalize(torch.randn(2000, 3) @ basis + 2 * basis[0], dim=-1) * math.sqrt(D)
    kept = model.fit_codebook(z)
    assert kept > 0.999                       # the data lie in (nearly) 3 dimensions
    codes = model.encode(z)
    assert codes.min() >= 0 and codes.max() < 64
    # quantile buckets: each value used about equally often
    assert torch.bincount(codes[:, 0], minlength=64).float().std() < 10
    assert F.cosine_similarity(model.decode(codes), z).mean() > 0.99


def test_ar_prior_learns_a_toy_caption_to_embedding_map():
    torch.manual_seed(0)
    model = ARPrior(ARPriorConfig(**TINY, pca_dim=4, buckets=16))
    g = torch.Generator().manual_seed(1)
    model.fit_codebook(toy_batch(2000, g)[2])
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for step in range(300):
        loss, _ = model.loss(*toy_batch(128, g)[2:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    # Uniform guessing costs log(16) = 2.77 nats per code; the class fixes the leading codes,
    # the rest are mostly the noise's, so the floor is well above zero.
    assert loss.item() < math.log(16) - 0.4
    y, means, _, z_t, tokens = toy_batch(200, g)
    sampled = model.eval().sample(z_t, tokens, guidance_scale=2.0)
    assert ((sampled @ means.T).argmax(1) == y).float().mean() > 0.9
