"""The stages: what each rung of the ladder trains, what it reads, its loss and its settings.

STAGES holds, for every stage `python train.py STAGE` knows, its model's config dataclass and
class, how a batch becomes its loss, the trained model it reads first (frozen), whether bf16
autocast pays on a bf16 CPU, and its run on the CPU preset; MAIN_JOB is unCLIP's order (the
paper's Fig. 2). A setting comes from, later winning: RUN_DEFAULTS or the model's dataclass, the
stage's run, the preset, the --key=value flags (resolve_settings). Then the preparation before
the first step: what a model takes from its data and from the model it reads.

Defines: RUN_DEFAULTS, CHOICES, the losses, Stage, STAGES, MAIN_JOB, PRESETS, stage_of,
model_fields, parse_value, resolve_settings, build_model, clip_sizes, frozen_fields, data_fields,
cache_clip_embeddings, prepare. Run `python stages.py` to print every stage's CPU settings.
"""
import dataclasses

import torch

import shapes
from clip import CLIP, CLIPConfig, caption_vocabulary, clip_embeddings
from decoder import Decoder, DecoderConfig
from diffusion import DDPM, ClassifierConfig, DDPMConfig, NoisyClassifier
from prior import ARPrior, ARPriorConfig, DiffusionPrior, PriorConfig
from upsample import Upsampler, UpsamplerConfig
from vae import AutoEncoder, VAEConfig
from vqvae import VQVAE, CodePrior, CodePriorConfig, VQVAEConfig

RUN_DEFAULTS = dict(
    data="shapes",         # shapes | shapes:1 | shapes:2 | cifar10:PATH | folder:PATH | coco:PATH
    resolution=32,         # of the training images (and of the model, where it has one)
    n_train=20000,         # shapes scenes rendered into memory (other data sets: all of them)
    steps=2000,
    batch_size=64,
    lr=1e-3,
    warmup=100,            # linear learning-rate warm-up steps, then
    lr_schedule="constant",  # or "cosine" to 0 at the last step (by the step alone: exact resume)
    weight_decay=0.0,
    grad_clip=1.0,
    ema_decay=0.0,         # 0: no EMA of the weights; sampling uses the EMA when there is one
    checkpoint_every=500,
    on_nonfinite="stop",   # "stop" or "skip" a step whose loss is NaN or infinite
    precision="auto",      # bf16 autocast on a GPU and where a bf16 CPU gains (Stage.cpu_bf16)
    compile=False,         # torch.compile the loss (a GPU's speed-up; minutes of compiling)
)
CHOICES = dict(on_nonfinite=("stop", "skip"), precision=("auto", "bf16", "fp32"),
               lr_schedule=("constant", "cosine"))


# ----------------------------------------------------------------------------------------------
# Each model's loss on one batch: images (B, 3, R, R) in [-1, 1], B captions, labels (B,) or
# None, and for the stages that read CLIP its features (z_i (B, D), z_t (B, D), tokens (B, L, W)).

def image_loss(model, images, captions, labels, features):
    return model.loss(images)


def labelled_loss(model, images, captions, labels, features):  # the classifier; the DDPM
    return model.loss(images, labels) if model.cfg.num_classes else model.loss(images)


def contrastive_loss(model, images, captions, labels, features):  # shapes' foils: hard negatives
    return model.loss(images, captions,
                      *shapes.contrastive_targets(captions, model.cfg.hard_negatives))


def prior_loss(model, images, captions, labels, features):
    return model.loss(*features)                                           # z_i, z_t, tokens


def decoder_loss(model, images, captions, labels, features):
    return model.loss(images, features[0], features[2])                  # x_0, z_i, tokens


# ----------------------------------------------------------------------------------------------
# The stage table.

@dataclasses.dataclass(frozen=True)
class Stage:
    config: type           # the model's dataclass; its defaults are the CPU values
    model: type
    loss: object           # (model, images, captions, labels, features) -> (loss, figures)
    run: dict              # the CPU preset's run of this stage, over RUN_DEFAULTS
    reads: str = None      # the stage whose trained model it needs first, frozen
    fixed: dict = dataclasses.field(default_factory=dict)  # model fields no flag may set
    cpu_bf16: bool = False  # its convolutions gain from bf16 on a bf16 CPU (bench/throughput.py)


