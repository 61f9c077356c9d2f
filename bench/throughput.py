"""Throughput: our U-Net against diffusers' UNet2DModel, the CPU preset per stage, GPU estimates.

    python bench/throughput.py                   # CPU; --device cuda on a GPU
    python bench/throughput.py --sizes 2M --steps 3
    python bench/throughput.py --presets         # the GPU presets' FLOPs and expected time
    python bench/throughput.py --levers          # the main job's stages: tokens x precision

Reports, side by side: parameters, training images/s (forward, backward and AdamW step on
batches of noised images with the simple loss), sampling milliseconds per step (one forward
pass on a batch), and peak memory (the GPU's allocator peak; on a CPU, the peak resident memory
of the process, which runs each measurement alone). diffusers is an optional, bench-only
dependency (`pip install diffusers==0.35.1`; it does not pull in torch); without it only our
figures are printed. Both models are timed the same way: warm-up steps first, then the mean; on
a GPU both run in bf16 autocast with channels-last weights and fused AdamW, as train.py trains.
Then the CPU preset's wall time per stage, as `python train.py` recorded it in MODELS/*.json.

--presets counts the training FLOPs of one image for every stage of every GPU preset (torch's
FlopCounterMode on the CPU: matrix products and convolutions, forward and backward) and turns
steps x batch x FLOPs into hours at an assumed sustained 100 TFLOP/s: an estimate until measured.
"""
import argparse
import importlib.util
import json
import multiprocessing
import os
import resource
import sys
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from clip import CLIPConfig  # noqa: E402
from stages import MAIN_JOB, STAGES, build_model, clip_sizes, resolve_settings  # noqa: E402
from unet import UNet, UNetConfig  # noqa: E402

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


def measure(name, size, device, batch, steps, warmup=2):
    """Run in a process of its own, so that its peak memory is its own."""
    torch.manual_seed(0)
    net, forward = ours(SIZES[size][0]) if name == "ours" else reference(SIZES[size][1])
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    net.to(device, memory_format=memory_format)
    params = sum(p.numel() for p in net.parameters())
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4,
                            fused=True if device.type == "cuda" else None)  # as train.py
    x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=memory_format)
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
    if device.type == "cuda":
        memory = torch.cuda.max_memory_allocated() / 2 ** 20
    else:
        memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 10  # KiB on Linux
    return params, train_ips, sample_ms, memory


def cpu_preset_times(models):
    """Per-stage wall time of the main job, from the metrics `python train.py` wrote."""
    rows = []
    for stage in MAIN_JOB + ("unclip",):
        path = os.path.join(models, f"{stage}_metrics.json")
        if os.path.exists(path):
            with open(path) as f:
                figures = json.load(f)
            rows.append((stage, figures.get("train_seconds"), figures["total_seconds"]))
    return rows


def preset_settings(preset):
    """{stage: (run, config)} of a GPU preset's stages: the main job's four stages, and the
    class-conditional DDPM on CIFAR-10."""
    names = MAIN_JOB + (("ddpm",) if "cifar10" in preset else ())
    return {name: resolve_settings(name, preset) for name in names}


def preset_estimates(preset, flops_per_second=100e12):
    """(stage, parameters, training GFLOPs per image, batch, steps, estimated hours) per stage of a
    GPU preset, its models built as train.py builds them and a batch of one random image."""
    settings = preset_settings(preset)
    clip_cfg = CLIPConfig(**settings["clip"][1])
    rows = []
    for stage, (run, config) in settings.items():
        if STAGES[stage].reads == "clip":
            config.update(clip_sizes(stage, clip_cfg))
        if stage == "ddpm":
            config["num_classes"] = 10
        torch.manual_seed(0)
        model = build_model(stage, config)
        r = run["resolution"]
        images, labels = torch.rand(1, 3, r, r) * 2 - 1, torch.tensor([0])
        features = [torch.randn(1, clip_cfg.embed_dim), torch.randn(1, clip_cfg.embed_dim),
                    torch.randn(1, clip_cfg.context_length, clip_cfg.text_width)]
        with FlopCounterMode(display=False) as counter:
            loss, _ = STAGES[stage].loss(model, images, ["a photo of a cat"], labels, features)
            loss.backward()
        per_image = counter.get_total_flops()
        hours = per_image * run["batch_size"] * run["steps"] / flops_per_second / 3600
        rows.append((stage, sum(p.numel() for p in model.parameters()), per_image / 1e9,
                     run["batch_size"], run["steps"], hours))
    return rows


