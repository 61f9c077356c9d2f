"""The development set: where every sampling default of the cascade is chosen.

    python bench/dev_eval.py --models out                          # the models' own defaults
    python bench/dev_eval.py --models out --decoder-guidance 3 --decoder-steps 25
    python bench/dev_eval.py --models out --ceiling                # the decoder from true z_i

Draws n one-object and n two-object scenes from the "dev" stream of the seed the models were
trained with (shapes.STREAMS: never a training scene, never a test scene), and prints the
checker's exact-match rates with their standard errors, sqrt(p (1 - p) / n): through the whole
cascade at every resolution, or with --ceiling, the decoder's images decoded from each scene's
own CLIP image embedding (the cascade's ceiling with a perfect prior). The same noise for every
setting (torch seed 0), so two settings differ by what they change. docs/decisions.md lists the
settings chosen this way, each with its command; the test figures (docs/results.md) come from
`python train.py`, on the "test" stream, once the settings are fixed.
"""
import argparse
import math
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from checkpoint import load_checkpoint, load_unclip, native_bf16, pick_device  # noqa: E402
from clip import clip_embeddings  # noqa: E402
from evaluate import exact_match, evaluation_scenes  # noqa: E402
from unclip import unclip_sample  # noqa: E402


def with_error(rate, n):
    return f"{rate:.3f} +- {math.sqrt(rate * (1 - rate) / n):.3f}"


@torch.no_grad()
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="out")
    parser.add_argument("--n", type=int, default=100, help="one-object and two-object scenes each")
    parser.add_argument("--decoder-guidance", type=float, help="default: the decoder's own")
    parser.add_argument("--decoder-steps", type=int, help="default: the decoder's own")
    parser.add_argument("--upsampler-steps", type=int, help="default: each upsampler's own")
    parser.add_argument("--ceiling", action="store_true", help="decode the scenes' own z_i")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    seed = load_checkpoint(os.path.join(args.models, "decoder.pt"), "decoder")["seed"]
    clip_model, prior, decoder, upsamplers = load_unclip(args.models, device)
    bf16 = native_bf16(device)
    torch.manual_seed(0)
    if args.ceiling:
        resolution = decoder.cfg.resolution
        images, prompts = evaluation_scenes(args.n, resolution, seed, stream="dev")
        z_i, _, tokens = clip_embeddings(clip_model, images, prompts)
        with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            stages = [decoder.sample(z_i, tokens, args.decoder_guidance, args.decoder_steps)]
    else:
        prompts = evaluation_scenes(args.n, 8, seed, stream="dev")[1]
        stages, _ = unclip_sample(clip_model, prior, decoder, upsamplers, prompts,
                                  decoder_guidance=args.decoder_guidance,
                                  steps=args.decoder_steps, upsampler_steps=args.upsampler_steps,
                                  bf16=bf16)
    print(f"development set: seed {seed}'s dev stream, n = {args.n} + {args.n}; "
          + ("decoder from the scenes' own z_i" if args.ceiling else "the cascade"))
    for images in stages:
        figures = exact_match(images.float(), prompts)
        print(f"{images.shape[-1]} px: one-object {with_error(figures['exact_one'], args.n)}, "
              f"two-object {with_error(figures['exact_two'], args.n)}")


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}")
