"""Train any stage of the ladder: one plain loop, one checkpoint format.

    python train.py                  # the main job: unCLIP on shapes (CLIP, prior, decoder,
                                     # upsampler, one after the other), CPU preset, ~20 minutes
    python train.py decoder          # one stage; prior, ar_prior and decoder read OUT/clip.pt
    python train.py vqvae --steps 500 --out runs/vq
    python train.py ddpm --data cifar10:~/data/cifar-10-python.tar.gz --preset gpu-cifar10
    python train.py vae --latent_dim=16 --lr=1e-3   # --key=value sets a run default or model field

Each step's randomness (the batch drawn, the noise) comes from a seed made of (--seed, step), so a
run stopped and continued with --resume takes exactly the steps an uninterrupted one would.
Checkpoints are written atomically (temporary file, then rename) to OUT/STAGE.pt and hold the
model, optimiser, EMA, config and step; they load with weights_only=True (no pickled code runs).
"""
import argparse
import dataclasses
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

import clip
import data as datasets
from checkpoint import (FORMAT, STAGES, CheckpointError, build_model, fingerprint, load_checkpoint,
                        load_unclip, model_class, pick_device, restore_model, save_checkpoint)
from clip import normalise_embedding, retrieval, shapes_zero_shot
from diffusion import EMA
from evaluate import clip_features, feature_statistics, frechet_distance
from upsample import unclip_sample

# Run defaults, the CPU preset on shapes. STAGE_DEFAULTS and PRESETS override them by name.
RUN_DEFAULTS = dict(
    data="shapes",         # shapes | cifar10:PATH | folder:PATH | coco:PATH
    resolution=32,
    n_train=20000,         # shapes scenes rendered into memory (other data sets: all of them)
    steps=2000,
    batch_size=64,
    lr=2e-3,
    warmup=100,            # linear learning-rate warm-up, then constant (so resuming is exact)
    weight_decay=0.0,
    grad_clip=1.0,
    ema_decay=0.0,         # 0: no EMA of the weights
    checkpoint_every=500,
    on_nonfinite="stop",   # "stop" or "skip" a step whose loss is NaN or infinite
    precision="auto",      # auto: bf16 autocast on a GPU, float32 elsewhere; or "bf16", "fp32"
    compile=False,         # torch.compile the loss (a GPU's speed-up; minutes of compiling)
)
# The diffusion stages' CPU defaults: one-object scenes (so "the requested shape" is unambiguous)
# and a 1.1M-parameter U-Net, about 0.4 s a step on 2 cores. The DDPM predicts v: with eps, a
# short run's x_0 estimate at high noise (x_0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar), abar ~ 0)
# is so unreliable that DDIM fixes the wrong background colour in its first steps (measured:
# 10% right shapes after 1500 steps with eps).
SMALL_UNET = dict(channels=32, channel_mult=(1, 2, 2), num_res_blocks=1, attention_resolutions=(8,))
STAGE_DEFAULTS = {
    "ae": {}, "dae": {}, "vae": {},
    "vqvae": dict(lr=1e-3),
    "ddpm": dict(data="shapes:1", steps=2000, lr=1e-3, ema_decay=0.995, prediction="v",
                 **SMALL_UNET),
    "classifier": dict(data="shapes:1", steps=600, lr=1e-3, **SMALL_UNET),
    # unCLIP, sized so that the main job trains all four stages in 20 minutes on 2 cores. The
    # priors and the decoder read CLIP's embeddings of the batch (OUT/clip.pt); the upsampler
    # learns 32 -> 64 px from the data alone.
    "clip": dict(steps=800, batch_size=128, lr=1e-3, weight_decay=0.1),
    "prior": dict(steps=500, batch_size=128, lr=1e-3, ema_decay=0.995),
    "ar_prior": dict(steps=1500, batch_size=128, lr=1e-3),  # not in the main job: slower to learn
    "decoder": dict(steps=1100, lr=1e-3, ema_decay=0.995, **SMALL_UNET),
    "upsampler": dict(resolution=64, steps=350, lr=1e-3, ema_decay=0.995, channels=32,
                      channel_mult=(1, 2, 2), num_res_blocks=1),
    "upsampler2": dict(resolution=128, low_resolution=64, degradation="harsh", steps=500,
                       lr=1e-3, ema_decay=0.995, channels=32, channel_mult=(1, 2, 2, 2),
                       num_res_blocks=1),
}
CLIP_STAGES = ("prior", "ar_prior", "decoder")
UNCLIP_STAGES = ("clip", "prior", "decoder", "upsampler")  # what the main job trains, in order
# Presets: overrides of run defaults and model fields, for every stage ("all") and per stage
# (a key a stage lacks is ignored). `python train.py --preset gpu-cifar10` is unCLIP on CIFAR-10
# (captions from the class names, 32 px, upsampled to 64: CIFAR-10 is 32 px, so its 64 px
# targets are resized and the upsampler can learn no more than a clean enlargement);
# `python train.py ddpm --preset gpu-cifar10` is the class-conditional DDPM; `--preset gpu-coco`
# is unCLIP on COCO-mini, 64 px upsampled to 128. The data paths are defaults: --data points
# elsewhere. Steps are sized by counted FLOPs to 0.8-0.9 hours of one GPU per workload at an
# assumed 100 TFLOP/s (`python bench/throughput.py --presets` prints the estimates).
GPU_UNET = dict(channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
                attention_resolutions=(16, 8), dropout=0.1)
