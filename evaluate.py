"""The Frechet distance between two sets of image features: FID, and CLIP-FID on our own CLIP.

Heusel et al. 2017 (arXiv 1706.08500) fit a Gaussian to each set's features and compare them:
    d^2 = ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2))
The published FID takes its features from an Inception-v3 network's pool layer; without those
weights (there is no download here) we use our CLIP's image embeddings, which makes the number
comparable between our own runs only: "CLIP-FID (own features; not comparable to published FID)".

Tr((S_1 S_2)^(1/2)) is computed as the sum of the square roots of the eigenvalues of
S_1^(1/2) S_2 S_1^(1/2), which has the same eigenvalues as S_1 S_2 but is symmetric positive
semi-definite, so its eigenvalues are real and non-negative (up to rounding, clamped at 0).

Defines: feature_statistics, frechet_distance, clip_features.
Run `python evaluate.py --models out` for the CLIP-FID of unCLIP's samples against held-out
shapes scenes at several decoder guidance scales.
"""
import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

import data as datasets
from checkpoint import load_unclip
from upsample import unclip_sample


def feature_statistics(features):
    """(N, D) features -> mean (D,) and covariance (D, D), in float64."""
    x = features.double()
    return x.mean(0), torch.cov(x.T)


def _sqrtm_psd(matrix):
    """The square root of a symmetric positive semi-definite matrix, by eigendecomposition."""
    values, vectors = torch.linalg.eigh(matrix)
    return vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(mu_1, sigma_1, mu_2, sigma_2):
    """The squared Frechet distance between N(mu_1, sigma_1) and N(mu_2, sigma_2): FID."""
    root_1 = _sqrtm_psd(sigma_1)
    cross = torch.linalg.eigvalsh(root_1 @ sigma_2 @ root_1).clamp(min=0).sqrt().sum()
    distance = (mu_1 - mu_2).pow(2).sum() + sigma_1.trace() + sigma_2.trace() - 2 * cross
    return distance.clamp(min=0).item()


@torch.no_grad()
def clip_features(clip_model, images, chunk=250):
    """(N, 3, R, R) images in [-1, 1] -> (N, D) unit-length CLIP image embeddings (box-resized to
    CLIP's resolution)."""
    device = clip_model.logit_scale.device
    features = []
    for x in images.split(chunk):
        x = x.to(device).float()
        if x.shape[-1] != clip_model.cfg.resolution:
            x = F.interpolate(x, size=clip_model.cfg.resolution, mode="area")
        features.append(F.normalize(clip_model.encode_image(x), dim=-1).cpu())
    return torch.cat(features)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="out")
    parser.add_argument("--n", type=int, default=300, help="generated and real images")
    parser.add_argument("--guidance", default="1,2,3,5", help="decoder guidance scales")
    parser.add_argument("--out", default="docs")
    args = parser.parse_args(argv)
    clip_model, prior, decoder, _ = load_unclip(args.models)
    real = datasets.shapes_data(args.n, decoder.cfg.resolution, seed=1, prefixes=False)
    prompts = [c[0] for c in datasets.shapes_data(args.n, 32, seed=2, prefixes=False).captions]
    real_stats = feature_statistics(clip_features(clip_model, real.images.float() / 127.5 - 1))
    results = {}
    for w in [float(s) for s in args.guidance.split(",")]:
        torch.manual_seed(0)
        images = torch.cat([unclip_sample(clip_model, prior, decoder, [], prompts[i:i + 100],
                                          decoder_guidance=w)[0][-1]
                            for i in range(0, len(prompts), 100)])
        fid = frechet_distance(*real_stats, *feature_statistics(clip_features(clip_model, images)))
        results[w] = {"clip_fid": fid, "exact": datasets.check_images(images, prompts)["exact"]}
        print(f"decoder guidance {w}: CLIP-FID {fid:.4f}, exact match {results[w]['exact']:.3f}",
              flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "clip_fid.json"), "w") as f:
        json.dump({"command": "python evaluate.py " + " ".join(sys.argv[1:]), "n": args.n,
                   "label": "CLIP-FID (own features; not comparable to published FID)",
                   "decoder_guidance": results}, f, indent=1)


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}")
