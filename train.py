"""Train any stage of the ladder: one plain loop, one checkpoint format.

    python train.py                  # the main job: unCLIP on shapes (CLIP, prior, decoder,
                                     # upsampler, one after the other), 18 min on 2 cores
    python train.py decoder          # one stage; prior, ar_prior and decoder read OUT/clip.pt
    python train.py vqvae --steps 500 --out runs/vq
    python train.py code_prior --out runs/vq      # a prior over that VQ-VAE's codes
    python train.py ddpm --data cifar10:~/data/cifar-10-python.tar.gz --preset gpu-cifar10
    python train.py vae --latent_dim=16 --lr=1e-3   # --key=value sets a run setting or model field
    python train.py clip --preset gpu-coco --print-settings   # what a run would use, as JSON
    torchrun --nproc_per_node=4 train.py decoder --preset gpu-coco  # 4 GPUs (or CPU processes)

A setting comes from, later winning: RUN_DEFAULTS or the model's dataclass (whose defaults are
the CPU values), the stage's line in STAGE_RUNS, --preset, the flags. Each step's randomness comes
from a seed made of (--seed, step), so a run continued with --resume takes exactly the steps an
uninterrupted one would. Writes OUT/STAGE.pt (atomically), OUT/STAGE_log.jsonl (each step's
figures) and OUT/STAGE_metrics.json (held-out figures, evaluate.py).

Under torchrun, PyTorch's DistributedDataParallel does the rest: every process draws the same
step's batch, takes its 1/N share of it (--batch_size stays the global batch), and the gradients
are averaged, so N processes take the steps one process would. Rank 0 alone writes checkpoints,
logs and figures. CLIP's contrastive loss then contrasts each process's share only.
"""
import argparse
import dataclasses
import json
import math
import os
import sys
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import data as datasets
from checkpoint import (CLIP_STAGES, FORMAT, STAGES, build_model, check_resumable, clip_fields,
                        fingerprint, load_checkpoint, load_clip, model_class, native_bf16,
                        pick_device, restore_model, save_checkpoint, stage_loss)
from clip import caption_vocabulary, clip_embeddings
from diffusion import EMA
from evaluate import evaluate, evaluate_unclip

RUN_DEFAULTS = dict(
    data="shapes",         # shapes | shapes:1 | shapes:2 | cifar10:PATH | folder:PATH | coco:PATH
    resolution=32,         # of the training images (and of the model, where it has one)
    n_train=20000,         # shapes scenes rendered into memory (other data sets: all of them)
    steps=2000,
    batch_size=64,
    lr=1e-3,
    warmup=100,            # linear learning-rate warm-up steps, then
    lr_schedule="constant",  # or "cosine": decay to 0 at the last step (both depend on the
                             # step alone, so resuming is exact)
    weight_decay=0.0,
    grad_clip=1.0,
    ema_decay=0.0,         # 0: no EMA of the weights; sampling uses the EMA when there is one
    checkpoint_every=500,
    on_nonfinite="stop",   # "stop" or "skip" a step whose loss is NaN or infinite
    precision="auto",      # auto: bf16 autocast on a GPU or a bf16 CPU (see below); bf16; fp32
    compile=False,         # torch.compile the loss (a GPU's speed-up; minutes of compiling)
)
CHOICES = dict(on_nonfinite=("stop", "skip"), precision=("auto", "bf16", "fp32"),
               lr_schedule=("constant", "cosine"))
