"""Sample from trained models: text to image with unCLIP, its demos, and the DDPM with guidance.

    python sample.py "a small red circle above a large blue square"        # out/samples.png
    python sample.py --prompts prompts.txt --n 4 --out samples/    # samples/0000_0.png, ...
    python sample.py --variations photo.png                        # unCLIP Fig. 3
    python sample.py --interpolate a.png b.png                     # Fig. 4
    python sample.py --text-diff "a red circle" "a blue circle" image.png     # Fig. 5
    python sample.py ddpm --class circle --guidance 3 --out circles.png

unCLIP reads what `python train.py` wrote to --models (default out/): clip.pt, prior.pt (or
ar_prior.pt with --prior ar), decoder.pt and the upsamplers present. --prior-guidance and
--decoder-guidance are classifier-free scales (0: unconditional, 1: conditional, > 1: guided).
A prompt must be 1 to 78 UTF-8 bytes (the tokenizer's context less its start and end tokens).
--out FILE.png writes a grid; --out DIR writes DIR/{prompt:04d}_{sample}.png (prompt i is line i
of --prompts, counted from 0).

For the DDPM (first argument `ddpm`): --guidance is the classifier-free scale w;
--classifier-scale multiplies a noisy classifier's gradient; --out DIR writes DIR/0000.png, ....
"""
import argparse
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

import data as datasets
from checkpoint import CheckpointError, load_checkpoint, load_unclip, pick_device, restore_model
from clip import normalise_embedding
from diffusion import classifier_guidance
from upsample import unclip_sample


def write_images(images, out, names=None):
    """A grid to FILE.png, or one PNG per image into a folder (named names[j] or 0000 ...)."""
    if out.lower().endswith(".png"):
        datasets.save_grid(images, out, scale=2)
        return out
    os.makedirs(out, exist_ok=True)
    names = names or [f"{j:04d}" for j in range(len(images))]
    for name, image in zip(names, images):
        datasets.save_grid(image[None], os.path.join(out, f"{name}.png"), nrow=1)
    return os.path.join(out, f"{names[0]}.png ...")


# ----------------------------------------------------------------------------------------------
# unCLIP: text to image, variations, interpolations, text diffs.

def check_prompts(prompts, context_length):
    """Refuse empty and over-long prompts in one line each (a byte tokenizer knows every
    character, but CLIP has only seen the shapes vocabulary)."""
    limit = context_length - 2
    for i, prompt in enumerate(prompts):
        if not prompt.strip():
            raise ValueError(f"prompt {i} is empty: write what the image should show")
        size = len(prompt.encode("utf-8", errors="replace"))
        if size > limit:
            raise ValueError(f"prompt {i} is {size} bytes; this CLIP reads at most {limit}: "
                             "shorten it")
    return prompts


def read_image(path, resolution):
    """An image file -> (1, 3, R, R) in [-1, 1], centre-cropped to a square and resized."""
    try:
        image = Image.open(path).convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"no image at {path}: check the path") from None
    except (UnidentifiedImageError, OSError):
        raise ValueError(f"{path} is not an image PIL can read (PNG, JPEG, ...)") from None
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side)).resize(
        (resolution, resolution), Image.BOX)
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 127.5 - 1


def slerp(a, b, theta):
    """Spherical interpolation between (D,) vectors a and b at fractions theta (K,) -> (K, D),
    on the sphere of their (common) norm."""
    a_unit, b_unit = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    omega = torch.acos((a_unit @ b_unit).clamp(-1 + 1e-7, 1 - 1e-7))
    theta = theta[:, None]
    unit = (torch.sin((1 - theta) * omega) * a_unit + torch.sin(theta * omega) * b_unit) \
        / torch.sin(omega)
    return unit * a.norm()


def text_diff(z_i, z_t_before, z_t_after, theta):
    """unCLIP Fig. 5: rotate an image embedding z_i (D,) towards the normalised difference of two
    captions' text embeddings, z_d = norm(z_t_after - z_t_before), by slerp at fractions theta."""
    return slerp(z_i, normalise_embedding(z_t_after - z_t_before), theta)