def stage_speed(stage, run, config, tokenizer, precision, steps=5, warmup=2):
    """Training images/s of one main-job stage as the CPU preset trains it, on shapes batches,
    with CLIP's tokenizer and autocast's precision set. Run in a process of its own."""
    import data as datasets
    from clip import CLIP, caption_vocabulary, clip_embeddings
    torch.manual_seed(0)
    data = datasets.shapes_data(2048, run["resolution"], 0, "train", prefixes=True)
    reads_clip = STAGES[stage].reads == "clip"
    if stage == "clip" or reads_clip:
        clip_cfg = dict(resolve_settings("clip")[1], tokenizer=tokenizer,
                        context_length=24 if tokenizer == "word" else 80,
                        vocabulary=caption_vocabulary(c[0] for c in data.captions))
        config = clip_cfg if stage == "clip" else config
        clip_model = CLIP(CLIPConfig(**clip_cfg)).eval()
        config.update(clip_sizes(stage, clip_model.cfg) if reads_clip else {})
    model = build_model(stage, config).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    for i in range(warmup + steps):
        if i == warmup:
            tic = time.perf_counter()
        images, captions, labels = data.batch(torch.randint(len(data), (run["batch_size"],)))
        features = clip_embeddings(clip_model, images, captions) if reads_clip else None
        with autocast:
            loss, _ = STAGES[stage].loss(model, images, captions, labels, features)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return run["batch_size"] * steps / (time.perf_counter() - tic)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", default="2M,8M,35M")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--models", default="out", help="where the main job wrote its metrics")
    parser.add_argument("--presets", action="store_true",
                        help="only the GPU presets' FLOPs and expected time")
    parser.add_argument("--levers", action="store_true",
                        help="only the main job's stages: training img/s, tokens x precision")
    args = parser.parse_args()
    if args.levers:
        print(f"CPU preset, training images/s; {torch.get_num_threads()} threads, "
              f"torch {torch.__version__}")
        print("| stage | caption tokens | fp32 | bf16 autocast |\n| --- | --- | --- | --- |")
        spawn = multiprocessing.get_context("spawn")
        for stage in MAIN_JOB:
            run, config = resolve_settings(stage)
            for tokenizer in ("byte", "word") if stage != "upsampler" else ("-",):
                speeds = []
                for precision in ("fp32", "bf16"):
                    with spawn.Pool(1) as pool:
                        speeds.append(pool.apply(stage_speed, (stage, run, config, tokenizer,
                                                               precision, args.steps)))
                print(f"| {stage} | {tokenizer} | {speeds[0]:.0f} | {speeds[1]:.0f} |",
                      flush=True)
        return
    if args.presets:
        print("| preset | stage | parameters | training GFLOPs per image | batch | steps | "
              "expected hours at 100 TFLOP/s |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for preset in ("gpu-cifar10", "gpu-flickr8k", "gpu-coco"):
            for stage, params, gflops, batch, steps, hours in preset_estimates(preset):
                print(f"| {preset} | {stage} | {params / 1e6:.1f}M | {gflops:.2f} | {batch} | "
                      f"{steps:,} | {hours:.2f} |", flush=True)
        return
    device = torch.device(args.device)
    if args.sizes and any(s not in SIZES for s in args.sizes.split(",")):
        sys.exit(f"error: unknown size in --sizes {args.sizes!r}: choose from {', '.join(SIZES)}")
    models = [("ours", ours)]
    if importlib.util.find_spec("diffusers"):
        models.append(("diffusers UNet2DModel", reference))
    else:
        print("diffusers is not installed: reporting our U-Net alone")
    print(f"device {device}, batch {args.batch}, 32 px, {torch.get_num_threads()} threads")
    memory = "GPU allocator peak" if device.type == "cuda" else "process peak RSS"
    print(f"| size | model | parameters | train images/s | sampling ms/step | {memory} MiB |")
    print("| --- | --- | --- | --- | --- | --- |")
    spawn = multiprocessing.get_context("spawn")
    for size in args.sizes.split(","):
        for name, _ in models:
            with spawn.Pool(1) as pool:
                params, ips, ms, mib = pool.apply(measure, (name, size, device, args.batch,
                                                            args.steps))
            print(f"| {size} | {name} | {params / 1e6:.2f}M | {ips:.1f} | {ms:.1f} | {mib:.0f} |",
                  flush=True)
    rows = cpu_preset_times(args.models)
    if rows:
        print(f"\nThe CPU preset (`python train.py`), as recorded in {args.models}/*_metrics.json:")
        print("| stage | training s | with evaluation s |\n| --- | --- | --- |")
        for stage, train_s, total_s in rows:
            print(f"| {stage} | {train_s if train_s is not None else '-'} | {total_s} |")


if __name__ == "__main__":
    main()