# On a CPU with native bf16, "auto" autocasts these stages only: their convolutions run faster in
# bf16 there, while the transformers (CLIP, the priors) run slower (`python bench/throughput.py
# --levers`, docs/results.md).
CPU_BF16_STAGES = ("ddpm", "classifier", "decoder", "upsampler", "upsampler2")
# The CPU preset: each stage's run on shapes, unCLIP's four sized to train in about 20 minutes on
# 2 cores. The DDPM learns one-object scenes (so "the requested shape" is unambiguous); upsampler2
# is the upsampler set up as the paper's second, harsher one.
STAGE_RUNS = {
    "ae": dict(lr=2e-3), "dae": dict(lr=2e-3), "vae": dict(lr=2e-3), "vqvae": {},
    "code_prior": dict(steps=1200, lr_schedule="cosine"),
    "ddpm": dict(data="shapes:1", ema_decay=0.995),
    "classifier": dict(data="shapes:1", steps=600),
    "clip": dict(steps=800, batch_size=128, weight_decay=0.1),
    "prior": dict(steps=1000, batch_size=128, ema_decay=0.995, lr_schedule="cosine"),
    "ar_prior": dict(steps=1500, batch_size=128),  # not in the main job: slower to learn
    # Twice the steps of half the batch (the same images; 2% slower per image on 2 cores): two-
    # object prompts right 0.63 -> 0.72 through the cascade (development set, two runs each).
    "decoder": dict(steps=3200, batch_size=32, ema_decay=0.995, lr_schedule="cosine"),
    "upsampler": dict(resolution=64, steps=300, ema_decay=0.995, lr_schedule="cosine"),
    "upsampler2": dict(resolution=128, low_resolution=64, degradation="harsh",  # 7 min, 2 cores
                       channel_mult=(1, 2, 2, 2), steps=300, batch_size=16, n_train=4000,
                       ema_decay=0.995),
}
UNCLIP_STAGES = ("clip", "prior", "decoder", "upsampler")  # the main job, in order
# One-GPU presets, overrides for every stage ("all") and per stage: unCLIP on CIFAR-10 (32 -> 64
# px; with `ddpm`, the class-conditional DDPM), on Flickr8k (32 -> 64 px) and on COCO (64 -> 128
# px). Steps are sized by counted FLOPs (`python bench/throughput.py --presets`) and epochs; no
# preset has been timed on a GPU yet.
GPU_UNET = dict(channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
                attention_resolutions=(16, 8))
GPU_DIFFUSION = dict(lr=2e-4, ema_decay=0.9999, warmup=1000, batch_size=128)
GPU_UPSAMPLER = dict(GPU_DIFFUSION, channels=64, channel_mult=(1, 2, 2, 4), num_res_blocks=2,
                     batch_size=64)
GPU_CLIP = dict(batch_size=512, lr=5e-4, weight_decay=0.2, warmup=1000, embed_dim=256,
                tokenizer="byte", context_length=80, image_encoder="vit",
                text_width=256, text_layers=6, text_heads=8, vision_width=256, vision_layers=6,
                vision_heads=8)
GPU_PRIOR = dict(GPU_DIFFUSION, batch_size=256, width=512, layers=8, heads=8)
PRESETS = {
    "cpu": {},
    "gpu-cifar10": {
        "all": dict(data="cifar10:data/cifar-10-python.tar.gz", checkpoint_every=5000),
        "ddpm": dict(GPU_DIFFUSION, **GPU_UNET, steps=60000),
        "clip": dict(GPU_CLIP, steps=10000),
        "prior": dict(GPU_PRIOR, steps=20000),
        "decoder": dict(GPU_DIFFUSION, **GPU_UNET, steps=40000),
        "upsampler": dict(GPU_UPSAMPLER, resolution=64, low_resolution=32, steps=15000),
    },
    "gpu-flickr8k": {  # 7,091 training photos: fewer steps than COCO, or they are memorised
        "all": dict(data="captions:data/flickr8k-64/captions.txt", checkpoint_every=5000),
        "clip": dict(GPU_CLIP, steps=2000),
        "prior": dict(GPU_PRIOR, steps=10000),
        "decoder": dict(GPU_DIFFUSION, **GPU_UNET, steps=15000),
        "upsampler": dict(GPU_UPSAMPLER, resolution=64, low_resolution=32, steps=8000),
    },
    "gpu-coco": {
        "all": dict(data="coco:data/coco", resolution=64, n_train=50000, checkpoint_every=5000),
        "clip": dict(GPU_CLIP, steps=10000, context_length=128, patch_size=8),
        "prior": dict(GPU_PRIOR, steps=20000),
        "decoder": dict(GPU_DIFFUSION, **GPU_UNET, steps=20000, batch_size=64),
        "upsampler": dict(GPU_UPSAMPLER, resolution=128, low_resolution=64, steps=10000),
    },
}


def parse_value(text, like):
    """'--key=value' text -> the type of the default it replaces."""
    if isinstance(like, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"expected true or false, got {text!r}")
        return text.lower() in ("true", "1")
    if isinstance(like, tuple):  # --channel_mult=1,2,2
        return tuple(int(v) for v in text.split(",") if v)
    return type(like)(text) if like is not None else text