def decode(clip_model, decoder, upsamplers, z_i, args, same_noise=False):
    """Image embeddings (B, D) alone (no caption) -> final images, through the decoder and the
    upsamplers. With same_noise, every image starts from one x_T: only the embedding differs."""
    def noise(resolution):
        x_T = torch.randn(1 if same_noise else len(z_i), 3, resolution, resolution)
        return x_T.to(z_i.device).expand(len(z_i), -1, -1, -1)
    # No caption: zeros, the decoder's "not given", as many tokens as in training.
    tokens = torch.zeros(len(z_i), clip_model.cfg.context_length, decoder.cfg.text_width,
                         device=z_i.device)
    images = decoder.sample(z_i, tokens, args.decoder_guidance, args.steps, noise=noise(
        decoder.cfg.resolution))
    for upsampler in upsamplers:
        images = upsampler.sample(images, args.upsampler_steps,
                                  noise=noise(upsampler.cfg.resolution))
    return images


def sample_unclip(args):
    device = pick_device(args.device)
    clip_model, prior, decoder, upsamplers = load_unclip(
        args.models, device, "ar_prior" if args.prior == "ar" else "prior")
    final = upsamplers[-1].cfg.resolution if upsamplers else decoder.cfg.resolution
    torch.manual_seed(args.seed)
    if args.variations:  # Fig. 3: decode one image embedding several times
        image = read_image(args.variations, clip_model.cfg.resolution).to(device)
        z_i = normalise_embedding(clip_model.encode_image(image)).expand(args.n, -1)
        shown = F.interpolate(image, size=final, mode="bilinear", align_corners=False)
        images = torch.cat([shown, decode(clip_model, decoder, upsamplers, z_i, args)])
        return print(f"wrote {write_images(images, args.out)} (the input, then variations)")
    if args.interpolate or args.text_diff:
        if args.interpolate:  # Fig. 4: slerp between two images' embeddings
            a, b = (normalise_embedding(clip_model.encode_image(
                read_image(path, clip_model.cfg.resolution).to(device)))[0]
                for path in args.interpolate)
            z_i = slerp(a, b, torch.linspace(0, 1, args.n, device=device))
        else:  # Fig. 5: rotate the image embedding towards the normalised text difference
            before, after, path = args.text_diff
            check_prompts([before, after], clip_model.cfg.context_length)
            z_t = normalise_embedding(clip_model.encode_text([before, after]))
            z = normalise_embedding(clip_model.encode_image(
                read_image(path, clip_model.cfg.resolution).to(device)))[0]
            # theta from 0 to 0.5, the top of the paper's range for Fig. 5 (0.25 to 0.50)
            z_i = text_diff(z, z_t[0], z_t[1], torch.linspace(0, 0.5, args.n, device=device))
        images = decode(clip_model, decoder, upsamplers, z_i, args, same_noise=True)
        return print(f"wrote {write_images(images, args.out)}")
    if args.prompts:
        try:
            with open(args.prompts, encoding="utf-8") as f:
                prompts = f.read().splitlines()
        except FileNotFoundError:
            raise FileNotFoundError(f"no prompts file at {args.prompts}: one prompt per line")
    elif args.prompt:
        prompts = [args.prompt]
    else:
        raise ValueError("give a prompt, --prompts FILE, --variations, --interpolate or "
                         "--text-diff (see python sample.py --help)")
    check_prompts(prompts, clip_model.cfg.context_length)
    captions = [p for p in prompts for _ in range(args.n)]
    images = torch.cat([unclip_sample(clip_model, prior, decoder, upsamplers, captions[i:i + 64],
                                      args.prior_guidance, args.decoder_guidance, args.steps,
                                      args.upsampler_steps)[0][-1]
                        for i in range(0, len(captions), 64)])
    names = [f"{i:04d}_{j}" for i in range(len(prompts)) for j in range(args.n)]
    print(f"wrote {write_images(images, args.out, names)}")