# The CPU preset: each stage's run on shapes, unCLIP's four sized to train in 16-20 minutes on
# 2 cores. The DDPM learns one-object scenes (so "the requested shape" is unambiguous); upsampler2
# is the upsampler set up as the paper's second, harsher one (64 -> 128 px).
STAGES = {
    **{kind: Stage(VAEConfig, AutoEncoder, image_loss, dict(lr=2e-3), fixed=dict(kind=kind))
       for kind in ("ae", "dae", "vae")},
    "vqvae": Stage(VQVAEConfig, VQVAE, image_loss, {}),
    "code_prior": Stage(CodePriorConfig, CodePrior, image_loss,
                        dict(steps=1200, lr_schedule="cosine"), reads="vqvae"),
    "ddpm": Stage(DDPMConfig, DDPM, labelled_loss, dict(data="shapes:1", ema_decay=0.995),
                  cpu_bf16=True),
    "classifier": Stage(ClassifierConfig, NoisyClassifier, labelled_loss,
                        dict(data="shapes:1", steps=600), cpu_bf16=True),
    "clip": Stage(CLIPConfig, CLIP, contrastive_loss,
                  dict(steps=800, batch_size=128, weight_decay=0.1)),
    "prior": Stage(PriorConfig, DiffusionPrior, prior_loss,
                   dict(steps=1000, batch_size=128, ema_decay=0.995, lr_schedule="cosine"),
                   reads="clip"),
    "ar_prior": Stage(ARPriorConfig, ARPrior, prior_loss,  # not in the main job: slower to learn
                      dict(steps=1500, batch_size=128), reads="clip"),
    # Small batches, many steps: two-object scenes need the extra updates (docs/decisions.md).
    "decoder": Stage(DecoderConfig, Decoder, decoder_loss,
                     dict(steps=3200, batch_size=32, ema_decay=0.995, lr_schedule="cosine"),
                     reads="clip", cpu_bf16=True),
    "upsampler": Stage(UpsamplerConfig, Upsampler, image_loss,
                       dict(resolution=64, steps=300, ema_decay=0.995, lr_schedule="cosine"),
                       cpu_bf16=True),
    "upsampler2": Stage(UpsamplerConfig, Upsampler, image_loss,
                        dict(resolution=128, low_resolution=64, degradation="harsh",
                             channel_mult=(1, 2, 2, 2), steps=300, batch_size=16, n_train=4000,
                             ema_decay=0.995), cpu_bf16=True),
}
MAIN_JOB = ("clip", "prior", "decoder", "upsampler")

# One-GPU presets, overrides for all stages and per stage: unCLIP on CIFAR-10 (and its class-
# conditional DDPM) and Flickr8k at 32 -> 64 px, on COCO at 64 -> 128 px; steps sized by counted
# FLOPs (`python bench/throughput.py --presets`) and epochs, not yet timed on a GPU.
GPU_UNET = dict(channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
                attention_resolutions=(16, 8))
GPU_DIFFUSION = dict(lr=2e-4, ema_decay=0.9999, warmup=1000, batch_size=128)
GPU_UPSAMPLER = dict(GPU_DIFFUSION, channels=64, channel_mult=(1, 2, 2, 4), num_res_blocks=2,
                     batch_size=64)
GPU_CLIP = dict(batch_size=512, lr=5e-4, weight_decay=0.2, warmup=1000, embed_dim=256,
                tokenizer="byte", context_length=80, image_encoder="vit", text_width=256,
                text_layers=6, text_heads=8, vision_width=256, vision_layers=6, vision_heads=8)
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


def stage_of(name):
    """The table's row, or a one-line error naming the stages."""
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}: choose from {', '.join(STAGES)}")
    return STAGES[name]


def model_fields(name):
    """{field: default} of the model fields a flag may set for a stage."""
    stage = stage_of(name)
    return {f.name: f.default for f in dataclasses.fields(stage.config)
            if f.name not in stage.fixed}


# ----------------------------------------------------------------------------------------------
# Settings: run and model fields from the table, a preset and the command line.

def parse_value(text, like):
    """'--key=value' text -> the type of the default it replaces."""
    if isinstance(like, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"expected true or false, got {text!r}")
        return text.lower() in ("true", "1")
    if isinstance(like, tuple):  # --channel_mult=1,2,2
        return tuple(int(v) for v in text.split(",") if v)
    return type(like)(text) if like is not None else text


