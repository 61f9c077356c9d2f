"""Draw from trained models: one subcommand per job, as train.py has one per stage.

    python sample.py unclip "a small red circle above a large blue square"   # out/samples.png
    python sample.py unclip --prompts prompts.txt --n 4 --out samples/  # samples/0000_0.png ...
    python sample.py variations photo.png                                   # unCLIP Fig. 3
    python sample.py interpolate a.png b.png                                # Fig. 4
    python sample.py text-diff "a red circle" "a blue circle" image.png     # Fig. 5
    python sample.py ddpm --class circle --guidance 3 --out circles.png
    python sample.py codes --ckpt runs/vq/code_prior.pt --n 64   # VQ-VAE codes, then decoded

The unCLIP jobs read what `python train.py` wrote to --models (default out/): clip.pt, prior.pt
(or ar_prior.pt with --prior ar), decoder.pt and the upsamplers present. Guidance scales are
classifier-free (0: unconditional, 1: conditional, > 1: guided); --classifier-scale multiplies a
noisy classifier's gradient. --out FILE.png writes a grid, --out DIR one PNG per image (unclip:
DIR/{prompt:04d}_{sample}.png, prompt i being line i of --prompts, from 0).
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F
from PIL import Image

import data as datasets
from shapes import SHAPES
from checkpoint import CheckpointError, load_checkpoint, load_unclip, pick_device, restore_model
from clip import normalise_embedding
from diffusion import classifier_guidance
from unclip import decode, slerp, text_diff, unclip_sample

JOBS = ("unclip", "variations", "interpolate", "text-diff", "ddpm", "codes")
OLD_SPELLINGS = {"--variations": "variations", "--interpolate": "interpolate",
                 "--text-diff": "text-diff", "--prompts": "unclip --prompts"}


def write_images(images, out, names=None):
    """A grid to FILE.png, or one PNG per image into a folder (named names[j] or 0000 ...)."""
    if out.lower().endswith(".png"):
        datasets.save_grid(images, out, scale=2)
        return out
    names = names or [f"{j:04d}" for j in range(len(images))]
    for name, image in zip(names, images):
        datasets.save_grid(image[None], f"{out}/{name}.png", nrow=1)
    return f"{out}/{names[0]}.png ..."


def check_prompts(prompts, tokenizer):
    """Refuse empty prompts, over-long ones and (word tokenizers) unknown words, in one line."""
    for i, prompt in enumerate(prompts):
        if not prompt.strip():
            raise ValueError(f"prompt {i} is empty: write what the image should show")
        size = len(tokenizer.split(prompt))
        if size > tokenizer.context_length - 2:
            raise ValueError(f"prompt {i} is {size} {tokenizer.unit}; this CLIP reads at most "
                             f"{tokenizer.context_length - 2}: shorten it")
    return prompts


def image_embedding(clip_model, path):
    """An image file -> its normalised CLIP image embedding (D,), and the image (1, 3, R, R)."""
    # a box filter, as shapes.py renders small images from large ones
    x = datasets.read_image(path, clip_model.cfg.resolution, Image.BOX)[None]
    return normalise_embedding(clip_model.encode_image(x.to(clip_model.logit_scale.device)))[0], x


@torch.no_grad()
def sample_unclip(args):
    device = pick_device(args.device)
    clip_model, prior, decoder, upsamplers = load_unclip(
        args.models, device, "ar_prior" if args.prior == "ar" else "prior")
    torch.manual_seed(args.seed)
    draw = dict(decoder_guidance=args.decoder_guidance, steps=args.steps,
                upsampler_steps=args.upsampler_steps)
    if args.job == "variations":  # Fig. 3: decode one image embedding several times
        z_i, image = image_embedding(clip_model, args.image)
        final = upsamplers[-1].cfg.resolution if upsamplers else decoder.cfg.resolution
        shown = F.interpolate(image.to(device), size=final, mode="bilinear", align_corners=False)
        images = decode(clip_model, decoder, upsamplers, z_i.expand(args.n, -1), **draw)
        return f"{write_images(torch.cat([shown, images]), args.out)} (the input, then variations)"
    if args.job == "interpolate":  # Fig. 4: slerp between two images' embeddings
        a, b = (image_embedding(clip_model, path)[0] for path in args.images)
        z_i = slerp(a, b, torch.linspace(0, 1, args.n, device=device))
        return write_images(decode(clip_model, decoder, upsamplers, z_i, same_noise=True, **draw),
                            args.out)
    if args.job == "text-diff":  # Fig. 5: rotate the embedding towards the text difference
        check_prompts([args.before, args.after], clip_model.text.tokenizer)
        z_t = normalise_embedding(clip_model.encode_text([args.before, args.after]))
        # theta from 0 to 0.5, the top of the paper's range for Fig. 5 (0.25 to 0.50)
        z_i = text_diff(image_embedding(clip_model, args.image)[0], z_t[0], z_t[1],
                        torch.linspace(0, 0.5, args.n, device=device))
        return write_images(decode(clip_model, decoder, upsamplers, z_i, same_noise=True, **draw),
                            args.out)
    if not (args.prompt or args.prompts):
        raise ValueError('give a prompt or --prompts FILE: python sample.py unclip "a red circle"')
    if args.prompts and not os.path.isfile(args.prompts):
        raise FileNotFoundError(f"no prompts file at {args.prompts}: one prompt per line")
    prompts = [args.prompt]
    if args.prompts:
        with open(args.prompts, encoding="utf-8") as f:
            prompts = f.read().splitlines()
    check_prompts(prompts, clip_model.text.tokenizer)
    captions = [p for p in prompts for _ in range(args.n)]
    images = torch.cat([unclip_sample(clip_model, prior, decoder, upsamplers, captions[i:i + 64],
                                      args.prior_guidance, **draw)[0][-1]
                        for i in range(0, len(captions), 64)])
    return write_images(images, args.out, [f"{i:04d}_{j}" for i in range(len(prompts))
                                           for j in range(args.n)])


def sample_ddpm(args):
    device = pick_device(args.device)
    state = load_checkpoint(args.ckpt, "ddpm")
    model = restore_model(state, device)
    names = SHAPES if state["run"]["data"].startswith("shapes") else ()
    y, cond_fn = None, None
    if args.class_ is not None:
        if not model.cfg.num_classes:
            raise ValueError(f"{args.ckpt} is unconditional: drop --class or train with labels")
        labels = {name: i for i, name in enumerate(names)}
        labels.update({str(i): i for i in range(model.cfg.num_classes)})
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
    if not args.temperature > 0:
        raise ValueError(f"--temperature must be above 0 (1: as trained), got {args.temperature}")
    model = restore_model(load_checkpoint(args.ckpt, "code_prior"), pick_device(args.device))
    torch.manual_seed(args.seed)
    return write_images(model.sample(args.n, args.temperature), args.out)


def parser_for_jobs():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    jobs = parser.add_subparsers(dest="job", metavar="JOB", help=", ".join(JOBS))
    for job in JOBS:
        p = jobs.add_parser(job)
        p.add_argument("--n", type=int, default={"ddpm": 16, "unclip": 4, "variations": 4}.get(
            job, 8), help="images (per prompt), or interpolation steps")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--steps", type=int, default=50 if job == "ddpm" else None,
                       help="DDIM steps" if job == "ddpm" else
                       "the decoder's DDIM steps (default: its own, DecoderConfig.sample_steps)")
        p.add_argument("--device", default="auto")
        p.add_argument("--out", default="out/samples.png")
        if job == "ddpm":
            p.add_argument("--ckpt", default="out/ddpm.pt")
            p.add_argument("--class", dest="class_", help="class name or index")
            p.add_argument("--guidance", type=float, default=1.0, help="classifier-free scale")
            p.add_argument("--classifier", help="a noisy classifier checkpoint for guidance")
            p.add_argument("--classifier-scale", type=float, default=1.0)
            p.add_argument("--sampler", choices=["ddpm", "ddim"], default="ddim")
            p.add_argument("--eta", type=float, default=0.0, help="DDIM noise: 0 deterministic")
            continue
        if job == "codes":
            p.add_argument("--ckpt", default="out/code_prior.pt")
            p.add_argument("--temperature", type=float, default=1.0,
                           help="of each code's softmax: below 1 safer, above 1 wilder")
            continue
        p.add_argument("--models", default="out", help="the folder python train.py wrote")
        p.add_argument("--prior", choices=["diffusion", "ar"], default="diffusion")
        p.add_argument("--prior-guidance", type=float, default=1.0)
        p.add_argument("--decoder-guidance", type=float,
                       help="default: the decoder's own (DecoderConfig.guidance_scale)")
        p.add_argument("--upsampler-steps", type=int,
                       help="default: each upsampler's own (UpsamplerConfig.sample_steps)")
        if job == "unclip":
            p.add_argument("prompt", nargs="?", help="what to draw")
            p.add_argument("--prompts", help="a text file, one prompt per line")
        elif job == "variations":
            p.add_argument("image")
        elif job == "interpolate":
            p.add_argument("images", nargs=2, metavar="IMAGE")
        else:
            for name in ("before", "after", "image"):
                p.add_argument(name)
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    old = next((OLD_SPELLINGS[a] for a in argv if a in OLD_SPELLINGS), None)
    if argv and argv[0] not in JOBS and argv[0] not in ("-h", "--help"):
        job = old or f'unclip "{argv[0]}"'
        print(f"error: name the job first, e.g. python sample.py {job} ... (jobs: "
              f"{', '.join(JOBS)})", file=sys.stderr)
        sys.exit(2)
    args = parser_for_jobs().parse_args(argv)
    try:
        if args.job is None:
            raise ValueError(f"name a job: {', '.join(JOBS)} (python sample.py --help)")
        if args.n < 1:
            raise ValueError(f"--n must be at least 1, got {args.n}")
        written = {"ddpm": sample_ddpm, "codes": sample_codes}.get(args.job, sample_unclip)(args)
        print(f"wrote {written}")
    except (ValueError, OSError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
