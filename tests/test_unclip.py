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
