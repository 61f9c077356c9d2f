"""decoder.py: the context tokens, the condition dropout rates, the guidance limits, and that
it learns to invert an embedding."""
import torch

from decoder import Decoder, DecoderConfig

TINY = dict(resolution=16, channels=16, channel_mult=(1, 2), num_res_blocks=1,
            attention_resolutions=(8,), num_heads=2, embed_dim=8, text_width=4,
            context_dim=16, timesteps=50, dropout=0.0)


def test_context_is_four_embedding_tokens_then_the_caption_without_its_padding():
    torch.manual_seed(0)
    model = Decoder(DecoderConfig(**TINY))
    for p in model.parameters():  # untrained layers start at zero; make every path matter
        p.data.normal_(0, 0.2)
    z_i, tokens = torch.randn(2, 8), torch.randn(2, 7, 4)
    tokens[0, 3:], tokens[1, 5:] = 0, 0  # captions of 3 and 5 tokens, then padding (zeros)
    context, mask = model.context(z_i, tokens)
    assert context.shape == (2, 4 + 5, 16)   # cut after the longest caption
    assert torch.equal(context[:, :4], model.embedding_proj(z_i).view(2, 4, 16))
    assert torch.equal(context[:, 4:], model.caption_proj(tokens[:, :5]))
    assert mask.tolist() == [[True] * 7 + [False] * 2, [True] * 9]
    # Padding is not attended to: caption 0 decodes alike alone (cut to its 3 tokens) and in a
    # batch with a longer caption (2 padding tokens in its context).
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 40])
    out = model(x, t, z_i, tokens)
    assert torch.allclose(model(x[:1], t[:1], z_i[:1], tokens[:1]), out[:1], atol=1e-5)
    # z_i reaches the U-Net both ways: added to the timestep embedding, and as context tokens
    seen = {}
    model.unet.vector_embed.register_forward_hook(lambda m, args, out: seen.update(vector=args[0]))
    attention = next(m for m in model.unet.modules() if type(m).__name__ == "AttentionBlock")
    attention.register_forward_hook(lambda m, args, out: seen.update(context=args[1:]))
    assert model(x, t, z_i, tokens).shape == (2, 3, 16, 16)
    assert torch.equal(seen["vector"], z_i)
    assert torch.equal(seen["context"][0], context) and torch.equal(seen["context"][1], mask)


def test_embedding_and_caption_are_dropped_at_the_configured_rates():
    torch.manual_seed(0)
    model = Decoder(DecoderConfig(**TINY))          # p_drop_embedding 0.1, p_drop_caption 0.5
    seen = {}

    def spy(x_t, t, z_i, tokens):
        seen["embedding"] = (z_i == 0).all(1).float().mean().item()
        seen["caption"] = (tokens == 0).flatten(1).all(1).float().mean().item()
        seen["both"] = ((z_i == 0).all(1) & (tokens == 0).flatten(1).all(1)).float().mean().item()
        return torch.zeros_like(x_t)
    model.forward = spy
    n = 20000
    model.loss(torch.zeros(n, 3, 1, 1), torch.randn(n, 8), torch.randn(n, 2, 4))
    assert abs(seen["embedding"] - 0.1) < 0.01 and abs(seen["caption"] - 0.5) < 0.015
    assert abs(seen["both"] - 0.05) < 0.01   # dropped independently


def test_guidance_scale_zero_is_unconditional_and_scales_extrapolate():
    torch.manual_seed(0)
    model = Decoder(DecoderConfig(**TINY, clip_x0="none")).eval()
    for p in model.parameters():  # untrained layers start at zero; make every path matter
        p.data.normal_(0, 0.2)
    z_i, tokens, noise = torch.randn(2, 8), torch.randn(2, 5, 4), torch.randn(2, 3, 16, 16)
    null = (torch.zeros_like(z_i), torch.zeros_like(tokens))

    def one_step(z, tok, w):  # one DDIM step from x_T: the (linear) x_0 prediction
        return model.sample(z, tok, w, steps=1, noise=noise)
    assert torch.allclose(one_step(z_i, tokens, 0.0), one_step(*null, 1.0), atol=1e-5)
    cond, uncond = one_step(z_i, tokens, 1.0), one_step(*null, 1.0)
    assert not torch.allclose(cond, uncond, atol=1e-3)
    guided = one_step(z_i, tokens, 3.0)
    inside = (guided.abs() < 0.99) & (cond.abs() < 0.99) & (uncond.abs() < 0.99)  # not clamped
    assert inside.float().mean() > 0.5
    assert torch.allclose(guided[inside], (uncond + 3 * (cond - uncond))[inside], atol=1e-5)
    model.cfg.guidance_scale = 3.0   # no scale given: the config's
    assert torch.equal(one_step(z_i, tokens, None), guided)
    seen = []                        # no step count given: the config's
    model.diffusion.ddim_sample_loop = lambda fn, shape, steps, *args, **kwargs: seen.append(
        steps) or noise
    model.sample(z_i, tokens)
    model.sample(z_i, tokens, steps=7)
    assert seen == [model.cfg.sample_steps, 7]


def test_decoder_learns_to_invert_an_embedding():
    torch.manual_seed(0)
    model = Decoder(DecoderConfig(**TINY))
    images = torch.rand(8, 3, 16, 16) * 2 - 1
    embeddings = torch.randn(8, 8)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for step in range(150):
        i = torch.randint(8, (32,))
        loss, _ = model.loss(images[i], embeddings[i], torch.zeros(32, 1, 4))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-20:]) / 20 < sum(losses[:20]) / 20 / 2
    # What it learnt is to read the embedding: with each image's embedding swapped for
    # another's, the same noisy images are denoised far worse.
    model.eval()
    t, tokens = torch.full((8,), 15), torch.zeros(8, 1, 4)  # T = 50

    def loss_with(z):
        torch.manual_seed(1)
        return model.diffusion.training_loss(lambda x, t_: model(x, t_, z, tokens), images, t)
    with torch.no_grad():
        assert 2 * loss_with(embeddings) < loss_with(embeddings.roll(1, 0))
