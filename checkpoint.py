"""Checkpoints: one format for every stage, written atomically, loaded safely.

A checkpoint is a dict of plain data and tensors: format, stage, config (the model's dataclass
as a dict, so the model can be rebuilt), run settings, seed, step, model, optimizer and ema
weights. It is written to a temporary file and renamed, so a crash mid-write leaves the previous
checkpoint whole, and read with torch.load(weights_only=True), so a downloaded file cannot run
code. Loading checks the format and stage and says what is wrong in one line.

Defines: model_class, build_model, clip_fields and stage_loss (the one place that maps a stage
to its model and to what its loss takes), clip_targets (CLIP's foils and keys on shapes),
save_checkpoint, load_checkpoint, check_resumable, restore_model, fingerprint, load_clip (frozen,
optionally checked against a fingerprint), load_unclip (the whole cascade, checked),
pick_device (CUDA, then MPS, then CPU) and native_bf16.
"""
import os

import torch

import shapes
from clip import CLIP, CLIPConfig
from decoder import Decoder, DecoderConfig
from diffusion import DDPM, ClassifierConfig, DDPMConfig, NoisyClassifier
from prior import ARPrior, ARPriorConfig, DiffusionPrior, PriorConfig
from upsample import Upsampler, UpsamplerConfig
from vae import AutoEncoder, VAEConfig
from vqvae import VQVAE, CodePrior, CodePriorConfig, VQVAEConfig

FORMAT = "unclip-from-scratch/1"
STAGES = ("ae", "dae", "vae", "vqvae", "code_prior", "ddpm", "classifier", "clip", "prior",
          "ar_prior", "decoder", "upsampler", "upsampler2")
CLASSES = {"vqvae": (VQVAEConfig, VQVAE), "code_prior": (CodePriorConfig, CodePrior),
           "ddpm": (DDPMConfig, DDPM), "classifier": (ClassifierConfig, NoisyClassifier),
           "clip": (CLIPConfig, CLIP), "prior": (PriorConfig, DiffusionPrior),
           "ar_prior": (ARPriorConfig, ARPrior),
           "decoder": (DecoderConfig, Decoder), "upsampler": (UpsamplerConfig, Upsampler),
           "upsampler2": (UpsamplerConfig, Upsampler)}


CLIP_STAGES = ("prior", "ar_prior", "decoder")  # these read a trained CLIP's features


class CheckpointError(ValueError):
    pass


def model_class(stage):
    """stage -> (config dataclass, model class)."""
    if stage in ("ae", "dae", "vae"):
        return VAEConfig, AutoEncoder
    if stage in CLASSES:
        return CLASSES[stage]
    raise ValueError(f"unknown stage {stage!r}: choose from {', '.join(STAGES)}")


def build_model(stage, config):
    """stage and a dict of config fields -> model. Unknown fields are an error."""
    config_cls, cls = model_class(stage)
    if stage in ("ae", "dae", "vae"):
        config = dict(config, kind=stage)
    return cls(config_cls(**config))


def check_resumable(state, path, settings, clip_model=None):
    """Refuse, in one line, to continue a checkpoint with other settings (model fields, run
    settings and seed in one dict; a run may be continued to more steps, unless its learning
    rate decays to zero at the last) or another CLIP."""
    saved = dict(state["config"], **state["run"], seed=state["seed"])
    free = ["checkpoint_every"] + ["steps"] * (settings.get("lr_schedule") != "cosine")
    diff = sorted(k for k in settings if k not in free and saved.get(k) != settings[k])
    if diff:
        raise CheckpointError(f"{path} was trained with other settings ({', '.join(diff)}); "
                              "resume with the same flags or choose another --out")
    if clip_model is not None and state.get("clip") != fingerprint(clip_model):
        raise CheckpointError(f"{path} was trained with another CLIP: train it again without "
                              "--resume")


def clip_fields(stage, clip_cfg):
    """The model fields a CLIP-reading stage takes from its CLIP's config."""
    if stage == "decoder":
        return dict(embedding_dim=clip_cfg.embed_dim, text_width=clip_cfg.text_width)
    return dict(embed_dim=clip_cfg.embed_dim, text_width=clip_cfg.text_width,
                context_length=clip_cfg.context_length)


def stage_loss(stage, model, images, captions, labels, clip_features=None):
    """One batch's (loss, figures) for a stage's model: what each model's loss takes."""
    if stage in CLIP_STAGES:
        z_i, z_t, tokens = clip_features
        if stage == "decoder":
            return model.loss(images, z_i, tokens)
        return model.loss(z_i, z_t, tokens)
    if stage == "clip":
        return model.loss(images, captions, *clip_targets(captions, model.cfg.hard_negatives))
    if stage == "classifier" or (stage == "ddpm" and model.cfg.num_classes):
        return model.loss(images, labels)
    return model.loss(images)


