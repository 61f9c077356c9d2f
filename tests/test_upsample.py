"""upsample.py: the blur, corruption in training only, crops, convolutions only, learning."""
import torch
import torch.nn.functional as F

from unet import AttentionBlock
from upsample import Upsampler, UpsamplerConfig, gaussian_blur

TINY = dict(resolution=16, low_resolution=8, channels=8, channel_mult=(1, 2), num_res_blocks=1,
            num_heads=2, timesteps=50)


def test_gaussian_blur_keeps_constants_and_spreads_an_impulse_by_sigma():
    flat = torch.full((2, 3, 9, 9), 0.3)
    assert torch.allclose(gaussian_blur(flat, torch.tensor([0.5, 1.5])), flat, atol=1e-6)
    impulse = torch.zeros(1, 1, 21, 21)
    impulse[0, 0, 10, 10] = 1
    blurred = gaussian_blur(impulse, torch.tensor([1.5]))[0, 0]
    offsets = torch.arange(21.0) - 10
    assert abs(blurred.sum().item() - 1) < 1e-5
    assert abs((blurred.sum(0) * offsets ** 2).sum().item() - 1.5 ** 2) < 0.02


def test_corruption_is_applied_in_training_only():
    torch.manual_seed(0)
    model = Upsampler(UpsamplerConfig(**TINY))
    calls, inputs = [], []
    corrupt, unet = model.corrupt, model.unet.forward
    model.corrupt = lambda low: calls.append(len(low)) or corrupt(low)
    model.unet.forward = lambda x, t: inputs.append(x) or unet(x, t)
    model.loss(torch.rand(4, 3, 16, 16) * 2 - 1)
    assert calls == [4]
    low = torch.rand(2, 3, 8, 8) * 2 - 1
    model.sample(low, steps=2)
    assert calls == [4]                                  # sampling never corrupts
    assert torch.equal(inputs[-1][:, 3:], model.condition(low))


def test_training_crops_a_quarter_of_the_area_and_the_model_has_no_attention():
    model = Upsampler(UpsamplerConfig(**TINY))
    assert not any(isinstance(m, AttentionBlock) for m in model.modules())
    sizes, unet = [], model.unet.forward
    model.unet.forward = lambda x, t: sizes.append(x.shape) or unet(x, t)
    model.loss(torch.zeros(2, 3, 16, 16))
    assert sizes[0] == (2, 6, 8, 8)                      # 8 x 8 of 16 x 16
    assert model.sample(torch.zeros(2, 3, 8, 8), steps=1).shape == (2, 3, 16, 16)


def test_harsh_degradation_adds_noise_and_quantises():
    torch.manual_seed(0)
    model = Upsampler(UpsamplerConfig(**TINY, degradation="harsh", blur_sigma=(0.5, 0.5)))
    low = torch.linspace(-1, 1, 64).view(1, 1, 8, 8).expand(16, 3, 8, 8)
    corrupted = model.corrupt(low)
    # Each image is quantised to 2^k - 1 steps over [-1, 1], k in 4..8: its values sit on the
    # grid of one of those step counts, and some images use the coarser ones.
    steps = [15, 31, 63, 127, 255]
    chosen = []
    for c in corrupted:
        on_grid = [s for s in steps if torch.allclose((c + 1) / 2 * s, ((c + 1) / 2 * s).round(),
                                                      atol=1e-4)]
        assert on_grid, "an image is not quantised"
        chosen.append(on_grid[0])
    assert min(chosen) <= 31
    blurred = gaussian_blur(low, torch.full((16,), 0.5))
    assert (corrupted - blurred).abs().max() > 1 / 15  # noise too, beyond the rounding alone


def test_upsampler_learns():
    torch.manual_seed(0)
    model = Upsampler(UpsamplerConfig(**TINY))
    x = torch.zeros(8, 3, 16, 16)
    x[:, :, 4:12, 4:12] = torch.rand(8, 3, 1, 1) * 2 - 1     # coloured squares
    low = F.interpolate(x, size=8, mode="area")
    untrained = F.mse_loss(model.eval().sample(low, 10), x)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for step in range(150):
        loss, _ = model.loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-20:]) < sum(losses[:20]) / 1.5
    trained = F.mse_loss(model.eval().sample(low, 10), x)
    assert trained < untrained / 3, (trained, untrained)


def test_the_diffusion_generates_the_residual_over_bilinear():
    torch.manual_seed(0)
    model = Upsampler(UpsamplerConfig(**TINY, crop=1.0, blur_sigma=(1e-3, 1e-3)))
    x0 = torch.rand(2, 3, 16, 16) * 2 - 1
    targets = []
    model.diffusion.training_loss = lambda fn, target: targets.append(target) or target.sum()
    model.loss(x0)
    bilinear = model.condition(F.interpolate(x0, size=8, mode="area"))  # blur of ~0: none
    assert torch.allclose(targets[0], x0 - bilinear, atol=1e-4)
    low = torch.rand(2, 3, 8, 8) * 2 - 1
    seen = {}
    model.diffusion.ddim_sample_loop = lambda *args, **kwargs: seen.update(kwargs) or torch.full(
        (2, 3, 16, 16), 0.1)
    assert torch.allclose(model.sample(low), (model.condition(low) + 0.1).clamp(-1, 1))
    # It starts at a low noise level, from x_start ~ N(0, 1 - abar_start), and takes the
    # config's steps unless told (at most one a timestep)
    model = Upsampler(UpsamplerConfig(**TINY, sample_start=5, sample_steps=4))
    model.diffusion.ddim_sample_loop = lambda fn, shape, steps, *args, **kwargs: seen.update(
        kwargs, steps=steps) or kwargs["noise"]
    x = model.sample(torch.zeros(64, 3, 8, 8)) - model.condition(torch.zeros(64, 3, 8, 8))
    assert seen["start"] == 5 and seen["steps"] == 4
    model.sample(torch.zeros(1, 3, 8, 8), steps=9)
    assert seen["steps"] == 6
    assert abs(x.std() - (1 - model.diffusion.alphas_cumprod[5]).sqrt()) < 0.01
