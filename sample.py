"""Draw from trained models: one subcommand per job, as train.py has one per stage.

    python sample.py unclip "a small red circle above a large blue square"   # out/samples.png
    python sample.py variations photo.png                                   # unCLIP Fig. 3
    python sample.py interpolate a.png b.png                                # Fig. 4
    python sample.py text-diff "a red circle" "a blue circle" image.png     # Fig. 5
    python sample.py ddpm --class circle --guidance 3 --out circles.png
    python sample.py codes --ckpt runs/vq/code_prior.pt --n 64   # VQ-VAE codes, then decoded

The unCLIP jobs call unclip.py on the models `python train.py` wrote to --models (`--prompts FILE`:
a prompt a line). Guidance scales are classifier-free (0: unconditional, 1: conditional, > 1:
guided). --out FILE.png writes a grid, --out DIR a PNG an image (DIR/{prompt:04d}_{sample}.png).
"""
import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

import data as datasets
import unclip
from checkpoint import CheckpointError, load_checkpoint, load_unclip, pick_device, restore_model
from data import write_images
from diffusion import classifier_guidance
from shapes import SHAPES


def load_cascade(args, *image_files):
    """(clip, prior, decoder, upsamplers) from --models, then the seed (every draw comes after),
    then each image file as (3, R, R) at CLIP's resolution, box-filtered as shapes.py renders."""
    models = load_unclip(args.models, pick_device(args.device),
                         "ar_prior" if args.prior == "ar" else "prior")
    torch.manual_seed(args.seed)
    return (*models, *(datasets.read_image(path, models[0].cfg.resolution, Image.BOX)
                       for path in image_files))


def draw(args):  # the decoder's and upsamplers' settings (None: each model's own)
    return dict(decoder_guidance=args.decoder_guidance, steps=args.steps,
                upsampler_steps=args.upsampler_steps)


def sample_unclip(args):
    """Text to image (unCLIP Fig. 2): n images of each prompt."""
    if not (args.prompt or args.prompts):
        raise ValueError('give a prompt or --prompts FILE: python sample.py unclip "a red circle"')
    if args.prompts and not Path(args.prompts).is_file():
        raise FileNotFoundError(f"no prompts file at {args.prompts}: one prompt per line")
    prompts = Path(args.prompts).read_text("utf-8").splitlines() if args.prompts else [args.prompt]
    clip_model, prior, decoder, upsamplers = load_cascade(args)
    clip_model.text.tokenizer.check(prompts)
    captions = [p for p in prompts for _ in range(args.n)]
    images = [unclip.unclip_sample(clip_model, prior, decoder, upsamplers, captions[i:i + 64],
                                   args.prior_guidance, **draw(args))[0][-1]
              for i in range(0, len(captions), 64)]  # 64 at a time: memory stays bounded
    return write_images(torch.cat(images), args.out, [f"{i:04d}_{j}" for i in range(len(prompts))
                                                      for j in range(args.n)])


def sample_variations(args):
    """Fig. 3: the input image (resized to the output's size), then its n variations."""
    clip_model, _, decoder, upsamplers, image = load_cascade(args, args.image)
    images = unclip.variations(clip_model, decoder, upsamplers, image, args.n, **draw(args))
    shown = F.interpolate(image[None].to(images.device), size=images.shape[-1], mode="bilinear")
    return f"{write_images(torch.cat([shown, images]), args.out)} (the input, then variations)"


def sample_interpolate(args):
    """Fig. 4: n images from the first image's embedding to the second's."""
    clip_model, _, decoder, upsamplers, a, b = load_cascade(args, args.image_a, args.image_b)
    return write_images(unclip.interpolate(clip_model, decoder, upsamplers, a, b, args.n,
                                           **draw(args)), args.out)


def sample_text_diff(args):
    """Fig. 5: n images turning the image's embedding from caption `before` towards `after`."""
    clip_model, _, decoder, upsamplers, image = load_cascade(args, args.image)
    clip_model.text.tokenizer.check([args.before, args.after])
    return write_images(unclip.text_diff_images(clip_model, decoder, upsamplers, image, args.before,
                                                args.after, args.n, **draw(args)), args.out)