def resolve_settings(stage, preset="cpu", flags=(), ignore_unknown=False):
    """(run, config): the run settings and the model fields a stage trains with. flags are
    '--key=value' strings; ignore_unknown skips keys this stage lacks (the main job passes every
    flag to every stage)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: choose from {', '.join(PRESETS)}")
    fields = {f.name: f.default for f in dataclasses.fields(model_class(stage)[0])
              if f.name != "kind"}
    settings = {**STAGE_RUNS[stage], **PRESETS[preset].get("all", {}),
                **PRESETS[preset].get(stage, {})}
    for flag in flags:
        key, eq, text = flag[2:].partition("=")
        if not flag.startswith("--") or not eq:
            raise ValueError(f"unrecognised argument {flag!r}: settings are written --key=value")
        if key not in RUN_DEFAULTS and key not in fields:
            if ignore_unknown:
                continue
            raise ValueError(f"unknown setting {key!r} for stage {stage}: run settings are "
                             f"{', '.join(RUN_DEFAULTS)}; model fields are {', '.join(fields)}")
        try:
            settings[key] = parse_value(text, RUN_DEFAULTS.get(key, fields.get(key)))
        except ValueError as e:
            raise ValueError(f"--{key}: {e}") from None
    run = {k: settings.get(k, v) for k, v in RUN_DEFAULTS.items()}
    for key, allowed in CHOICES.items():
        if run[key] not in allowed:
            raise ValueError(f"--{key}={run[key]}: choose from {', '.join(allowed)}")
    for key in ("steps", "batch_size", "n_train", "warmup", "checkpoint_every"):
        if run[key] < 1:
            raise ValueError(f"--{key}={run[key]}: must be at least 1")
    config = {k: v for k, v in settings.items() if k in fields}
    if "resolution" in fields:
        config["resolution"] = run["resolution"]
    return run, config


# ----------------------------------------------------------------------------------------------
# The training loop, and the pieces it is made of.

def step_seed(seed, step):
    """The seed of one training step: a pure function of (seed, step), so resuming is exact."""
    return seed * 1_000_003 + step


def learning_rate(run, step):
    """Linear warm-up, then constant or a cosine decay to zero at the last step."""
    if step < run["warmup"] or run["lr_schedule"] == "constant":
        return run["lr"] * min(1.0, (step + 1) / run["warmup"])
    progress = (step - run["warmup"]) / max(1, run["steps"] - run["warmup"])
    return run["lr"] * 0.5 * (1 + math.cos(math.pi * progress))


def process_group(device):
    """(rank, number of processes). Under torchrun (which sets WORLD_SIZE and RANK) this joins
    PyTorch's process group once: NCCL between GPUs, gloo between CPUs. Alone: (0, 1)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return (dist.get_rank() if world > 1 else 0), world


def is_rank_zero():
    """Whether this process writes figures: alone, or rank 0 under torchrun."""
    return not dist.is_initialized() or dist.get_rank() == 0


class StageLoss(torch.nn.Module):
    """stage_loss as a module: DistributedDataParallel averages the gradients of what a wrapped
    module's forward returns, across the processes."""

    def __init__(self, stage, model, compile_loss=False):
        super().__init__()
        self.stage, self.model = stage, model
        self.loss = torch.compile(stage_loss) if compile_loss else stage_loss

    def forward(self, *batch):
        return self.loss(self.stage, self.model, *batch)


@torch.no_grad()
def cache_clip_embeddings(clip_model, data, chunk=500):
    """clip_embeddings of a whole data set whose images have one caption each, computed once:
    (z_i, z_t, tokens), the tokens in bfloat16 (20,000 shapes captions: 0.3 GB). Saves CLIP's
    forward pass at every step (measured: 0.24 s a prior step with it, 0.15 s without)."""
    features = [clip_embeddings(clip_model, *data.batch(i)[:2])
                for i in torch.arange(len(data)).split(chunk)]
    z_i, z_t, tokens = (torch.cat(f).cpu() for f in zip(*features))
    return z_i, z_t, tokens.bfloat16()