def clip_targets(captions, hard_negatives):
    """(foils, keys) for CLIP's loss on a batch. On shapes: what each caption describes
    (shapes.scene_key: "a picture of a X below a Y" and "a Y above a X" describe one scene, so
    neither is the other's negative) and up to hard_negatives minimal foils of each two-object
    caption, drawn at random, none describing an image of the batch. Other data: no foils, and
    the captions themselves as keys."""
    try:
        keys = [shapes.scene_key(c) for c in captions]
    except ValueError:
        return (), None
    foils, described = [], set(keys)
    for caption, key in zip(captions, keys):
        if hard_negatives and "relation" in shapes.parse_caption(key):
            options = [f for f in shapes.minimal_foils(caption).values()
                       if shapes.scene_key(f) not in described]
            order = torch.randperm(len(options)).tolist()  # the step's seed: resume is exact
            foils += [options[i] for i in order[:hard_negatives]]
    return foils, keys


def save_checkpoint(path, state):
    """Write to a temporary file, then rename: a crash leaves the previous checkpoint intact."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise OSError(f"could not write checkpoint {path} ({e.strerror}); the previous one is "
                      "intact. Free disk space or choose a writable --out") from None


def load_checkpoint(path, stage=None):
    """Read a checkpoint written by save_checkpoint; check its format and (if given) its stage."""
    if not os.path.exists(path):
        raise CheckpointError(f"no checkpoint at {path}: train it first (python train.py "
                              f"{stage or 'STAGE'}) or pass the right path")
    try:  # weights_only: tensors and plain data; a pickled object is refused, never run
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        raise CheckpointError(f"{path} is truncated or not a checkpoint of this project (or holds "
                              "pickled objects, which are not loaded); train it again") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a {FORMAT} checkpoint (format "
                              f"{state.get('format') if isinstance(state, dict) else None!r})")
    if stage is not None and state["stage"] != stage:
        raise CheckpointError(f"{path} holds a {state['stage']!r} model, not {stage!r}: "
                              "pass the checkpoint of that stage")
    return state


def restore_model(state, device="cpu", use_ema=True):
    """Rebuild a model from a checkpoint (its own config), in eval mode."""
    model = build_model(state["stage"], state["config"])
    weights = state["ema"] if use_ema and state.get("ema") else state["model"]
    try:
        model.load_state_dict(weights)
    except RuntimeError:
        raise CheckpointError("checkpoint weights do not match its config "
                              "(written by another version of this code?)") from None
    return model.to(device).eval()


def fingerprint(model):
    """A number that changes when any weight does: the prior and decoder record their CLIP's,
    so that sampling with a retrained CLIP is caught instead of silently producing noise."""
    return round(sum(p.detach().cpu().double().abs().sum().item() for p in model.parameters()), 4)


def load_clip(folder, device="cpu", expected_fingerprint=None):
    """FOLDER/clip.pt, frozen and in eval mode; with an expected fingerprint, refuse another CLIP.

    model.encode_text(list_of_str) and model.encode_image(images in [-1, 1]) return unnormalised
    embeddings of size cfg.embed_dim; normalise them to compare."""
    clip_model = restore_model(load_checkpoint(os.path.join(folder, "clip.pt"), "clip"), device)
    clip_model.requires_grad_(False)
    if expected_fingerprint is not None and fingerprint(clip_model) != expected_fingerprint:
        raise CheckpointError(f"{folder}/clip.pt is not the CLIP this model was trained with "
                              "(retrained since?): retrain the prior and decoder on it")
    return clip_model


def load_unclip(folder, device="cpu", prior_stage="prior"):
    """The cascade `python train.py` writes to a folder: (clip, prior, decoder, upsamplers), all
    in eval mode, the prior and decoder checked to have been trained on this CLIP."""
    clip_model = load_clip(folder, device)
    stamp = fingerprint(clip_model)
    models = []
    for stage in (prior_stage, "decoder"):
        path = os.path.join(folder, f"{stage}.pt")
        state = load_checkpoint(path, stage)
        if state.get("clip") != stamp:
            raise CheckpointError(f"{path} was trained with another CLIP than {folder}/clip.pt: "
                                  f"train it again (python train.py {stage} --out {folder})")
        models.append(restore_model(state, device))
    upsamplers, resolution = [], models[1].cfg.resolution
    for stage in ("upsampler", "upsampler2"):
        path = os.path.join(folder, f"{stage}.pt")
        if os.path.exists(path):
            upsampler = restore_model(load_checkpoint(path, stage), device)
            if upsampler.cfg.low_resolution != resolution:
                raise CheckpointError(f"{path} takes {upsampler.cfg.low_resolution} px images, "
                                      f"but the stage before it makes {resolution} px")
            upsamplers.append(upsampler)
            resolution = upsampler.cfg.resolution
    return clip_model, models[0], models[1], upsamplers


def pick_device(name):
    if name not in (None, "auto"):
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def native_bf16(device):
    """Whether a device computes in bfloat16 natively: a CUDA GPU, or a CPU with the avx512_bf16
    or amx_bf16 flags of /proc/cpuinfo (elsewhere bf16 is emulated, and slower than fp32)."""
    if device.type != "cpu":
        return device.type == "cuda"
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags
