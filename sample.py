"""Sample from trained models: images from a DDPM, with either guidance.

    python sample.py ddpm --ckpt out/ddpm.pt --class circle --guidance 3 --out circles.png
    python sample.py ddpm --ckpt out/ddpm.pt --class 2 --classifier out/classifier.pt \\
        --classifier-scale 2 --sampler ddpm --n 16 --out samples/      # one PNG per image

--guidance is the classifier-free scale w (0: unconditional, 1: conditional, > 1: guided);
--classifier-scale multiplies the noisy classifier's gradient. --out FILE.png writes a grid,
--out DIR writes DIR/0000.png, DIR/0001.png, ...
"""
import argparse
import os
import sys

import torch

import data as datasets
from diffusion import classifier_guidance
from checkpoint import CheckpointError, load_checkpoint, pick_device, restore_model


def parse_class(text, num_classes, class_names):
    """A class given by name ("circle") or index ("0")."""
    if text in class_names:
        return class_names.index(text)
    if text.isdigit() and int(text) < num_classes:
        return int(text)
    names = f" ({', '.join(class_names)})" if class_names else ""
    raise ValueError(f"unknown class {text!r}: give an index below {num_classes}{names}")


def write_images(images, out):
    """A grid to FILE.png, or one PNG per image into a folder."""
    if out.lower().endswith(".png"):
        datasets.save_grid(images, out, scale=2)
        return out
    os.makedirs(out, exist_ok=True)
    for j, image in enumerate(images):
        datasets.save_grid(image[None], os.path.join(out, f"{j:04d}.png"), nrow=1)
    return os.path.join(out, "0000.png ...")


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
    parser.add_argument("model", choices=["ddpm"])
    parser.add_argument("--ckpt", default="out/ddpm.pt")
    parser.add_argument("--class", dest="class_", help="class name or index")
    parser.add_argument("--guidance", type=float, default=1.0, help="classifier-free scale w")
    parser.add_argument("--classifier", help="a noisy classifier checkpoint for guidance")
    parser.add_argument("--classifier-scale", type=float, default=1.0)
    parser.add_argument("--sampler", choices=["ddpm", "ddim"], default="ddim")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps (DDPM takes all T)")
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM noise: 0 deterministic")
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="out/samples.png")
    args = parser.parse_args(argv)
    try:
        if args.n < 1:
            raise ValueError(f"--n must be at least 1, got {args.n}")
        sample_ddpm(args)
    except (ValueError, OSError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