def resolve_settings(name, preset="cpu", flags=(), ignore_unknown=False):
    """(run, config): the run settings and the model fields a stage trains with. flags are
    '--key=value' strings; ignore_unknown skips keys this stage lacks (the main job passes every
    flag to every stage)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: choose from {', '.join(PRESETS)}")
    fields = model_fields(name)
    settings = {**STAGES[name].run, **PRESETS[preset].get("all", {}),
                **PRESETS[preset].get(name, {})}
    for flag in flags:
        key, eq, text = flag[2:].partition("=")
        if not flag.startswith("--") or not eq:
            raise ValueError(f"unrecognised argument {flag!r}: settings are written --key=value")
        if key not in RUN_DEFAULTS and key not in fields:
            if ignore_unknown:
                continue
            raise ValueError(f"unknown setting {key!r} for stage {name}: run settings are "
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


def build_model(name, config):
    """A stage's model from a dict of its config's fields. Unknown fields are an error."""
    stage = stage_of(name)
    return stage.model(stage.config(**dict(config, **stage.fixed)))


# ----------------------------------------------------------------------------------------------
# Preparation: what a model takes from the model it reads and from its data.

def clip_sizes(name, clip_cfg):
    """The sizes of CLIP's that a stage reading it must match, under CLIP's names."""
    sizes = dict(embed_dim=clip_cfg.embed_dim, text_width=clip_cfg.text_width,
                 context_length=clip_cfg.context_length)
    return {k: v for k, v in sizes.items() if k in model_fields(name)}


def frozen_fields(name, config, frozen, run):
    """The model fields a stage takes from the frozen model it reads: CLIP's sizes, or the
    VQ-VAE's whole config (the code prior holds its VQ-VAE)."""
    if frozen is None:
        return config
    if STAGES[name].reads == "clip":
        return dict(config, **clip_sizes(name, frozen.cfg))
    if frozen.cfg.resolution != run["resolution"]:
        raise ValueError(f"the {STAGES[name].reads} takes {frozen.cfg.resolution} px images: "
                         f"pass --resolution={frozen.cfg.resolution}")
    return dict(config, vqvae=dataclasses.asdict(frozen.cfg))


def data_fields(name, config, data):
    """What a model takes from its data: the number of classes, CLIP's word vocabulary."""
    if "num_classes" in model_fields(name) and "num_classes" not in config:
        config = dict(config, num_classes=len(data.class_names) if data.labels is not None else 0)
    if name == "classifier" and config["num_classes"] < 2:
        raise ValueError("a classifier needs data with 2+ classes: shapes, cifar10:PATH, a folder")
    if name == "clip" and config.get("tokenizer", "word") == "word" and not config.get(
            "vocabulary"):
        config = dict(config, vocabulary=caption_vocabulary(c for cs in data.captions for c in cs))
    return config


@torch.no_grad()
def cache_clip_embeddings(clip_model, data, chunk=500):
    """clip_embeddings (z_i, z_t, tokens) of a data set with one caption an image, computed once,
    the tokens in bf16 (20,000 shapes captions: 0.3 GB): a prior step takes 0.15 s, not 0.24."""
    features = [clip_embeddings(clip_model, *data.batch(i)[:2])
                for i in torch.arange(len(data)).split(chunk)]
    z_i, z_t, tokens = (torch.cat(f).cpu() for f in zip(*features))
    return z_i, z_t, tokens.bfloat16()


def prepare(model, frozen, data, clip_cache, resumed):
    """Before the first step: the code prior copies its frozen VQ-VAE's weights in; the AR prior
    fits its codebook to (up to 10,000) training image embeddings, unless resuming."""
    if isinstance(model, CodePrior):
        model.vqvae.load_state_dict(frozen.state_dict())
    if isinstance(model, ARPrior) and not resumed:
        device = next(model.parameters()).device
        z_i = clip_cache[0] if clip_cache is not None else torch.cat(
            [clip_embeddings(frozen, *data.batch(i)[:2])[0]
             for i in torch.arange(min(10000, len(data))).split(500)])
        model.fit_codebook(z_i[:10000].to(device))


if __name__ == "__main__":
    for name in STAGES:
        run, config = resolve_settings(name)
        changed = {k: v for k, v in {**run, **config}.items()
                   if v != RUN_DEFAULTS.get(k, model_fields(name).get(k))}
        print(f"{name}: reads {STAGES[name].reads or 'data'}; {changed or 'the defaults'}")
