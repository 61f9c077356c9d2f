"""Diffusion upsamplers: a small image in, a larger one out (unCLIP section 2.1; GLIDE section 3).

An upsampler is unet.py's U-Net with the low-resolution image, resized to the output size,
concatenated to its noisy input: it models p(x_high | x_low). The paper's cascade is a 64 px
decoder followed by 64 -> 256 and 256 -> 1024 upsamplers; here a 32 px decoder is followed by a
32 -> 64 upsampler (the main job's `upsampler`) and, optionally, a 64 -> 128 one with the harsher
corruption and one U-Net level more (`upsampler2`).

Three choices make upsamplers cheap and robust, and the paper makes all three:
  - Convolutions only, no attention: nothing then depends on the image size, so the model
    trains on random crops a quarter of the output's area and samples the whole image.
  - The low-resolution condition is corrupted in training only: Gaussian blur for the first
    upsampler; blur, noise and quantisation for the second. The decoder's samples are not
    the clean downsampled images the upsampler would otherwise be trained on; a little
    corruption teaches it not to copy their defects.
  - Few sampling steps and no guidance: the low-resolution image already fixes the content.
One choice is ours, not the paper's: the diffusion generates the residual x - bilinear(x_low)
rather than x (as residual super-resolution models such as SRDiff do): it need only learn what
bilinear resizing misses, and a small error in that is a small error in the image. And since
that residual is zero but at the edges, sampling starts at a low noise level (t = 30 of 1,000)
from x_t ~ N(0, 1 - abar_t), not from pure noise, from which the few steps leave ragged edges.

An upsampler knows nothing of CLIP or captions: unclip.py puts it after the decoder.

Defines: UpsamplerConfig, gaussian_blur, Upsampler (corrupt, condition, loss, sample).
Run `python upsample.py` to train a small 16 -> 32 upsampler for a minute and compare it with
bilinear resizing.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from diffusion import DiffusionConfig, make_diffusion
from unet import UNet, UNetConfig


@dataclass
class UpsamplerConfig(DiffusionConfig, UNetConfig):
    resolution: int = 64              # output size
    low_resolution: int = 32          # input size
    in_channels: int = 6              # the noisy image and the resized low-resolution one
    attention_resolutions: tuple = ()  # convolution only: see above
    dropout: float = 0.0
    degradation: str = "blur"         # "blur" (first upsampler) or "harsh" (second)
    blur_sigma: tuple = (0.4, 1.0)    # range of the blur's standard deviation, in input pixels
    crop: float = 0.5                 # training crops: this fraction of the side
    sample_start: int = 30            # sampling starts at this t: see sample
    sample_steps: int = 5             # DDIM steps from there: more give no lower MSE


def gaussian_blur(x, sigma):
    """Blur each image of x (B, C, H, W) with its own standard deviation sigma (B,)."""
    radius = max(1, math.ceil(3 * sigma.max().item()))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-offsets[None] ** 2 / (2 * sigma[:, None] ** 2))        # (B, K)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(x.shape[1], 0)
    b, c, h, w = x.shape
    y = F.pad(x.reshape(1, b * c, h, w), (radius,) * 4, mode="replicate")
    y = F.conv2d(y, kernel[:, None, :, None], groups=b * c)   # down the columns, then along rows
    y = F.conv2d(y, kernel[:, None, None, :], groups=b * c)
    return y.view(b, c, h, w)


class Upsampler(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        if cfg.degradation not in ("blur", "harsh"):
            raise ValueError(f"degradation must be 'blur' or 'harsh', got {cfg.degradation!r}")
        if cfg.resolution <= cfg.low_resolution:
            raise ValueError(f"resolution {cfg.resolution} must exceed low_resolution "
                             f"{cfg.low_resolution}")
        self.cfg = cfg
        self.unet = UNet(cfg)
        self.diffusion = make_diffusion(cfg)

    def corrupt(self, low):
        """The training-time degradation of the low-resolution condition, per image."""
        lo, hi = self.cfg.blur_sigma
        sigma = lo + (hi - lo) * torch.rand(len(low), device=low.device)
        low = gaussian_blur(low, sigma)
        if self.cfg.degradation == "harsh":  # add noise, then quantise to 2^4 .. 2^8 levels
            std = 0.1 * torch.rand(len(low), 1, 1, 1, device=low.device)
            low = low + std * torch.randn_like(low)
            levels = 2 ** torch.randint(4, 9, (len(low), 1, 1, 1), device=low.device) - 1
            low = torch.round((low.clamp(-1, 1) + 1) / 2 * levels) / levels * 2 - 1
        return low

    def condition(self, low):
        """(B, 3, r, r) -> (B, 3, R, R): the low-resolution image at the output size."""
        return F.interpolate(low, size=self.cfg.resolution, mode="bilinear", align_corners=False)

    def loss(self, x0):
        """x0 (B, 3, R, R) in [-1, 1]. The low-resolution input is x0 box-downsampled (as shapes
        renders small images), corrupted, resized back; both are cropped at one random place
        per image."""
        low = F.interpolate(x0, size=self.cfg.low_resolution, mode="area")
        cond = self.condition(self.corrupt(low))
        side = int(self.cfg.resolution * self.cfg.crop)
        corners = torch.randint(0, self.cfg.resolution - side + 1, (len(x0), 2)).tolist()
        x0 = torch.stack([x[:, i:i + side, j:j + side] for x, (i, j) in zip(x0, corners)])
        cond = torch.stack([c[:, i:i + side, j:j + side] for c, (i, j) in zip(cond, corners)])
        # The model generates only what bilinear resizing lacks (sharp edges): a signal that is
        # zero almost everywhere on flat-coloured scenes.
        loss = self.diffusion.training_loss(lambda x, t: self.unet(torch.cat([x, cond], 1), t),
                                            x0 - cond)
        return loss, {"mse": loss.item()}

    @torch.no_grad()
    def sample(self, low, steps=None, noise=None):
        """(B, 3, r, r) in [-1, 1] -> (B, 3, R, R): DDIM over `steps` (None: the config's; at most
        one a timestep), the condition used as it is (no corruption). noise (B, 3, R, R), drawn
        from N(0, I), fixes x_start."""
        cond = self.condition(low)
        noise = torch.randn_like(cond) if noise is None else noise
        # The residual is ~0 but at edges: start from x_start ~ N(0, 1 - abar_start).
        start = min(self.cfg.sample_start, self.diffusion.num_timesteps - 1)
        noise = noise * (1 - self.diffusion.alphas_cumprod[start]).sqrt()
        steps = min(steps or self.cfg.sample_steps, start + 1)
        x = self.diffusion.ddim_sample_loop(lambda x, t: self.unet(torch.cat([x, cond], 1), t),
                                            cond.shape, steps, device=low.device, noise=noise,
                                            start=start)
        return (cond + x).clamp(-1, 1)


if __name__ == "__main__":
    import time
    import data as datasets
    torch.manual_seed(0)
    train_data = datasets.shapes_data(4000, 32, seed=0)
    model = Upsampler(UpsamplerConfig(resolution=32, low_resolution=16, channels=32,
                                      channel_mult=(1, 2), num_res_blocks=1))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    start = time.time()
    for step in range(500):
        x, _, _ = train_data.batch(torch.randint(len(train_data), (64,)))
        loss, _ = model.loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, _, _ = datasets.shapes_data(16, 32, stream="test").batch(torch.arange(16))
    low = F.interpolate(x, size=16, mode="area")
    up = model.eval().sample(low, steps=20)
    bilinear = model.condition(low)
    print(f"{time.time() - start:.0f}s; mse to the 32 px truth: upsampler "
          f"{(up - x).pow(2).mean():.4f}, bilinear {(bilinear - x).pow(2).mean():.4f}")
    datasets.save_grid(torch.cat([bilinear, up, x]), "out/upsample_demo.png", nrow=16, scale=4)
    print("wrote out/upsample_demo.png: bilinear, upsampled, truth")
