"""unCLIP's conditioning ablation (the paper's Fig. 8) and its PCA reconstructions (Fig. 7).

(In the paper, arXiv 2204.06125, Fig. 8 is the ablation and Fig. 7 decodes PCA reconstructions
of the image embedding.)

    python bench/ablation.py --models out --out docs

Fig. 8: one decoder, several ways to condition it on test prompts, all scored by shapes.py's
checker at the decoder's resolution (exact match on one- and two-object prompts apart):
  - caption only, the image embedding zeroed (a GLIDE-like model; the decoder saw this case in
    5% of its training steps: embedding dropped 10% times caption kept 50%);
  - caption and the CLIP text embedding passed as if it were an image embedding (no prior);
  - caption and an image embedding from the diffusion prior (full unCLIP);
  - caption and an image embedding from the autoregressive prior (needs OUT/ar_prior.pt);
  - caption and the image embedding of the very scene the prompt was written for: what a
    perfect prior would give, so the decoder's own ceiling.
Every condition starts from the same decoder noise.

Fig. 7: decode image embeddings rebuilt from their first k principal components (PCA of the
training images' embeddings), k = 1, 2, 4, ... D, with the decoder's noise fixed: which
attributes the leading dimensions carry. Scored by exact match too.

Writes OUT/ablation.json, OUT/ablation.md, OUT/ablation.png and OUT/pca_reconstructions.png.
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data as datasets  # noqa: E402
import shapes  # noqa: E402
from checkpoint import load_unclip  # noqa: E402
from clip import clip_embeddings, normalise_embedding  # noqa: E402


def score(images, captions):
    """Exact match on one- and two-object prompts, and every attribute's rate on the latter
    (which part of a two-object prompt fails)."""
    summary = shapes.check_images(images.cpu(), captions)
    return {"exact_one": summary["one"]["exact"], "exact_two": summary["two"]["exact"],
            "exact": summary["exact"],
            "two_object_attributes": {k: round(v, 3) for k, v in summary["two"].items()
                                      if k not in ("exact", "n")}}


def decode(decoder, z_i, tokens, args, seed=0):
    torch.manual_seed(seed)
    return torch.cat([decoder.sample(z_i[i:i + 100], tokens[i:i + 100], args.guidance,
                                     args.steps) for i in range(0, len(z_i), 100)])


def conditioning_ablation(args, clip_model, prior, decoder, ar_prior):
    scenes = [datasets.shapes_data(args.n, clip_model.cfg.resolution, seed=0, split="train",
                                   prefixes=False, objects=objects, stream="test")
              for objects in (1, 2)]
    prompts = [c[0] for s in scenes for c in s.captions]
    images = torch.cat([s.batch(torch.arange(args.n))[0] for s in scenes])
    with torch.no_grad():
        z_image, z_t, tokens = clip_embeddings(clip_model, images, prompts)
    torch.manual_seed(0)
    conditions = {"caption only (GLIDE-like)": torch.zeros_like(z_t),
                  "caption + text embedding (no prior)": z_t,
                  "caption + diffusion prior (unCLIP)": prior.sample(z_t, tokens)}
    if ar_prior is not None:
        conditions["caption + AR prior (unCLIP)"] = ar_prior.sample(z_t, tokens)
    # A perfect prior: the embedding of the very scene the prompt describes.
    conditions["caption + the scene's own image embedding (ceiling)"] = z_image
    results, rows = {}, []
    for name, z_i in conditions.items():
        tic = time.time()
        decoded = decode(decoder, z_i, tokens, args)
        results[name] = dict(score(decoded, prompts), seconds=round(time.time() - tic, 1))
        print(name, results[name])
        rows.append(torch.cat([decoded[:6], decoded[args.n:args.n + 6]]))
    datasets.save_grid(torch.cat(rows).cpu(), os.path.join(args.out, "ablation.png"), nrow=12,
                       scale=3)
    return results, prompts[:6] + prompts[args.n:args.n + 6]


def pca_reconstructions(args, clip_model, decoder, ks=(1, 2, 4, 8, 16, 32, 64), n=64):
    train = datasets.shapes_data(5000, clip_model.cfg.resolution, seed=0, split="train")
    test = datasets.shapes_data(n, clip_model.cfg.resolution, seed=0, split="train",
                                prefixes=False, stream="test")
    z_train = clip_embeddings(clip_model, *train.batch(torch.arange(5000))[:2])[0]
    z = clip_embeddings(clip_model, *test.batch(torch.arange(n))[:2])[0]
    mean = z_train.mean(0)
    components = torch.linalg.svd(z_train - mean, full_matrices=False)[2]    # (D, D), rows
    captions = [c[0] for c in test.captions]
    # the image embedding alone: the caption's tokens zeroed, as in training
    tokens = torch.zeros(n, clip_model.cfg.context_length, decoder.cfg.text_width)
    results, rows = {}, []
    noise = torch.randn(1, 3, decoder.cfg.resolution, decoder.cfg.resolution).expand(n, -1, -1,
                                                                                    -1)
    for k in [k for k in ks if k <= len(components)]:
        basis = components[:k]
        z_k = normalise_embedding((z - mean) @ basis.T @ basis + mean)
        images = decoder.sample(z_k, tokens, args.guidance, args.steps, noise=noise)
        results[k] = score(images, captions)
        print(f"PCA {k} dims: {results[k]}")
        rows.append(images[:8])
    x = test.batch(torch.arange(8))[0]
    datasets.save_grid(torch.stack(rows + [x], 1).flatten(0, 1),
                       os.path.join(args.out, "pca_reconstructions.png"), nrow=len(rows) + 1,
                       scale=3)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="out")
    parser.add_argument("--out", default="docs")
    parser.add_argument("--n", type=int, default=100, help="prompts of each kind (one, two)")
    parser.add_argument("--guidance", type=float, help="the decoder's scale (default: its own)")
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    clip_model, prior, decoder, _ = load_unclip(args.models)
    ar_prior = (load_unclip(args.models, prior_stage="ar_prior")[1]
                if os.path.exists(os.path.join(args.models, "ar_prior.pt")) else None)
    ablation, shown = conditioning_ablation(args, clip_model, prior, decoder, ar_prior)
    pca = pca_reconstructions(args, clip_model, decoder)
    with open(os.path.join(args.out, "ablation.json"), "w") as f:
        json.dump({"command": "python bench/ablation.py " + " ".join(sys.argv[1:]),
                   "prompts_per_kind": args.n, "conditioning": ablation, "pca": pca,
                   "grid_columns": shown}, f, indent=1)
    lines = ["| decoder conditioned on | exact, one object | exact, two objects |",
             "| --- | --- | --- |"]
    lines += [f"| {name} | {r['exact_one']:.2f} | {r['exact_two']:.2f} |"
              for name, r in ablation.items()]
    attributes = list(next(iter(ablation.values()))["two_object_attributes"])
    lines += ["", "Two-object prompts, share right per attribute:", "",
              "| decoder conditioned on | " + " | ".join(attributes) + " |",
              "| --- |" + " --- |" * len(attributes)]
    lines += [f"| {name} | " + " | ".join(f"{r['two_object_attributes'][a]:.2f}"
                                          for a in attributes) + " |"
              for name, r in ablation.items()]
    lines += ["", "| PCA dimensions kept | exact, one object | exact, two objects |",
              "| --- | --- | --- |"]
    lines += [f"| {k} | {r['exact_one']:.2f} | {r['exact_two']:.2f} |" for k, r in pca.items()]
    with open(os.path.join(args.out, "ablation.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError) as e:  # a missing or wrong checkpoint: one line
        sys.exit(f"error: {e}")
