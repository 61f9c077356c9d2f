"""unet.py: the timestep embedding against a slow reference, the shapes at every supported size,
a clear error at the others, and that each condition reaches the output."""
import math

import pytest
import torch

from unet import UNet, UNetConfig, timestep_embedding


def _tiny_unet_config(**kw):
    return dict(resolution=16, channels=16, channel_mult=(1, 2), num_res_blocks=1,
                attention_resolutions=(8,), num_heads=2, dropout=0.0, **kw)


def test_timestep_embedding_matches_a_slow_reference():
    # Row t: cos(t w_i) for i < dim / 2, then sin(t w_i), with w_i = 10000^(-i / (dim / 2)).
    t, dim = torch.tensor([0, 1, 7, 250, 999]), 16
    reference = torch.tensor([[math.cos(s * 10000 ** (-i / 8)) for i in range(8)]
                              + [math.sin(s * 10000 ** (-i / 8)) for i in range(8)]
                              for s in t.tolist()])
    # float32 frequencies times t up to 999: an angle good to about 1e-4 radians
    assert torch.allclose(timestep_embedding(t, dim).double(), reference.double(), atol=5e-4)


@pytest.mark.parametrize("channel_mult", [(1,), (1, 2), (1, 2, 2, 2)])
def test_output_has_the_input_shape_at_every_supported_resolution(channel_mult):
    # Supported: any multiple of 2^(levels - 1), attention or not at the sizes met on the way.
    step = 2 ** (len(channel_mult) - 1)
    for resolution in (step, 2 * step, 3 * step, 32):
        cfg = UNetConfig(**dict(_tiny_unet_config(), resolution=resolution,
                                channel_mult=channel_mult, out_channels=5))
        x = torch.randn(2, 3, resolution, resolution)
        assert UNet(cfg)(x, torch.tensor([0, 999])).shape == (2, 5, resolution, resolution)
    if step > 1:  # a size the down path cannot halve exactly: one line that says why
        with pytest.raises(ValueError, match=rf"resolution {2 * step + 1} is not divisible by "
                                             rf"2\^{len(channel_mult) - 1} \(channel_mult") as e:
            UNet(UNetConfig(**dict(_tiny_unet_config(), resolution=2 * step + 1,
                                   channel_mult=channel_mult)))
        assert "\n" not in str(e.value)


def test_each_condition_reaches_the_output():
    torch.manual_seed(0)
    net = UNet(UNetConfig(**_tiny_unet_config()), num_classes=3, embed_dim=5, context_dim=7)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([0, 999])
    y, e, ctx = torch.tensor([0, 3]), torch.randn(2, 5), torch.randn(2, 4, 7)
    assert torch.equal(net(x, t, y, e, ctx), torch.zeros_like(x))  # zero-initialised output
    for p in net.parameters():  # randomise, then check each hook changes the output
        torch.nn.init.normal_(p, std=0.1)
    base = net(x, t, y, e, ctx)
    assert not torch.allclose(base, net(x, t + 1, y, e, ctx))
    assert not torch.allclose(base, net(x, t, torch.tensor([1, 3]), e, ctx))
    assert not torch.allclose(base, net(x, t, y, e + 1, ctx))
    assert not torch.allclose(base, net(x, t, y, e, ctx + 1))
