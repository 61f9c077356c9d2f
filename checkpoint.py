"""Checkpoints: one format for every stage, written atomically, loaded safely.

A checkpoint is a dict of plain data and tensors: format, stage, config (the model's dataclass
as a dict, so the model can be rebuilt), run settings, seed, step, model, optimizer and ema
weights. It is written to a temporary file and renamed, so a crash mid-write leaves the previous
checkpoint whole, and read with torch.load(weights_only=True), so a downloaded file cannot run
code. Loading checks the format and stage and says what is wrong in one line.

Defines: check_resumable, save_checkpoint, load_checkpoint, restore_model (the model rebuilt by
stages.build_model from the config it stores), fingerprint, load_frozen (a trained model another
stage reads), load_clip (frozen, optionally checked against a fingerprint), load_unclip (the whole
cascade, checked), pick_device (CUDA, then MPS, then CPU) and native_bf16.
"""
import os

import torch

from stages import build_model

FORMAT = "unclip-from-scratch/1"


class CheckpointError(ValueError):
    pass


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
    weights = state["ema"] if use_ema and state.get("ema") else state["model"]
    try:
        model = build_model(state["stage"], state["config"])
        model.load_state_dict(weights)
    except (TypeError, RuntimeError):  # a field this code lacks, or weights of another shape
        raise CheckpointError(f"the {state['stage']} checkpoint's config or weights do not fit "
                              "this code (written by another version of it?): train it "
                              "again") from None
    return model.to(device).eval()


def fingerprint(model):
    """A number that changes when any weight does: the prior and decoder record their CLIP's,
    so that sampling with a retrained CLIP is caught instead of silently producing noise."""
    return round(sum(p.detach().cpu().double().abs().sum().item() for p in model.parameters()), 4)


def load_frozen(folder, stage, device="cpu"):
    """FOLDER/STAGE.pt, frozen and in eval mode: a trained model that another stage reads."""
    path = os.path.join(folder, f"{stage}.pt")
    return restore_model(load_checkpoint(path, stage), device).requires_grad_(False)


def load_clip(folder, device="cpu", expected_fingerprint=None):
    """FOLDER/clip.pt, frozen; with an expected fingerprint, refuse another CLIP.

    model.encode_text(list_of_str) and model.encode_image(images in [-1, 1]) return unnormalised
    embeddings of size cfg.embed_dim; clip.clip_embeddings normalises them."""
    clip_model = load_frozen(folder, "clip", device)
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