# ----------------------------------------------------------------------------------------------
# The class-conditional DDPM, with either guidance.

def parse_class(text, num_classes, class_names):
    """A class given by name ("circle") or index ("0")."""
    if text in class_names:
        return class_names.index(text)
    if text.isdigit() and int(text) < num_classes:
        return int(text)
    names = f" ({', '.join(class_names)})" if class_names else ""
    raise ValueError(f"unknown class {text!r}: give an index below {num_classes}{names}")


def sample_ddpm(args):
    device = pick_device(args.device)
    state = load_checkpoint(args.ckpt, "ddpm")
    model = restore_model(state, device)
    names = datasets.SHAPES if state["run"]["data"].startswith("shapes") else ()
    y, cond_fn = None, None
    if args.class_ is not None:
        if not model.cfg.num_classes:
            raise ValueError(f"{args.ckpt} is unconditional: drop --class or train with labels")
        y = torch.full((args.n,), parse_class(args.class_, model.cfg.num_classes, names),
                       device=device)
    if args.classifier:
        if y is None:
            raise ValueError("--classifier needs --class: the class whose probability to raise")
        classifier = restore_model(load_checkpoint(args.classifier, "classifier"), device)
        if classifier.cfg.timesteps != model.cfg.timesteps:
            raise ValueError(f"classifier has {classifier.cfg.timesteps} timesteps, the model "
                             f"{model.cfg.timesteps}: train them with the same --timesteps=")
        cond_fn = classifier_guidance(classifier, y, args.classifier_scale)
    torch.manual_seed(args.seed)
    images = model.sample(args.n, y, args.guidance, args.sampler, args.steps, args.eta,
                          cond_fn, device)
    print(f"wrote {write_images(images, args.out)}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("prompt", nargs="?", help="what to draw; or `ddpm` for the DDPM")
    parser.add_argument("--n", type=int, help="images per prompt (unCLIP 4, DDPM 16; "
                                              "interpolation and text-diff steps 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps (the DDPM sampler "
                                                                "takes all T)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="out/samples.png")
    unclip = parser.add_argument_group("unCLIP")
    unclip.add_argument("--models", default="out", help="the folder python train.py wrote")
    unclip.add_argument("--prompts", help="a text file, one prompt per line")
    unclip.add_argument("--prior", choices=["diffusion", "ar"], default="diffusion")
    unclip.add_argument("--prior-guidance", type=float, default=1.0)
    unclip.add_argument("--decoder-guidance", type=float, default=3.0)
    unclip.add_argument("--upsampler-steps", type=int, default=10)
    unclip.add_argument("--variations", metavar="IMAGE")
    unclip.add_argument("--interpolate", nargs=2, metavar=("IMAGE_A", "IMAGE_B"))
    unclip.add_argument("--text-diff", nargs=3, metavar=("BEFORE", "AFTER", "IMAGE"))
    ddpm = parser.add_argument_group("DDPM (sample.py ddpm ...)")
    ddpm.add_argument("--ckpt", default="out/ddpm.pt")
    ddpm.add_argument("--class", dest="class_", help="class name or index")
    ddpm.add_argument("--guidance", type=float, default=1.0, help="classifier-free scale w")
    ddpm.add_argument("--classifier", help="a noisy classifier checkpoint for guidance")
    ddpm.add_argument("--classifier-scale", type=float, default=1.0)
    ddpm.add_argument("--sampler", choices=["ddpm", "ddim"], default="ddim")
    ddpm.add_argument("--eta", type=float, default=0.0, help="DDIM noise: 0 deterministic")
    args = parser.parse_args(argv)
    try:
        if args.prompt == "ddpm":
            args.n = 16 if args.n is None else args.n
        else:
            args.n = (8 if args.interpolate or args.text_diff else 4) if args.n is None else args.n
        if args.n < 1:
            raise ValueError(f"--n must be at least 1, got {args.n}")
        sample_ddpm(args) if args.prompt == "ddpm" else sample_unclip(args)
    except (ValueError, OSError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