def complete_config(stage, config, data, clip_model):
    """What a stage's model takes from its data (the number of classes, CLIP's words) and from
    its CLIP."""
    if stage in ("ddpm", "classifier") and "num_classes" not in config:
        config = dict(config, num_classes=len(data.class_names) if data.labels is not None else 0)
    if stage == "classifier" and config["num_classes"] < 2:
        raise ValueError("a classifier needs data with 2+ classes: shapes, cifar10:PATH, a folder")
    if stage == "clip" and config.get("tokenizer", "word") == "word" and not config.get(
            "vocabulary"):
        config = dict(config, vocabulary=caption_vocabulary(c for cs in data.captions for c in cs))
    return dict(config, **clip_fields(stage, clip_model.cfg)) if clip_model else config


def speed_options(device, run, stage=None):
    """The fast path, chosen per device: bf16 autocast on a GPU, and on a CPU with native bf16
    for the U-Net stages only (CPU_BF16_STAGES); channels-last (what cuDNN's fastest
    convolutions want), fused AdamW and the data kept on the device on a GPU."""
    cuda = device.type == "cuda"
    cpu_bf16 = device.type == "cpu" and stage in CPU_BF16_STAGES and native_bf16(device)
    return dict(autocast=run["precision"] == "bf16" or (run["precision"] == "auto"
                                                        and (cuda or cpu_bf16)),
                channels_last=cuda, fused_adamw=cuda, data_on_device=cuda)


def data_to_device(data, clip_cache, device):
    """The uint8 data set (and CLIP's cached features) on the GPU, if it fits in a quarter of
    the free memory; otherwise left where it is, and each batch is copied asynchronously."""
    size = data.images.numel() + sum(f.numel() * f.element_size() for f in clip_cache or ())
    if size < torch.cuda.mem_get_info(device)[0] / 4:
        data.images = data.images.to(device)
        return [f.to(device) for f in clip_cache] if clip_cache is not None else None
    return clip_cache


def load_batch(data, index, device, memory_format, clip_model, clip_cache):
    """Images, captions, labels and (for stages that read CLIP) its features, on the device."""
    images, captions, labels = data.batch(index)
    if device.type == "cuda" and not images.is_cuda:
        images = images.pin_memory()  # a data set too big for the GPU: copy asynchronously
    images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
    labels = labels.to(device) if labels is not None else None
    features = None
    if clip_cache is not None:
        features = [f[index.to(f.device)].to(device).float() for f in clip_cache]
    elif clip_model is not None:
        features = clip_embeddings(clip_model, images, captions)
    return images, captions, labels, features


