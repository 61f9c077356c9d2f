"""The U-Net: the network inside every image diffusion model here.

A diffusion model's network maps a noisy image x_t and its timestep t to an image-shaped prediction
(the noise, x_0 or v). The U-Net halves the resolution level by level and doubles it back, each up
block also reading the down path's output at its size (a skip connection), so detail bypasses the
bottleneck. Every residual block adds the timestep's embedding (plus a label's or a vector
condition's); attention at low resolutions lets distant pixels agree and reads any caption tokens.

Papers: DDPM, Ho et al. 2020 (arXiv 2006.11239, appendix B); improved DDPM, Nichol & Dhariwal
2021 (arXiv 2102.09672: attention heads at several resolutions); Dhariwal & Nichol 2021 (arXiv
2105.05233: the block design, each block's last layer initialised to zero); GLIDE, Nichol et al.
2021 (arXiv 2112.10741: context tokens read by every attention layer).

Defines: UNetConfig, timestep_embedding, group_norm, ResBlock, AttentionBlock, Downsample,
Upsample, TimestepSequential, check_resolution, UNet (used by diffusion.py, decoder.py and
upsample.py). Run `python unet.py` to print the shape after each block and the parameter count.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class UNetConfig:
    resolution: int = 32
    in_channels: int = 3
    out_channels: int = 3
    channels: int = 32                  # width at full resolution (these defaults: 1.1M
    channel_mult: tuple = (1, 2, 2)     # parameters at 32 px, ~0.4 s a step of 64 on 2 cores)
    num_res_blocks: int = 1             # residual blocks per level
    attention_resolutions: tuple = (8,)  # sizes that get self-attention (if any, the middle too)
    num_heads: int = 4
    dropout: float = 0.1


def timestep_embedding(t, dim, max_period=10000):
    """(B,) timesteps -> (B, dim) sinusoids, as the Transformer embeds positions."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]                                # (B, dim / 2)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def group_norm(channels):
    return nn.GroupNorm(math.gcd(32, channels), channels)  # 32 groups where the width allows


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the (timestep + condition) embedding added in between."""

    def __init__(self, c_in, c_out, emb_dim, dropout):
        super().__init__()
        self.in_layers = nn.Sequential(group_norm(c_in), nn.SiLU(),
                                       nn.Conv2d(c_in, c_out, 3, padding=1))
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, c_out))
        self.out_layers = nn.Sequential(group_norm(c_out), nn.SiLU(), nn.Dropout(dropout),
                                        nn.Conv2d(c_out, c_out, 3, padding=1))
        nn.init.zeros_(self.out_layers[-1].weight)  # each block starts as the identity
        nn.init.zeros_(self.out_layers[-1].bias)
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x, emb):
        h = self.in_layers(x) + self.emb(emb)[:, :, None, None]  # (B, C, H, W) + (B, C, 1, 1)
        return self.skip(x) + self.out_layers(h)


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H*W positions; with context tokens, the keys and values
    also include their projections (GLIDE's way of letting every layer read the caption)."""

    def __init__(self, channels, num_heads, context_dim=0):
        super().__init__()
        self.num_heads = num_heads
        self.norm = group_norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.context_kv = nn.Linear(context_dim, 2 * channels) if context_dim else None
        self.proj = nn.Conv1d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)  # starts as the identity, like a ResBlock
        nn.init.zeros_(self.proj.bias)

    def forward(self, x, context=None, context_mask=None):
        """context_mask (B, L) bool: False marks context tokens not to attend to (padding)."""
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x).flatten(2)).chunk(3, dim=1)  # 3 x (B, C, HW)
        mask = None
        if self.context_kv is not None and context is not None:
            ck, cv = self.context_kv(context).transpose(1, 2).chunk(2, dim=1)  # 2 x (B, C, L)
            k, v = torch.cat([ck, k], dim=2), torch.cat([cv, v], dim=2)        # (B, C, L + HW)
            if context_mask is not None:  # (B, 1, 1, L + HW): the pixels are always attended
                mask = F.pad(context_mask, (0, h * w), value=True)[:, None, None]

        def heads(z):  # (B, C, N) -> (B, heads, N, C / heads)
            return z.view(b, self.num_heads, c // self.num_heads, -1).transpose(2, 3)
        out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=mask)
        # (B, heads, HW, C / heads) -> (B, C, HW) -> (B, C, H, W)
        return x + self.proj(out.transpose(2, 3).reshape(b, c, h * w)).view(b, c, h, w)


class Downsample(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)  # (B, C, H, W) -> (B, C, H / 2, W / 2)


class Upsample(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):  # (B, C, H, W) -> (B, C, 2H, 2W)
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class TimestepSequential(nn.ModuleList):
    """Layers in order, given what each needs: ResBlocks the embedding, attention the context."""

    def forward(self, x, emb, context=None, context_mask=None):
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, AttentionBlock):
                x = layer(x, context, context_mask)
            else:
                x = layer(x)
        return x