def sample_ddpm(args):
    device, state = pick_device(args.device), load_checkpoint(args.ckpt, "ddpm")
    model = restore_model(state, device)
    y, cond_fn = None, None
    if args.class_ is not None:
        if not model.cfg.num_classes:
            raise ValueError(f"{args.ckpt} is unconditional: drop --class or train with labels")
        labels = {str(i): i for i in range(model.cfg.num_classes)}
        if state["run"]["data"].startswith("shapes"):
            labels.update({name: i for i, name in enumerate(SHAPES)})
        if args.class_ not in labels:
            raise ValueError(f"unknown class {args.class_!r}: give one of {', '.join(labels)}")
        y = torch.full((args.n,), labels[args.class_], device=device)
    if args.classifier:
        if y is None:
            raise ValueError("--classifier needs --class: the class whose probability to raise")
        classifier = restore_model(load_checkpoint(args.classifier, "classifier"), device)
        if classifier.cfg.timesteps != model.cfg.timesteps:
            raise ValueError(f"classifier has {classifier.cfg.timesteps} timesteps, the model "
                             f"{model.cfg.timesteps}: train them with the same --timesteps=")
        cond_fn = classifier_guidance(classifier, y, args.classifier_scale)
    torch.manual_seed(args.seed)
    return write_images(model.sample(args.n, y, args.guidance, args.sampler, args.steps,
                                     args.eta, cond_fn, device), args.out)


@torch.no_grad()
def sample_codes(args):
    model = restore_model(load_checkpoint(args.ckpt, "code_prior"), pick_device(args.device))
    torch.manual_seed(args.seed)
    return write_images(model.sample(args.n, args.temperature), args.out)


JOBS = {"unclip": sample_unclip, "variations": sample_variations, "interpolate": sample_interpolate,
        "text-diff": sample_text_diff, "ddpm": sample_ddpm, "codes": sample_codes}


class OneLineErrors(argparse.ArgumentParser):
    def error(self, message):  # argparse's own error prints the usage too, over several lines
        print(f"error: {message} ({self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def parser_for_jobs():
    parser = OneLineErrors(prog="python sample.py", description=__doc__.split("\n")[0])
    jobs = parser.add_subparsers(dest="job", metavar="JOB", help=", ".join(JOBS), required=True)
    for job in JOBS:
        p = jobs.add_parser(job)
        p.add_argument("--n", type=int, default={"ddpm": 16, "unclip": 4, "variations": 4}.get(
            job, 8), help="images (per prompt), or interpolation steps")
        p.add_argument("--seed", type=int, default=0)
        if job != "codes":
            own = "DDPMConfig" if job == "ddpm" else "DecoderConfig"
            p.add_argument("--steps", type=int, help=f"DDIM steps (default: {own}.sample_steps)")
        p.add_argument("--device", default="auto")
        p.add_argument("--out", default="out/samples.png")
        if job == "ddpm":
            p.add_argument("--ckpt", default="out/ddpm.pt")
            p.add_argument("--class", dest="class_", help="class name or index")
            p.add_argument("--guidance", type=float, default=1.0, help="classifier-free scale")
            p.add_argument("--classifier", help="a noisy classifier checkpoint for guidance")
            p.add_argument("--classifier-scale", type=float, default=1.0, help="its gradient's")
            p.add_argument("--sampler", choices=["ddpm", "ddim"], default="ddim")
            p.add_argument("--eta", type=float, default=0.0, help="DDIM noise: 0 deterministic")
            continue
        if job == "codes":
            p.add_argument("--ckpt", default="out/code_prior.pt")
            p.add_argument("--temperature", type=float, default=1.0, help="< 1 safer, > 1 wilder")
            continue
        p.add_argument("--models", default="out", help="the folder python train.py wrote")
        p.add_argument("--prior", choices=["diffusion", "ar"], default="diffusion")
        p.add_argument("--prior-guidance", type=float, default=1.0)
        p.add_argument("--decoder-guidance", type=float, help="default: DecoderConfig's")
        p.add_argument("--upsampler-steps", type=int, help="default: UpsamplerConfig's")
        if job == "unclip":
            p.add_argument("prompt", nargs="?", help="what to draw")
            p.add_argument("--prompts", help="a text file, one prompt per line")
        for name in {"variations": ["image"], "interpolate": ["image_a", "image_b"],
                     "text-diff": ["before", "after", "image"]}.get(job, []):
            p.add_argument(name)
    return parser


def main(argv=None):
    args = parser_for_jobs().parse_args(argv)
    try:
        if args.n < 1:
            raise ValueError(f"--n must be at least 1, got {args.n}")
        print(f"wrote {JOBS[args.job](args)}")
    except (ValueError, OSError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