GPU_UPSAMPLER = dict(channels=64, channel_mult=(1, 2, 2, 4), num_res_blocks=2, lr=2e-4,
                     ema_decay=0.9999, batch_size=64, warmup=1000)
GPU_DIFFUSION = dict(lr=2e-4, ema_decay=0.9999, warmup=1000, batch_size=128)
GPU_CLIP = dict(batch_size=512, lr=5e-4, weight_decay=0.2, warmup=1000, embed_dim=256,
                text_width=256, text_layers=6, text_heads=8, vision_width=256, vision_layers=6,
                vision_heads=8)
GPU_PRIOR = dict(GPU_DIFFUSION, batch_size=256, width=512, layers=8, heads=8)
PRESETS = {
    "cpu": {},
    "gpu-cifar10": {
        "all": dict(data="cifar10:data/cifar-10-python.tar.gz", resolution=32,
                    checkpoint_every=5000),
        "ddpm": dict(GPU_DIFFUSION, steps=60000, **GPU_UNET),
        "clip": dict(GPU_CLIP, steps=10000),
        "prior": dict(GPU_PRIOR, steps=20000),
        "decoder": dict(GPU_DIFFUSION, steps=40000, **GPU_UNET),
        "upsampler": dict(GPU_UPSAMPLER, resolution=64, low_resolution=32, steps=15000),
    },
    "gpu-coco": {
        "all": dict(data="coco:data/coco", resolution=64, n_train=50000, checkpoint_every=5000),
        "clip": dict(GPU_CLIP, steps=10000, context_length=128, resolution=64, patch_size=8),
        "prior": dict(GPU_PRIOR, steps=20000),
        "decoder": dict(GPU_DIFFUSION, steps=20000, batch_size=64, **GPU_UNET),
        "upsampler": dict(GPU_UPSAMPLER, resolution=128, low_resolution=64, steps=10000),
    },
}
MAIN_JOB = "unclip"  # `python train.py`: the UNCLIP_STAGES, then text to image on held-out prompts


def parse_value(text, like):
    """'--key=value' text -> the type of the default it replaces."""
    if isinstance(like, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"expected true or false, got {text!r}")
        return text.lower() in ("true", "1")
    if isinstance(like, tuple):  # --channel_mult=1,2,2
        return tuple(int(v) for v in text.split(",") if v)
    return type(like)(text) if like is not None else text


