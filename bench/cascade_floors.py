"""Floors and ceilings beside the main job's figures on captioned photos (Flickr8k, COCO).

The main job's final evaluation (evaluate.evaluate_unclip) draws the first caption of 200
held-out images through the cascade and reports CLIP-FID against those images and the CLIP
score, with the real images' and shuffled pairs' CLIP scores beside it. This adds what a
distance needs to be read:

- CLIP-FID of 200 other real photos (the training split) against the same 200: the floor, what
  a perfect generator would score with 200 samples;
- CLIP-FID of the held-out photos themselves, box-downsampled to the decoder's resolution and
  enlarged bilinearly: what is lost to resolution alone;
- the decoder given each held-out photo's own image embedding and caption (a perfect prior),
  through the upsamplers: its CLIP-FID and CLIP score, the cascade's ceiling.

    python bench/cascade_floors.py --models OUT    # the folder `python train.py --data ...` wrote

prints the figures and writes OUT/cascade_floors.json and OUT/own_embedding.png (held-out photos
above, decoded from their own embeddings below).
"""
import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import data as datasets  # noqa: E402
from checkpoint import load_checkpoint, load_unclip  # noqa: E402
from clip import clip_embeddings, image_embeddings  # noqa: E402
from evaluate import clip_score, feature_statistics, frechet_distance  # noqa: E402


@torch.no_grad()
def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="out")
    parser.add_argument("--n", type=int, default=200, help="held-out images (the main job's 200)")
    args = parser.parse_args()
    clip_model, _, decoder, upsamplers = load_unclip(args.models)
    state = load_checkpoint(os.path.join(args.models, "decoder.pt"), "decoder")
    spec, seed = state["run"]["data"], state["seed"]
    final = upsamplers[-1].cfg.resolution if upsamplers else decoder.cfg.resolution
    test = datasets.load_data(spec, final, args.n, seed, "test")  # evaluate_unclip's images
    real, captions = test.batch(torch.arange(args.n))[0], [c[0] for c in test.captions[:args.n]]
    other = datasets.load_data(spec, final, args.n, seed, "train").images[:args.n]
    real_statistics = feature_statistics(image_embeddings(clip_model, real).cpu())

    def clip_fid(images):
        return frechet_distance(*real_statistics,
                                *feature_statistics(image_embeddings(clip_model, images).cpu()))

    low = F.interpolate(real, size=decoder.cfg.resolution, mode="area")
    z_i, _, tokens = clip_embeddings(clip_model, low, captions)
    torch.manual_seed(0)
    decoded = decoder.sample(z_i, tokens)                   # each model's own sampling settings
    for upsampler in upsamplers:
        decoded = upsampler.sample(decoded)
    figures = dict(
        clip_fid_other_real_images=clip_fid(other),
        clip_fid_real_through_decoder_resolution=clip_fid(
            F.interpolate(low, size=final, mode="bilinear", align_corners=False)),
        clip_fid_own_embedding=clip_fid(decoded),
        clip_score_own_embedding=clip_score(clip_model, decoded, captions))
    figures = {k: round(v, 4) for k, v in figures.items()}
    print(json.dumps(figures, indent=1))
    with open(os.path.join(args.models, "cascade_floors.json"), "w") as f:
        json.dump(dict(figures, n=args.n, command="python " + " ".join(sys.argv)), f, indent=1)
    datasets.save_grid(torch.cat([real[:8], decoded[:8]]),
                       os.path.join(args.models, "own_embedding.png"), nrow=8, scale=2)
    print(f"wrote {args.models}/cascade_floors.json and own_embedding.png")


if __name__ == "__main__":
    main()
