"""Train any stage of the ladder: one plain loop, one checkpoint format.

    python train.py                  # the main job: unCLIP on shapes (CLIP, prior, decoder,
                                     # upsampler, one after the other), 16-20 min on 2 cores
    python train.py decoder          # one stage; prior, ar_prior and decoder read OUT/clip.pt
    python train.py vqvae --steps 500 --out runs/vq
    python train.py code_prior --out runs/vq      # a prior over that VQ-VAE's codes
    python train.py ddpm --data cifar10:~/data/cifar-10-python.tar.gz --preset gpu-cifar10
    python train.py vae --latent_dim=16 --lr=1e-3   # --key=value sets a run setting or model field
    python train.py clip --preset gpu-coco --print-settings   # what a run would use, as JSON
    torchrun --nproc_per_node=4 train.py decoder --preset gpu-coco  # 4 GPUs (or CPU processes)

What each stage is, reads and trains with, and the settings it resolves to (the run defaults,
its run on the CPU preset, --preset, the flags) live in stages.py. Each step's randomness comes
from a seed made of (--seed, step), so a run continued with --resume takes exactly the steps an
uninterrupted one would. Writes OUT/STAGE.pt (atomically), OUT/STAGE_log.jsonl (each step's
figures) and OUT/STAGE_metrics.json (figures on test data, evaluate.py).

Under torchrun, PyTorch's DistributedDataParallel does the rest: every process draws the same
step's batch, takes its 1/N share of it (--batch_size stays the global batch), and the gradients
are averaged, so N processes take the steps one process would. Rank 0 alone writes checkpoints,
logs and figures. CLIP's contrastive loss then contrasts each process's share only.
"""
import argparse
import copy
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
from checkpoint import (FORMAT, check_resumable, fingerprint, load_checkpoint, load_frozen,
                        native_bf16, pick_device, restore_model, save_checkpoint)
from clip import clip_embeddings
from evaluate import evaluate, evaluate_unclip
from stages import (MAIN_JOB, PRESETS, RUN_DEFAULTS, STAGES, build_model, cache_clip_embeddings,
                    data_fields, frozen_fields, model_fields, prepare, resolve_settings, stage_of)


# ----------------------------------------------------------------------------------------------
# The pieces of the loop.

def step_seed(seed, step):
    """The seed of one training step: a pure function of (seed, step), so resuming is exact."""
    return seed * 1_000_003 + step


def learning_rate(run, step):
    """Linear warm-up, then constant or a cosine decay to zero at the last step."""
    if step < run["warmup"] or run["lr_schedule"] == "constant":
        return run["lr"] * min(1.0, (step + 1) / run["warmup"])
    progress = (step - run["warmup"]) / max(1, run["steps"] - run["warmup"])
    return run["lr"] * 0.5 * (1 + math.cos(math.pi * progress))


class EMA:
    """The weights' moving average, for sampling: theta_ema <- d theta_ema + (1 - d) theta after
    each step, d = min(decay, (1 + step) / (10 + step)), warmed up or a short run's average keeps
    decay^steps of the initial weights (0.995^500 = 8%, enough to tint every sample)."""

    def __init__(self, model, decay):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model, step):
        decay = min(self.decay, (1 + step) / (10 + step))
        for p_ema, p in zip(self.model.parameters(), model.parameters()):
            p_ema.lerp_(p, 1 - decay)
        for b_ema, b in zip(self.model.buffers(), model.buffers()):
            b_ema.copy_(b)


class StageLoss(torch.nn.Module):
    """A stage's loss as a module: DistributedDataParallel averages the gradients of what a
    wrapped module's forward returns, across the processes."""

    def __init__(self, loss, model, compile_loss=False):
        super().__init__()
        self.model = model
        self.loss = torch.compile(loss) if compile_loss else loss

    def forward(self, *batch):
        return self.loss(self.model, *batch)


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