def resolve_settings(stage, args, overrides, ignore_unknown=False):
    """Merge run defaults < stage defaults < preset < flags < --key=value. Returns (run, config).
    ignore_unknown: skip --key=value settings this stage lacks (the main job's other stages')."""
    config_cls, _ = model_class(stage)
    fields = {f.name: f.default for f in dataclasses.fields(config_cls) if f.name != "kind"}
    run, config = dict(RUN_DEFAULTS), {}
    if args.preset not in PRESETS:
        raise ValueError(f"unknown preset {args.preset!r}: choose from {', '.join(PRESETS)}")
    preset = PRESETS[args.preset]
    settings = {**STAGE_DEFAULTS[stage], **preset.get("all", {}), **preset.get(stage, {})}
    settings.update({k: v for k, v in vars(args).items()
                     if k in RUN_DEFAULTS and v is not None})
    for item in overrides:
        key, eq, text = item[2:].partition("=")
        if not item.startswith("--") or not eq:
            raise ValueError(f"unrecognised argument {item!r}: overrides are written --key=value")
        if key not in run and key not in fields:
            if ignore_unknown:
                continue
            raise ValueError(f"unknown setting {key!r} for stage {stage}: run settings are "
                             f"{', '.join(run)}; model fields are {', '.join(fields)}")
        try:
            settings[key] = parse_value(text, run.get(key, fields.get(key)))
        except ValueError as e:
            raise ValueError(f"--{key}: {e}") from None
    for key, value in settings.items():
        if key in run:
            run[key] = value
        if key in fields:
            config[key] = value
    if "resolution" in fields:
        config["resolution"] = run["resolution"]
    return run, config


def stage_settings(stage, preset="cpu", **overrides):
    """(run, config) for a stage as the command line builds them, with keyword overrides: for
    notebooks and scripts, `train(stage, *stage_settings(stage, steps=100), out)`."""
    args = argparse.Namespace(preset=preset, **{k: None for k in RUN_DEFAULTS})
    run, config = resolve_settings(stage, args, [])
    for key, value in overrides.items():
        (run if key in run else config)[key] = value
    if "resolution" in config:
        config["resolution"] = run["resolution"]
    return run, config


# ----------------------------------------------------------------------------------------------
# The training loop.

def step_seed(seed, step):
    """The seed of one training step: a pure function of (seed, step), so resuming is exact."""
    return seed * 1_000_003 + step


@torch.no_grad()
def clip_embeddings(clip_model, images, captions):
    """Images and captions -> normalised z_i (B, D) and z_t (B, D), and the captions' token
    features (B, L, W). Images larger than CLIP's resolution are box-downsampled for it."""
    if images.shape[-1] != clip_model.cfg.resolution:
        images = F.interpolate(images, size=clip_model.cfg.resolution, mode="area")
    z_t, tokens = clip_model.encode_text(captions, return_tokens=True)
    return normalise_embedding(clip_model.encode_image(images)), normalise_embedding(z_t), tokens


@torch.no_grad()
def cache_clip_embeddings(clip_model, data, chunk=500):
    """clip_embeddings of a whole data set whose images have one caption each, computed once:
    (z_i, z_t, tokens), the tokens in bfloat16 (20,000 shapes captions: 0.3 GB). Saves CLIP's
    forward pass at every step (measured: 0.24 s a prior step with it, 0.15 s without)."""
    features = [clip_embeddings(clip_model, *data.batch(i)[:2])
                for i in torch.arange(len(data)).split(chunk)]
    z_i, z_t, tokens = (torch.cat(f).cpu() for f in zip(*features))
    return z_i, z_t, tokens.bfloat16()


def clip_fields(stage, clip_cfg):
    """The model fields a CLIP-reading stage takes from its CLIP."""
    if stage == "decoder":
        return dict(embedding_dim=clip_cfg.embed_dim, text_width=clip_cfg.text_width)
    return dict(embed_dim=clip_cfg.embed_dim, text_width=clip_cfg.text_width,
                context_length=clip_cfg.context_length)


def load_clip(out, device, fingerprint_expected=None):
    """OUT/clip.pt, frozen; with an expected fingerprint, refuse a different CLIP."""
    clip_model = clip.load(os.path.join(out, "clip.pt"), device)
    if fingerprint_expected is not None and fingerprint(clip_model) != fingerprint_expected:
        raise CheckpointError(f"{out}/clip.pt is not the CLIP this model was trained with "
                              "(retrained since?): retrain the prior and decoder on it")
    return clip_model