def check_resolution(cfg):
    """Sizes the down path cannot halve, or heads that do not split a width: a clear error now."""
    levels = len(cfg.channel_mult) - 1
    if cfg.resolution % (2 ** levels) or cfg.resolution < 1:
        raise ValueError(f"resolution {cfg.resolution} is not divisible by 2^{levels} "
                         f"(channel_mult {cfg.channel_mult} halves it {levels} times): choose a "
                         f"multiple of {2 ** levels}, or fewer levels")
    if any(cfg.channels * m % cfg.num_heads for m in cfg.channel_mult):
        raise ValueError(f"num_heads={cfg.num_heads} must divide every level's width, channels "
                         f"{cfg.channels} x channel_mult {cfg.channel_mult}")


class UNet(nn.Module):
    """(B, C_in, R, R), timesteps (B,), optional condition -> (B, C_out, R, R). Conditions, each
    sized by the model that uses it: num_classes > 0, y (B,) class labels (label num_classes is the
    null label); embed_dim > 0, a vector (B, E) added to the timestep embedding; context_dim > 0,
    context tokens (B, L, D) that every attention layer attends to."""

    def __init__(self, cfg, num_classes=0, embed_dim=0, context_dim=0):
        super().__init__()
        check_resolution(cfg)
        self.cfg = cfg
        ch, emb_dim = cfg.channels, 4 * cfg.channels
        self.time_embed = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(),
                                        nn.Linear(emb_dim, emb_dim))
        self.label_embed = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None
        self.vector_embed = nn.Linear(embed_dim, emb_dim) if embed_dim else None
        self.input_conv = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)
        # Down: blocks per level, then a Downsample (not after the last); skips: widths to concat.
        self.down, skips, res, c = nn.ModuleList(), [ch], cfg.resolution, ch
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers, c = [ResBlock(c, ch * mult, emb_dim, cfg.dropout)], ch * mult
                if res in cfg.attention_resolutions:
                    layers.append(AttentionBlock(c, cfg.num_heads, context_dim))
                self.down.append(TimestepSequential(layers))
                skips.append(c)
            if level < len(cfg.channel_mult) - 1:
                self.down.append(TimestepSequential([Downsample(c)]))
                skips.append(c)
                res //= 2
        # The middle attends too, unless the model has no attention at all (an upsampler).
        middle_attention = ([AttentionBlock(c, cfg.num_heads, context_dim)]
                            if cfg.attention_resolutions else [])
        self.middle = TimestepSequential([ResBlock(c, c, emb_dim, cfg.dropout), *middle_attention,
                                          ResBlock(c, c, emb_dim, cfg.dropout)])
        # The up path: one block more per level than down, each reading one skip (in reverse).
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers, c = [ResBlock(c + skips.pop(), ch * mult, emb_dim, cfg.dropout)], ch * mult
                if res in cfg.attention_resolutions:
                    layers.append(AttentionBlock(c, cfg.num_heads, context_dim))
                if level > 0 and i == cfg.num_res_blocks:
                    layers.append(Upsample(c))
                    res *= 2
                self.up.append(TimestepSequential(layers))
        self.out = nn.Sequential(group_norm(c), nn.SiLU(),
                                 nn.Conv2d(c, cfg.out_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)  # the untrained model predicts 0 everywhere
        nn.init.zeros_(self.out[-1].bias)

    def embed(self, t, y=None, embedding=None):
        """The (B, 4C) vector every ResBlock sees: timestep, plus label, plus vector condition."""
        emb = self.time_embed(timestep_embedding(t, self.cfg.channels))     # (B, C) -> (B, 4C)
        if self.label_embed is not None:
            emb = emb + self.label_embed(y)
        if self.vector_embed is not None:
            emb = emb + self.vector_embed(embedding)
        return emb

    def forward(self, x, t, y=None, embedding=None, context=None, context_mask=None):
        emb = self.embed(t, y, embedding)
        h = self.input_conv(x)                                  # (B, C_in, R, R) -> (B, C, R, R)
        hs = [h]
        for block in self.down:
            h = block(h, emb, context, context_mask)
            hs.append(h)
        h = self.middle(h, emb, context, context_mask)         # (B, C mult[-1], R / 2^L, same)
        for block in self.up:  # (B, C_h + C_skip, r, r) -> (B, C_level, r or 2r, same)
            h = block(torch.cat([h, hs.pop()], dim=1), emb, context, context_mask)
        return self.out(h)                                      # (B, C, R, R) -> (B, C_out, R, R)


if __name__ == "__main__":
    # One 32 px image through the default U-Net: each block's layers, output shape and size.
    net = UNet(UNetConfig()).eval()
    blocks = ([("input", net.input_conv)] + [(f"down {i}", b) for i, b in enumerate(net.down)]
              + [("middle", net.middle)] + [(f"up {i}", b) for i, b in enumerate(net.up)]
              + [("output", net.out)])
    print(f"{'block':<8} {'layers':<38} {'output shape':<17} {'params':>9}")
    for name, block in blocks:
        layers = " + ".join(type(m).__name__ for m in block) if name != "input" else "Conv2d"
        row = f"{name:<8} {layers:<38} {{!s:<17}} {sum(p.numel() for p in block.parameters()):>9,}"
        block.register_forward_hook(lambda m, a, out, row=row: print(row.format(tuple(out.shape))))
    net(torch.randn(1, 3, 32, 32), torch.tensor([500]))
    print(f"in all {sum(p.numel() for p in net.parameters()):,} parameters")