def train(stage, run, config, out, seed=0, device=None, resume=False, quiet=False):
    """Train one stage into OUT/STAGE.pt; returns (model, EMA model or None, training data)."""
    device = pick_device(device)
    rank, world = process_group(device)
    if world > 1 and device.type == "cuda":  # one GPU a process
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    if run["batch_size"] % world:
        raise ValueError(f"--batch_size={run['batch_size']} must divide among the {world} "
                         "processes: make it a multiple")
    path = os.path.join(out, f"{stage}.pt")
    state = load_checkpoint(path, stage) if resume else None  # fail before rendering any data
    os.makedirs(out, exist_ok=True)
    # The models a stage reads come first: a missing one fails before any data is rendered.
    clip_model = load_clip(out, device) if stage in CLIP_STAGES else None
    vqvae = None
    if stage == "code_prior":  # the frozen VQ-VAE it models the codes of, inside it
        vqvae = restore_model(load_checkpoint(os.path.join(out, "vqvae.pt"), "vqvae"))
        if vqvae.cfg.resolution != run["resolution"]:
            raise ValueError(f"{out}/vqvae.pt takes {vqvae.cfg.resolution} px images: pass "
                             f"--resolution={vqvae.cfg.resolution}")
        config = dict(config, vqvae=dataclasses.asdict(vqvae.cfg))
    data = datasets.load_data(run["data"], run["resolution"], run["n_train"], seed, "train")
    config = complete_config(stage, config, data, clip_model)
    torch.manual_seed(seed)  # the initial weights
    model = build_model(stage, config).to(device)
    if vqvae is not None:
        model.vqvae.load_state_dict(vqvae.state_dict())
    config = dataclasses.asdict(model.cfg)
    clip_cache = None
    if clip_model is not None and all(len(c) == 1 for c in data.captions):
        clip_cache = cache_clip_embeddings(clip_model, data)
    if stage == "ar_prior" and state is None:
        z_i = clip_cache[0] if clip_cache is not None else torch.cat(
            [clip_embeddings(clip_model, *data.batch(i)[:2])[0]
             for i in torch.arange(min(10000, len(data))).split(500)])
        model.fit_codebook(z_i[:10000].to(device))
    gpu = speed_options(device, run, stage)
    if gpu["data_on_device"]:
        clip_cache = data_to_device(data, clip_cache, device)
    memory_format = torch.channels_last if gpu["channels_last"] else torch.contiguous_format
    model.to(memory_format=memory_format)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=gpu["autocast"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=run["lr"],
                                  weight_decay=run["weight_decay"],
                                  fused=True if gpu["fused_adamw"] else None)
    ema = EMA(model, run["ema_decay"]) if run["ema_decay"] > 0 else None
    start = 0
    if state is not None:  # continue it, after checking it is the same run
        check_resumable(state, path, dict(config, **run, seed=seed), clip_model)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None:
            ema.model.load_state_dict(state["ema"])
        start = state["step"]
    loss_function = StageLoss(stage, model, run["compile"])
    if world > 1:  # the processes start from rank 0's weights and average every gradient
        loss_function = DistributedDataParallel(loss_function)
    log_path = os.path.join(out, f"{stage}_log.jsonl")
    kept = []
    if start and os.path.exists(log_path):  # the steps before the checkpoint; later ones rerun
        with open(log_path) as f:
            kept = [line for line in f if json.loads(line)["step"] < start]
    log = open(log_path if rank == 0 else os.devnull, "w")  # rank 0 alone writes
    log.writelines(kept)

    model.train()
    desc = f"{stage} ({device.type}, {'bf16' if gpu['autocast'] else 'fp32'})"
    bar = tqdm(range(start, run["steps"]), initial=start, total=run["steps"], desc=desc,
               disable=quiet or rank > 0, mininterval=1.0, dynamic_ncols=True)
    last_saved, tic = start, time.time()
    for step in bar:
        torch.manual_seed(step_seed(seed, step))  # all of this step's randomness
        index = torch.randint(len(data), (run["batch_size"],))
        if world > 1:  # each process takes its share of the batch, and its own noise
            index = index[rank::world]
            torch.manual_seed(step_seed(seed, step) * world + rank)
        batch = load_batch(data, index, device, memory_format, clip_model, clip_cache)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(run, step)
        with autocast:
            loss, figures = loss_function(*batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), run["grad_clip"])
        if torch.isfinite(loss) and torch.isfinite(grad_norm):
            optimizer.step()
            if ema is not None:
                ema.update(model, step)
            log.write(json.dumps(dict(figures, step=step, loss=loss.item())) + "\n")
        elif run["on_nonfinite"] == "stop":  # "skip" leaves the weights and goes on
            what = f"loss is {loss.item()}" if not torch.isfinite(loss) else (
                f"gradient norm is {grad_norm.item()}")
            saved = f"{path} (step {last_saved})" if os.path.exists(path) else "none yet"
            raise FloatingPointError(
                f"{what} at step {step}; the last good checkpoint is {saved}. "
                "Lower --lr=, or pass --on_nonfinite=skip")
        if (step + 1) % 10 == 0:
            rate = 10 * run["batch_size"] / (time.time() - tic)
            bar.set_postfix_str(f"loss {loss.item():.4f} {rate:.0f} img/s", refresh=False)
            tic = time.time()
        if rank == 0 and ((step + 1) % run["checkpoint_every"] == 0 or step + 1 == run["steps"]):
            log.flush()
            save_checkpoint(path, dict(
                format=FORMAT, stage=stage, config=config, run=run, seed=seed, step=step + 1,
                model=model.state_dict(), optimizer=optimizer.state_dict(),
                ema=ema.model.state_dict() if ema is not None else None,
                clip=fingerprint(clip_model) if clip_model is not None else None))
            last_saved = step + 1
    bar.close()
    log.close()
    if world > 1:
        dist.barrier()  # the checkpoint is written before any process reads it
    return model.eval(), ema.model if ema is not None else None, data