def compute_loss(stage, model, images, captions, labels, clip_features=None):
    if stage in CLIP_STAGES:
        z_i, z_t, tokens = clip_features
        return model.loss(images, z_i, tokens) if stage == "decoder" else model.loss(z_i, z_t,
                                                                                     tokens)
    if stage == "clip":
        return model.loss(images, captions)
    if stage == "classifier" or (stage == "ddpm" and model.cfg.num_classes):
        return model.loss(images, labels)
    return model.loss(images)


def fit_ar_codebook(model, clip_model, data, clip_cache=None, n=10000):
    """The AR prior's PCA and buckets, from the image embeddings of (up to) n training images
    (taken from the cache of CLIP's features when there is one)."""
    if clip_cache is not None:
        return model.fit_codebook(clip_cache[0][:n].to(model.pca_mean.device))
    index = torch.arange(min(n, len(data)))
    z_i = torch.cat([clip_embeddings(clip_model, *data.batch(i)[:2])[0] for i in index.split(500)])
    return model.fit_codebook(z_i)


def gpu_options(device, run):
    """What the GPU path switches on; on a CPU all of it stays off, so CPU results are unchanged.
    bf16 autocast (tensor cores; "bf16" also on a CPU, which is how the tests reach this branch),
    channels-last weights and images (what cuDNN's fastest convolutions want), fused AdamW (one
    kernel for all parameters), and the uint8 data set moved to the GPU once (no loader workers
    and no host-to-device copy per step) when it takes under a quarter of the free memory, else
    each batch pinned and copied asynchronously."""
    cuda = device.type == "cuda"
    return dict(autocast=run["precision"] == "bf16" or (run["precision"] == "auto" and cuda),
                channels_last=cuda, fused_adamw=cuda, data_on_device=cuda)


def data_to_device(data, clip_cache, device):
    """The whole data set (and CLIP's cached features) on the GPU, if it fits in a quarter of
    the free memory; otherwise left where it is."""
    size = data.images.numel() + sum(f.numel() * f.element_size() for f in clip_cache or ())
    if size < torch.cuda.mem_get_info(device)[0] / 4:
        data.images = data.images.to(device)
        return [f.to(device) for f in clip_cache] if clip_cache is not None else None
    return clip_cache


