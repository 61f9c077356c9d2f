"""unclip.py: slerp and text diffs stay on the embeddings' sphere; the cascade's pieces."""
import torch

import unclip
from clip import normalise_embedding


def test_slerp_stays_on_the_sphere_and_hits_both_ends():
    a, b = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 3.0])
    path = unclip.slerp(a, b, torch.linspace(0, 1, 5))
    assert torch.allclose(path.norm(dim=1), torch.full((5,), 3.0))
    assert torch.allclose(path[0], a) and torch.allclose(path[-1], b, atol=1e-5)
    assert torch.allclose(path[2], torch.tensor([3 / 2 ** 0.5, 3 / 2 ** 0.5]))


def test_text_diff_starts_at_the_image_and_turns_towards_the_difference():
    g = torch.Generator().manual_seed(0)
    z_i, before, after = (normalise_embedding(torch.randn(8, generator=g)) for _ in range(3))
    path = unclip.text_diff(z_i, before, after, torch.linspace(0, 1, 5))
    direction = normalise_embedding(after - before)
    assert torch.allclose(path[0], z_i, atol=1e-5) and torch.allclose(path[-1], direction,
                                                                      atol=1e-4)
    cosines = torch.nn.functional.cosine_similarity(path, direction[None])
    assert (cosines.diff() > 0).all() and torch.allclose(path.norm(dim=1), z_i.norm())



def test_figures_decode_the_embeddings_the_paper_names(cascade, monkeypatch):
    """Figs. 3-5 hand decode() the embeddings computed by hand: one image's z_i n times, each from
    its own x_T; the slerp from one image's z_i to another's, and the turn towards a text diff
    (theta 0 to 0.5), each from one shared x_T. (Not the pictures: the tiny cascade barely reads
    the embedding.)"""
    from checkpoint import load_unclip
    from data import shapes_data
    clip, _, decoder, upsamplers = load_unclip(str(cascade))
    images = shapes_data(2, clip.cfg.resolution, seed=3).batch(torch.arange(2))[0]
    z_i = normalise_embedding(clip.encode_image(images))                                 # (2, D)
    z_t = normalise_embedding(clip.encode_text(["a red circle", "a blue circle"]))
    decoded = []

    def decode(clip, decoder, upsamplers, z_i, decoder_guidance=None, steps=None,
               upsampler_steps=None, same_noise=False):
        decoded.append((z_i, (decoder_guidance, steps, upsampler_steps), same_noise))
    monkeypatch.setattr(unclip, "decode", decode)
    settings = dict(decoder_guidance=2.0, steps=3, upsampler_steps=4)
    unclip.variations(clip, decoder, upsamplers, images[0], 3, **settings)
    unclip.interpolate(clip, decoder, upsamplers, images[0], images[1], 4, **settings)
    unclip.text_diff_images(clip, decoder, upsamplers, images[0], "a red circle", "a blue circle",
                            4, **settings)
    expected = [(z_i[0].expand(3, -1), False),
                (unclip.slerp(z_i[0], z_i[1], torch.linspace(0, 1, 4)), True),
                (unclip.text_diff(z_i[0], z_t[0], z_t[1], torch.linspace(0, 0.5, 4)), True)]
    assert len(decoded) == len(expected)
    for (drawn, passed, same_noise), (by_hand, shared) in zip(decoded, expected):
        assert drawn.shape == by_hand.shape and torch.allclose(drawn, by_hand, atol=1e-5)
        assert passed == (2.0, 3, 4) and same_noise == shared