# ----------------------------------------------------------------------------------------------
# The command line.

def write_metrics(out, name, figures):
    with open(os.path.join(out, f"{name}_metrics.json"), "w") as f:
        json.dump(dict(figures, command="python train.py " + " ".join(sys.argv[1:])), f, indent=1)
    print(f"{name}: " + ", ".join(f"{k} {v:.4g}" for k, v in figures.items())
          + f"\nwrote {out}/{name}_metrics.json and pictures in {out}/")


def run_stage(stage, args, flags, ignore_unknown=False):
    """Train one stage (with --eval: load it), evaluate it, write OUT/STAGE_metrics.json."""
    tic = time.time()
    if args.eval:
        state = load_checkpoint(os.path.join(args.out, f"{stage}.pt"), stage)
        run, seed = state["run"], state["seed"]
        model = restore_model(state, pick_device(args.device))
        train_data = datasets.load_data(run["data"], run["resolution"], run["n_train"], seed)
        figures = {}
    else:
        run, config = resolve_settings(stage, args.preset, flags, ignore_unknown)
        seed = args.seed
        # The main job resumes the stages it has checkpoints for and starts the others.
        resume = args.resume and (not ignore_unknown
                                  or os.path.exists(os.path.join(args.out, f"{stage}.pt")))
        model, ema, train_data = train(stage, run, config, args.out, seed, args.device, resume,
                                       args.quiet)
        model = ema or model
        figures = {"train_seconds": round(time.time() - tic, 1)}
        if args.no_eval or not is_rank_zero():
            return
        if ignore_unknown and stage == "decoder":  # the main job spends its minutes training:
            write_metrics(args.out, stage, figures)  # `train.py decoder --eval` for the ceiling
            return
    test_data = datasets.load_data(run["data"], run["resolution"], 1000, seed + 1, "test")
    device = next(model.parameters()).device
    figures.update(evaluate(stage, model, train_data, test_data, device, args.out))
    figures["total_seconds"] = round(time.time() - tic, 1)
    write_metrics(args.out, stage, figures)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("stage", nargs="?", default="unclip",
                        help=f"unclip (the main job) or one of: {', '.join(STAGES)}")
    parser.add_argument("--preset", default="cpu", help=", ".join(PRESETS))
    for key in ("data", "resolution", "steps", "batch_size"):  # the common ones, spelt out
        parser.add_argument("--" + key.replace("_", "-"), dest=key)
    parser.add_argument("--out", default="out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/STAGE.pt")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--eval", action="store_true", help="evaluate OUT/STAGE.pt, no training")
    parser.add_argument("--no-eval", action="store_true", help="train only; no figures")
    parser.add_argument("--print-settings", action="store_true", help="print them as JSON")
    args, flags = parser.parse_known_args(argv)
    flags = [f"--{key}={getattr(args, key)}" for key in ("data", "resolution", "steps",
                                                          "batch_size")
             if getattr(args, key) is not None] + flags
    try:
        stages = UNCLIP_STAGES if args.stage == "unclip" else [args.stage]
        for stage in stages:
            model_class(stage)  # an unknown stage fails here, in one line
        known = set(RUN_DEFAULTS).union(*({f.name for f in dataclasses.fields(model_class(s)[0])}
                                          for s in stages))
        unknown = [key for key in (f[2:].partition("=")[0] for f in flags) if key not in known]
        if unknown and len(stages) > 1:
            raise ValueError(f"unknown setting {unknown[0]!r}: no stage of the main job has it")
        if args.print_settings:
            for stage in stages:
                print(json.dumps(dict(zip(("run", "config"), resolve_settings(
                    stage, args.preset, flags, len(stages) > 1)), stage=stage)))
            return
        tic = time.time()
        for stage in stages:
            run_stage(stage, args, flags, ignore_unknown=len(stages) > 1)
        if len(stages) > 1 and not args.no_eval and is_rank_zero():
            figures = evaluate_unclip(args.out, pick_device(args.device))
            write_metrics(args.out, "unclip", dict(figures,
                                                   total_seconds=round(time.time() - tic, 1)))
    except (ValueError, OSError, FloatingPointError) as e:  # user-facing errors: one line
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