def train(stage, run, config, out, seed=0, device=None, resume=False, quiet=False, log=None):
    """Train one stage; returns (model, ema model or None, the training data). log: a list to
    append each step's figures to (the loss and what the model reports), for plotting."""
    device = pick_device(device)
    path = os.path.join(out, f"{stage}.pt")
    if resume:
        load_checkpoint(path, stage)  # fail before rendering data if there is nothing to resume
    os.makedirs(out, exist_ok=True)
    data = datasets.load_data(run["data"], run["resolution"], run["n_train"], seed, "train")
    if stage in ("ddpm", "classifier") and "num_classes" not in config:
        config = dict(config, num_classes=len(data.class_names) if data.labels is not None else 0)
    if stage == "classifier" and (data.labels is None or config["num_classes"] < 2):
        raise ValueError(f"a classifier needs labelled data with 2+ classes; {run['data']} has "
                         "none: use shapes, cifar10:PATH or a folder of class sub-folders")
    clip_model = load_clip(out, device) if stage in CLIP_STAGES else None
    if clip_model is not None:
        config = dict(config, **clip_fields(stage, clip_model.cfg))
    torch.manual_seed(seed)  # the initial weights
    model = build_model(stage, config).to(device)
    config = dataclasses.asdict(model.cfg)
    clip_cache = None
    if clip_model is not None and all(len(c) == 1 for c in data.captions):
        clip_cache = cache_clip_embeddings(clip_model, data)
    if stage == "ar_prior" and not resume:
        variance = fit_ar_codebook(model, clip_model, data, clip_cache)
        if not quiet:
            print(f"ar_prior: {model.cfg.pca_dim} principal components keep {variance:.1%} of the "
                  "image embeddings' variance")
    options = gpu_options(device, run)
    if options["data_on_device"]:
        clip_cache = data_to_device(data, clip_cache, device)
    memory_format = torch.channels_last if options["channels_last"] else torch.contiguous_format
    if options["channels_last"]:
        model.to(memory_format=memory_format)
    optimizer = torch.optim.AdamW(model.parameters(), lr=run["lr"],
                                  weight_decay=run["weight_decay"],
                                  fused=True if options["fused_adamw"] else None)
    ema = EMA(model, run["ema_decay"]) if run["ema_decay"] > 0 else None
    start = 0
    if resume:
        state = load_checkpoint(path, stage)
        if state["config"] != config:
            diff = sorted(k for k in config if state["config"].get(k) != config[k])
            raise CheckpointError(f"{path} was trained with other settings ({', '.join(diff)}); "
                                  "resume with the same flags or choose another --out")
        if clip_model is not None and state.get("clip") != fingerprint(clip_model):
            raise CheckpointError(f"{path} was trained with another {out}/clip.pt: train it "
                                  "again without --resume")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None:
            ema.model.load_state_dict(state["ema"])
        start = state["step"]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=options["autocast"])
    loss_function = torch.compile(compute_loss) if run["compile"] else compute_loss

    def checkpoint(step):
        save_checkpoint(path, dict(
            format=FORMAT, stage=stage, config=config, run=run, seed=seed, step=step,
            model=model.state_dict(), optimizer=optimizer.state_dict(),
            ema=ema.model.state_dict() if ema is not None else None,
            clip=fingerprint(clip_model) if clip_model is not None else None))

    model.train()
    bar = tqdm(range(start, run["steps"]), initial=start, total=run["steps"], desc=stage,
               disable=quiet, mininterval=1.0, dynamic_ncols=True)
    last_saved, tic = start, time.time()
    for step in bar:
        torch.manual_seed(step_seed(seed, step))  # all of this step's randomness
        index = torch.randint(len(data), (run["batch_size"],))
        images, captions, labels = data.batch(index)
        if device.type == "cuda" and not images.is_cuda:
            images = images.pin_memory()  # a data set too big for the GPU: copy asynchronously
        images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        labels = labels.to(device) if labels is not None else None
        for group in optimizer.param_groups:
            group["lr"] = run["lr"] * min(1.0, (step + 1) / run["warmup"])
        clip_features = None
        if clip_cache is not None:
            clip_features = [f[index.to(f.device)].to(device).float() for f in clip_cache]
        elif clip_model is not None:
            clip_features = clip_embeddings(clip_model, images, captions)
        with autocast:
            loss, figures = loss_function(stage, model, images, captions, labels,
                                          clip_features)
        if not torch.isfinite(loss):
            if run["on_nonfinite"] == "skip":
                continue
            saved = f"{path} (step {last_saved})" if os.path.exists(path) else "none yet"
            raise FloatingPointError(
                f"loss is {loss.item()} at step {step}; the last good checkpoint is {saved}. "
                "Lower --lr=, or pass --on_nonfinite=skip")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), run["grad_clip"])
        optimizer.step()
        if ema is not None:
            ema.update(model, step)
        if log is not None:
            log.append(dict(figures, step=step, loss=loss.item()))
        if (step + 1) % 10 == 0:
            rate = 10 * run["batch_size"] / (time.time() - tic)
            bar.set_postfix_str(f"loss {loss.item():.4f} {rate:.0f} img/s", refresh=False)
            tic = time.time()
        if (step + 1) % run["checkpoint_every"] == 0 or step + 1 == run["steps"]:
            checkpoint(step + 1)
            last_saved = step + 1
    bar.close()
    return model.eval(), ema.model if ema is not None else None, data


# ----------------------------------------------------------------------------------------------
# What a finished stage reports: figures on held-out data and pictures.