# ----------------------------------------------------------------------------------------------
# Devices and processes: the fast path per device, and torchrun's process group.

def speed_options(device, run, cpu_bf16):
    """The fast path, chosen per device: bf16 autocast on a GPU, and on a CPU with native bf16
    for the stages whose convolutions it speeds up (Stage.cpu_bf16); channels-last (what cuDNN's
    fastest convolutions want), fused AdamW and the data kept on the device on a GPU."""
    cuda = device.type == "cuda"
    bf16_cpu = device.type == "cpu" and cpu_bf16 and native_bf16(device)
    return dict(autocast=run["precision"] == "bf16" or (run["precision"] == "auto"
                                                        and (cuda or bf16_cpu)),
                channels_last=cuda, fused_adamw=cuda, data_on_device=cuda)


def join_processes(device, batch_size):
    """(device, rank, number of processes). Under torchrun (which sets WORLD_SIZE, RANK and
    LOCAL_RANK): join the process group once (NCCL on GPUs, gloo on CPUs), one GPU a process."""
    device = pick_device(device)
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world == 1:
        return device, 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    if batch_size % world:
        raise ValueError(f"--batch_size={batch_size} must divide among the {world} processes: "
                         "make it a multiple")
    return device, dist.get_rank(), world


def is_rank_zero():
    """Whether this process writes figures: alone, or rank 0 under torchrun."""
    return not dist.is_initialized() or dist.get_rank() == 0


def data_to_device(data, clip_cache, device):
    """The uint8 data set (and CLIP's cached features) on the GPU, if it fits in a quarter of
    the free memory; otherwise left where it is, and each batch is copied asynchronously."""
    size = data.images.numel() + sum(f.numel() * f.element_size() for f in clip_cache or ())
    if size < torch.cuda.mem_get_info(device)[0] / 4:
        data.images = data.images.to(device)
        return [f.to(device) for f in clip_cache] if clip_cache is not None else None
    return clip_cache


# ----------------------------------------------------------------------------------------------
# Training one stage: settings -> what it reads and its data -> model -> optimiser and resume ->
# the loop -> checkpoints.

def train(name, run, config, out, seed=0, device=None, resume=False, quiet=False):
    """Train one stage into OUT/NAME.pt; returns (model, EMA model or None, training data)."""
    stage = stage_of(name)
    device, rank, world = join_processes(device, run["batch_size"])
    path = os.path.join(out, f"{name}.pt")
    # What the run reads comes first: a missing checkpoint fails before any data is rendered.
    state = load_checkpoint(path, name) if resume else None
    os.makedirs(out, exist_ok=True)
    frozen = load_frozen(out, stage.reads, device) if stage.reads else None
    clip_model = frozen if stage.reads == "clip" else None
    config = frozen_fields(name, config, frozen, run)
    data = datasets.load_data(run["data"], run["resolution"], run["n_train"], seed, "train")
    config = data_fields(name, config, data)

    torch.manual_seed(seed)  # the initial weights
    model = build_model(name, config).to(device)
    config = dataclasses.asdict(model.cfg)
    clip_cache = None
    if clip_model is not None and all(len(c) == 1 for c in data.captions):
        clip_cache = cache_clip_embeddings(clip_model, data)
    prepare(model, frozen, data, clip_cache, resumed=state is not None)
    speed = speed_options(device, run, stage.cpu_bf16)
    if speed["data_on_device"]:
        clip_cache = data_to_device(data, clip_cache, device)
    memory_format = torch.channels_last if speed["channels_last"] else torch.contiguous_format
    model.to(memory_format=memory_format)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=speed["autocast"])

    optimizer = torch.optim.AdamW(model.parameters(), lr=run["lr"],
                                  weight_decay=run["weight_decay"],
                                  fused=True if speed["fused_adamw"] else None)
    ema = EMA(model, run["ema_decay"]) if run["ema_decay"] > 0 else None
    start = 0
    if state is not None:  # continue it, after checking it is the same run
        check_resumable(state, path, dict(config, **run, seed=seed), clip_model)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None:
            ema.model.load_state_dict(state["ema"])
        start = state["step"]
    loss_function = StageLoss(stage.loss, model, run["compile"])
    if world > 1:  # the processes start from rank 0's weights and average every gradient
        loss_function = DistributedDataParallel(loss_function)
    log_path = os.path.join(out, f"{name}_log.jsonl")
    kept = []
    if start and os.path.exists(log_path):  # the steps before the checkpoint; later ones rerun
        with open(log_path) as f:
            kept = [line for line in f if json.loads(line)["step"] < start]
    log = open(log_path if rank == 0 else os.devnull, "w")  # rank 0 alone writes
    log.writelines(kept)

    model.train()
    desc = f"{name} ({device.type}, {'bf16' if speed['autocast'] else 'fp32'})"
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
                format=FORMAT, stage=name, config=config, run=run, seed=seed, step=step + 1,
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


