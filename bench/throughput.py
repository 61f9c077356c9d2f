"""Our U-Net against diffusers' UNet2DModel at matched parameter counts, at 32 px.

    python bench/throughput.py                   # CPU; --device cuda on a GPU
    python bench/throughput.py --sizes 2M --steps 3

Reports, side by side: parameters, training images/s (forward, backward and AdamW step on
batches of noised images with the simple loss), sampling milliseconds per step (one forward
pass on a batch), and peak GPU memory where there is a GPU. diffusers is an optional,
bench-only dependency (`pip install diffusers`; it does not pull in torch); without it only our
figures are printed. Both models are timed the same way: warm-up steps first, then the mean.
"""
import argparse
import importlib.util
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from diffusion import UNet, UNetConfig  # noqa: E402

def matched_configs(channels):
    """Ours with four levels (32, 16, 8, 4 px), attention at 8 px, and the same in diffusers."""
    ours = dict(channels=channels, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
                attention_resolutions=(8,))
    reference = dict(block_out_channels=(channels, 2 * channels, 2 * channels, 2 * channels),
                     layers_per_block=2,
                     down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D",
                                       "DownBlock2D"),
                     up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"))
    return ours, reference


SIZES = {"2M": matched_configs(32), "8M": matched_configs(64), "35M": matched_configs(128)}


def ours(config):
    net = UNet(UNetConfig(resolution=32, dropout=0.0, **config))
    return net, lambda x, t: net(x, t)


def reference(config):
    from diffusers import UNet2DModel
    net = UNet2DModel(sample_size=32, in_channels=3, out_channels=3, **config)
    return net, lambda x, t: net(x, t).sample


def measure(build, config, device, batch, steps, warmup=2):
    torch.manual_seed(0)
    net, forward = build(config)
    net.to(device)
    params = sum(p.numel() for p in net.parameters())
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, 32, 32, device=device)
    t = torch.randint(0, 1000, (batch,), device=device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    for i in range(warmup + steps):
        if i == warmup:
            sync()
            tic = time.perf_counter()
        with autocast:
            loss = F.mse_loss(forward(x, t).float(), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync()
    train_ips = batch * steps / (time.perf_counter() - tic)
    net.eval()
    with torch.no_grad(), autocast:
        for i in range(warmup + steps):
            if i == warmup:
                sync()
                tic = time.perf_counter()
            forward(x, t)
        sync()
    sample_ms = 1000 * (time.perf_counter() - tic) / steps
    memory = torch.cuda.max_memory_allocated() / 2 ** 20 if device.type == "cuda" else None
    return params, train_ips, sample_ms, memory


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", default="2M,8M,35M")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    models = [("ours", ours)]
    if importlib.util.find_spec("diffusers"):
        models.append(("diffusers UNet2DModel", reference))
    else:
        print("diffusers is not installed: reporting our U-Net alone")
    print(f"device {device}, batch {args.batch}, 32 px, {torch.get_num_threads()} threads")
    print("| size | model | parameters | train images/s | sampling ms/step | peak memory MiB |")
    print("| --- | --- | --- | --- | --- | --- |")
    for size in args.sizes.split(","):
        for name, build in models:
            config = SIZES[size][0] if name == "ours" else SIZES[size][1]
            params, ips, ms, memory = measure(build, config, device, args.batch, args.steps)
            mem = f"{memory:.0f}" if memory is not None else "-"
            print(f"| {size} | {name} | {params / 1e6:.2f}M | {ips:.1f} | {ms:.1f} | {mem} |",
                  flush=True)


if __name__ == "__main__":
    main()