@torch.no_grad()
def evaluate(stage, model, train_data, test_data, device, out):
    """The figures a finished stage reports, on held-out data, and its pictures."""
    torch.manual_seed(0)
    if stage in ("prior", "ar_prior", "decoder"):
        clip_model = load_clip(out, device)
        if stage == "decoder":
            return evaluate_decoder(model, clip_model, test_data, out)
        return evaluate_prior(model, clip_model, test_data)
    if stage in ("upsampler", "upsampler2"):
        return evaluate_upsampler(model, test_data, stage, out)
    x, _, labels = test_data.batch(torch.arange(min(1000, len(test_data))))
    x = x.to(device)
    if stage == "ddpm":
        return evaluate_ddpm(model, train_data.class_names, device, out)
    if stage == "clip":
        return evaluate_clip(model, test_data, train_data)
    if stage == "classifier":
        t = torch.full((len(x),), model.cfg.timesteps // 2, device=device)
        return {"accuracy_t0": (model(x, 0 * t).argmax(1).cpu() == labels).float().mean().item(),
                "accuracy_half_T": (model(model.diffusion.q_sample(x, t, torch.randn_like(x)), t)
                                    .argmax(1).cpu() == labels).float().mean().item()}
    mean_image = (train_data.images.float().mean(0) / 127.5 - 1).to(device)
    figures = {"baseline_mse": (x - mean_image).pow(2).mean().item()}
    chunks = x.split(250)
    recon = torch.cat([model.reconstruct(c).clamp(-1, 1) for c in chunks])
    figures["mse"] = (recon - x).pow(2).mean().item()
    if stage == "dae":  # how well it removes the corruption it was trained on
        denoised = torch.cat([model.reconstruct(model.corrupt(c)).clamp(-1, 1) for c in chunks])
        figures["denoised_mse"] = (denoised - x).pow(2).mean().item()
    if stage == "vae":
        terms = [model.elbo_terms(c) for c in chunks]  # (log p(x | z), KL) per image
        figures["nats"] = torch.cat([kl - log_px for log_px, kl in terms]).mean().item()
        figures["bpd"] = figures["nats"] / (x[0].numel() * math.log(2))
        pictures = [model.sample(16, device), model.interpolate(x[0], x[1], 8),
                    model.interpolate(x[2], x[3], 8)]
        datasets.save_grid(torch.cat(pictures), os.path.join(out, "vae_samples.png"), scale=3)
    if stage == "vqvae":
        figures["perplexity"] = model(x)[4].item()
        figures["dead_codes"] = model.quantizer.dead_codes()
    datasets.save_grid(torch.cat([x[:16], recon[:16]]), os.path.join(out, f"{stage}_recon.png"),
                       scale=3)
    return figures


def exact_match(images, captions):
    """The checker's exact-match rates on one-object and two-object prompts, and overall; none
    for captions it cannot read (data other than shapes)."""
    try:
        for caption in captions:
            datasets.parse_caption(caption)
    except ValueError:
        return {}
    summary = datasets.check_images(images.cpu(), captions)
    return {f"exact_{group}": summary[group]["exact"] for group in ("one", "two")
            if group in summary} | {"exact": summary["exact"]}


def evaluate_prior(model, clip_model, test_data, n=200):
    """Mean cosine between the embedding sampled for a held-out caption and its image's true
    embedding; baselines: the caption's text embedding, and another image's embedding."""
    images, captions, _ = test_data.batch(torch.arange(min(n, len(test_data))))
    device = clip_model.logit_scale.device
    z_i, z_t, tokens = clip_embeddings(clip_model, images.to(device), captions)
    sampled = model.sample(z_t, tokens)
    return {"cosine_sample_image": F.cosine_similarity(sampled, z_i).mean().item(),
            "cosine_text_image": F.cosine_similarity(z_t, z_i).mean().item(),
            "cosine_other_image": F.cosine_similarity(z_i.roll(1, 0), z_i).mean().item()}


def evaluate_decoder(model, clip_model, test_data, out, n=64, guidance_scale=3.0):
    """Decode held-out images from their own image embedding and caption: the exact-match rate
    the cascade could reach with a perfect prior."""
    images, captions, _ = test_data.batch(torch.arange(min(n, len(test_data))))
    z_i, _, tokens = clip_embeddings(clip_model, images.to(clip_model.logit_scale.device), captions)
    decoded = model.sample(z_i, tokens, guidance_scale)
    datasets.save_grid(torch.cat([images[:16], decoded[:16].cpu()]),
                       os.path.join(out, "decoder_samples.png"), nrow=16, scale=3)
    return exact_match(decoded, captions)


def evaluate_upsampler(model, test_data, stage, out, n=64):
    """Upsample box-downsampled held-out images; against bilinear resizing, by MSE and by the
    checker's exact match at the output resolution."""
    images, captions, _ = test_data.batch(torch.arange(min(n, len(test_data))))
    x = images.to(next(model.parameters()).device)
    low = F.interpolate(x, size=model.cfg.low_resolution, mode="area")
    upsampled, bilinear = model.sample(low), model.condition(low).clamp(-1, 1)
    datasets.save_grid(torch.cat([bilinear[:8], upsampled[:8], x[:8]]).cpu(),
                       os.path.join(out, f"{stage}_samples.png"), nrow=8, scale=2)
    figures = {"mse": (upsampled - x).pow(2).mean().item(),
               "bilinear_mse": (bilinear - x).pow(2).mean().item()}
    figures.update({f"{k}_upsampled": v for k, v in exact_match(upsampled, captions).items()})
    figures.update({f"{k}_bilinear": v for k, v in exact_match(bilinear, captions).items()})
    return figures


def held_out_prompts(n, seed=1, split="train"):
    """n one-object and n two-object canonical captions of scenes not in the training data
    (another seed than training's 0; split "holdout" for the colour-shape pairs never seen)."""
    return [c[0] for objects in (1, 2)
            for c in datasets.shapes_data(n, 32, seed, split, prefixes=False,
                                          objects=objects).captions]


def evaluate_unclip(out, device, n=48):
    """Text to image on held-out prompts through the whole cascade: exact match at every
    resolution (on shapes; on other data, CLIP-FID against as many held-out images), a grid of
    samples and the prompts it shows."""
    clip_model, prior, decoder, upsamplers = load_unclip(out, device)
    data = load_checkpoint(os.path.join(out, "decoder.pt"), "decoder")["run"]["data"]
    shapes = data.startswith("shapes")
    if shapes:
        prompts = held_out_prompts(n)
    else:  # the first caption of 2n held-out images
        test = datasets.load_data(data, decoder.cfg.resolution, 2 * n, 1, "test")
        prompts = [c[0] for c in test.captions[:2 * n]]
    torch.manual_seed(0)
    stages, _ = unclip_sample(clip_model, prior, decoder, upsamplers, prompts)
    figures = {}
    for images in stages:
        res = images.shape[-1]
        figures.update({f"{k}_{res}px": v for k, v in exact_match(images, prompts).items()})
        if not shapes:
            real = datasets.load_data(data, res, 2 * n, 1, "test").images[:2 * n] / 127.5 - 1
            figures[f"clip_fid_{res}px"] = frechet_distance(
                *feature_statistics(clip_features(clip_model, real)),
                *feature_statistics(clip_features(clip_model, images)))
    shown = (list(range(8)) + list(range(n, n + 8)) if shapes  # one-object, two-object
             else list(range(min(16, len(prompts)))))
    datasets.save_grid(stages[-1][shown].cpu(), os.path.join(out, "unclip_samples.png"),
                       nrow=8, scale=2)
    with open(os.path.join(out, "unclip_samples.txt"), "w") as f:
        f.write("".join(f"row {i // 8 + 1}, column {i % 8 + 1}: {prompts[j]}\n"
                        for i, j in enumerate(shown)))
    return figures


def evaluate_ddpm(model, class_names, device, out, per_class=16):
    """A grid of DDIM samples, one row pair per class; on shapes, the share with the right shape."""
    if not model.cfg.num_classes:
        images = model.sample(32, steps=50, device=device)
        datasets.save_grid(images, os.path.join(out, "ddpm_samples.png"), scale=3)
        return {}
    y = torch.arange(model.cfg.num_classes, device=device).repeat_interleave(per_class)
    images = model.sample(len(y), y, guidance_scale=1.0, steps=50, device=device)
    datasets.save_grid(images, os.path.join(out, "ddpm_samples.png"), nrow=per_class, scale=3)
    if class_names != datasets.SHAPES:
        return {}
    _, right = datasets.shape_judgements(images.cpu(), [class_names[i] for i in y.tolist()])
    return {"shape_accuracy": sum(right) / len(right)}


def evaluate_clip(model, test_data, train_data):
    """Retrieval on held-out pairs; on shapes, zero-shot accuracy per attribute, and both again
    on the holdout split (colour-shape pairs never seen in training)."""
    figures = retrieval(model, test_data)
    if train_data.class_names == datasets.SHAPES:
        figures.update({f"zero_shot_{k}": v for k, v in shapes_zero_shot(model).items()})
        holdout = datasets.shapes_data(1000, model.cfg.resolution, seed=1, split="holdout",
                                       prefixes=False)
        figures.update({f"holdout_{k}": v for k, v in retrieval(model, holdout).items()})
        figures.update({f"holdout_zero_shot_{k}": v
                        for k, v in shapes_zero_shot(model, split="holdout").items()})
    return figures


def write_metrics(out, name, figures):
    with open(os.path.join(out, f"{name}_metrics.json"), "w") as f:
        json.dump(dict(figures, command="python train.py " + " ".join(sys.argv[1:])), f, indent=1)
    print(f"{name}: " + ", ".join(f"{k} {v:.4g}" for k, v in figures.items()))
    print(f"wrote {out}/{name}_metrics.json and pictures in {out}/")


def run_stage(stage, args, overrides, ignore_unknown=False):
    """Train one stage (with --eval: load it), evaluate it, write OUT/STAGE_metrics.json."""
    tic = time.time()
    if args.eval:
        state = load_checkpoint(os.path.join(args.out, f"{stage}.pt"), stage)
        run, seed = state["run"], state["seed"]
        model = restore_model(state, pick_device(args.device))
        train_data = datasets.load_data(run["data"], run["resolution"], run["n_train"], seed)
        figures = {}
    else:
        run, config = resolve_settings(stage, args, overrides, ignore_unknown)
        seed = args.seed
        # The main job resumes the stages it has checkpoints for and starts the others.
        resume = args.resume and (not ignore_unknown
                                  or os.path.exists(os.path.join(args.out, f"{stage}.pt")))
        model, ema, train_data = train(stage, run, config, args.out, seed, args.device, resume,
                                       args.quiet)
        model = ema or model
        figures = {"train_seconds": round(time.time() - tic, 1)}
    test_data = datasets.load_data(run["data"], run["resolution"], 1000, seed + 1, "test")
    device = next(model.parameters()).device
    figures.update(evaluate(stage, model, train_data, test_data, device, args.out))
    figures["total_seconds"] = round(time.time() - tic, 1)
    write_metrics(args.out, stage, figures)


def check_overrides(stages, overrides):
    """The main job passes each --key=value to the stages that have it; one none has is an error."""
    known = set(RUN_DEFAULTS)
    for stage in stages:
        known |= {f.name for f in dataclasses.fields(model_class(stage)[0])}
    for item in overrides:
        key = item[2:].partition("=")[0]
        if item.startswith("--") and "=" in item and key not in known:
            raise ValueError(f"unknown setting {key!r}: no stage of the main job has it")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("stage", nargs="?", default=MAIN_JOB,
                        help=f"{MAIN_JOB} (the main job) or one of: {', '.join(STAGES)}")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--data")
    parser.add_argument("--resolution", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--batch-size", type=int, dest="batch_size")
    parser.add_argument("--out", default="out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/STAGE.pt")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--eval", action="store_true",
                        help="no training: evaluate OUT/STAGE.pt and print its figures")
    args, overrides = parser.parse_known_args(argv)
    try:
        if args.stage != MAIN_JOB:
            run_stage(args.stage, args, overrides)
            return
        tic = time.time()
        check_overrides(UNCLIP_STAGES, overrides)
        for stage in UNCLIP_STAGES:
            run_stage(stage, args, overrides, ignore_unknown=True)
        figures = evaluate_unclip(args.out, pick_device(args.device))
        write_metrics(args.out, MAIN_JOB, dict(figures, total_seconds=round(time.time() - tic, 1)))
    except (ValueError, OSError, FloatingPointError) as e:  # user-facing errors: one line
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