def run_stage(name, args, flags, main_job=False):
    """Train one stage (with --eval: load it), evaluate it, write OUT/NAME_metrics.json. Each
    stage of the main job takes the flags it has."""
    tic = time.time()
    if args.eval:
        state = load_checkpoint(os.path.join(args.out, f"{name}.pt"), name)
        run, seed = state["run"], state["seed"]
        model = restore_model(state, pick_device(args.device))
        train_data = datasets.load_data(run["data"], run["resolution"], run["n_train"], seed)
        figures = {}
    else:
        run, config = resolve_settings(name, args.preset, flags, ignore_unknown=main_job)
        seed = args.seed
        # The main job resumes the stages it has checkpoints for and starts the others.
        resume = args.resume and (not main_job
                                  or os.path.exists(os.path.join(args.out, f"{name}.pt")))
        model, ema, train_data = train(name, run, config, args.out, seed, args.device, resume,
                                       args.quiet)
        model = ema or model
        figures = {"train_seconds": round(time.time() - tic, 1)}
        if args.no_eval or not is_rank_zero():
            return
        if main_job and name == "decoder":  # the main job spends its minutes training:
            write_metrics(args.out, name, figures)  # `train.py decoder --eval` for the ceiling
            return
    test_data = datasets.load_data(run["data"], run["resolution"], 1000, seed, "test")
    device = next(model.parameters()).device
    figures.update(evaluate(name, model, train_data, test_data, device, args.out, seed))
    figures["total_seconds"] = round(time.time() - tic, 1)
    write_metrics(args.out, name, figures)


def main(argv=None):
    common = ("data", "resolution", "steps", "batch_size")  # settings with a flag of their own
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("stage", nargs="?", default="unclip",
                        help=f"unclip (the main job) or one of: {', '.join(STAGES)}")
    parser.add_argument("--preset", default="cpu", help=", ".join(PRESETS))
    for key in common:
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
    flags = [f"--{key}={getattr(args, key)}" for key in common if getattr(args, key) is not None
             ] + flags
    try:
        names = MAIN_JOB if args.stage == "unclip" else [args.stage]
        known = set(RUN_DEFAULTS).union(*(model_fields(name) for name in names))
        unknown = [key for key in (f[2:].partition("=")[0] for f in flags) if key not in known]
        if unknown and len(names) > 1:
            raise ValueError(f"unknown setting {unknown[0]!r}: no stage of the main job has it")
        if args.print_settings:
            for name in names:
                print(json.dumps(dict(zip(("run", "config"), resolve_settings(
                    name, args.preset, flags, len(names) > 1)), stage=name)))
            return
        tic = time.time()
        for name in names:
            run_stage(name, args, flags, main_job=len(names) > 1)
        if len(names) > 1 and not args.no_eval and is_rank_zero():
            seed = load_checkpoint(os.path.join(args.out, "decoder.pt"), "decoder")["seed"]
            figures = evaluate_unclip(args.out, pick_device(args.device), seed)
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
