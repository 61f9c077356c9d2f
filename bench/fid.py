"""FID: the Frechet distance in the features of FID's Inception-v3, beside our CLIP-FID.

Published FID (Heusel et al. 2017, arXiv 1706.08500) takes its features from the 2,048-d pool
layer of Inception-v3 (Szegedy et al. 2015, arXiv 1512.00567) in the TensorFlow port FID was
defined with. `InceptionV3` below is that network, laid out so that the standard FID weights file
(pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`) loads into it strictly. Nothing is
downloaded: pass the file you have.

    python bench/fid.py --inception pt_inception-2015-12-05-6726825d.pth --models out

prints, per decoder guidance scale, FID and CLIP-FID of unCLIP's samples against shapes scenes of
the test stream (guidance_sweep) and writes docs/clip_fid.json; without --inception, CLIP-FID
alone.
"""
import argparse
import json
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import checkpoint  # noqa: E402
import data  # noqa: E402
import evaluate  # noqa: E402
import shapes  # noqa: E402
from clip import image_embeddings  # noqa: E402
from unclip import unclip_sample  # noqa: E402


# Inception-v3, as FID defines it. Attribute names follow the weights file's keys
# (Conv2d_1a_3x3.conv.weight, Mixed_5b.branch5x5_2.bn.running_mean, ...). The FID network differs
# from the classification one in its pooling: average pools ignore the zero padding
# (count_include_pad=False) and the last block pools its fourth branch with a max, not a mean.

class BasicConv2d(nn.Module):
    """Convolution (no bias), batch norm (eps 1e-3, TensorFlow's), ReLU."""

    def __init__(self, c_in, c_out, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-3)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class Mixed(nn.Module):
    """One Inception block: chains of convolutions side by side, outputs concatenated.

    chains: name -> [(c_out, kernel, stride, padding), ...]; a one-layer chain's convolution is
    called `name`, a longer chain's `name_1`, `name_2`, ... A list of two layers in a chain is a
    1x3 and a 3x1 convolution applied side by side to the same input (`name_ka`, `name_kb`; the
    E blocks). pool: "avg" or "max" (3x3, stride 1) followed by a 1x1 convolution to
    pool_channels, or "max_s2" (3x3, stride 2, no convolution: the grid-reducing blocks)."""

    def __init__(self, c_in, chains, pool, pool_channels=0):
        super().__init__()
        self.chains, self.pool = [], pool
        for name, layers in chains.items():
            c, labels = c_in, []
            for k, layer in enumerate(layers, start=1):
                label = name if len(layers) == 1 else f"{name}_{k}"
                if isinstance(layer, list):  # the side-by-side pair
                    for end, (c_out, *conv) in zip("ab", layer):
                        self.add_module(label + end, BasicConv2d(c, c_out, *conv))
                    labels.append((label + "a", label + "b"))
                else:
                    self.add_module(label, BasicConv2d(c, layer[0], *layer[1:]))
                    labels.append(label)
                    c = layer[0]
            self.chains.append(labels)
        if pool_channels:
            self.branch_pool = BasicConv2d(c_in, pool_channels, 1)

    def forward(self, x):
        outputs = []
        for labels in self.chains:
            h = x
            for label in labels:
                if isinstance(label, tuple):  # (B, C, H, W) -> (B, 2 C', H, W)
                    h = torch.cat([getattr(self, end)(h) for end in label], 1)
                else:
                    h = getattr(self, label)(h)
            outputs.append(h)
        if self.pool == "max_s2":
            outputs.append(F.max_pool2d(x, 3, stride=2))
        elif self.pool == "max":
            outputs.append(self.branch_pool(F.max_pool2d(x, 3, stride=1, padding=1)))
        else:
            outputs.append(self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1,
                                                         count_include_pad=False)))
        return torch.cat(outputs, 1)


def block_a(c_in, pool_channels):  # 35x35 grid -> 224 + pool_channels channels
    return Mixed(c_in, {"branch1x1": [(64, 1, 1, 0)],
                        "branch5x5": [(48, 1, 1, 0), (64, 5, 1, 2)],
                        "branch3x3dbl": [(64, 1, 1, 0), (96, 3, 1, 1), (96, 3, 1, 1)]},
                 "avg", pool_channels)


def block_c(c_7x7):  # 17x17 grid, 768 channels; 7x7 convolutions factored into 1x7 and 7x1
    row, col = ((1, 7), 1, (0, 3)), ((7, 1), 1, (3, 0))
    return Mixed(768, {"branch1x1": [(192, 1, 1, 0)],
                       "branch7x7": [(c_7x7, 1, 1, 0), (c_7x7, *row), (192, *col)],
                       "branch7x7dbl": [(c_7x7, 1, 1, 0), (c_7x7, *col), (c_7x7, *row),
                                        (c_7x7, *col), (192, *row)]},
                 "avg", 192)


def block_e(c_in, pool):  # 8x8 grid -> 2048 channels
    row, col = ((1, 3), 1, (0, 1)), ((3, 1), 1, (1, 0))
    return Mixed(c_in, {"branch1x1": [(320, 1, 1, 0)],
                        "branch3x3": [(384, 1, 1, 0), [(384, *row), (384, *col)]],
                        "branch3x3dbl": [(448, 1, 1, 0), (384, 3, 1, 1),
                                         [(384, *row), (384, *col)]]},
                 pool, 192)


class InceptionV3(nn.Module):
    """Inception-v3 without the auxiliary classifier; `features` returns the 2,048-d pool layer.
    fc (1,008 classes, as in the FID weights file) is kept only so that the file loads strictly."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = (block_a(192, 32), block_a(256, 64),
                                                       block_a(288, 64))
        self.Mixed_6a = Mixed(288, {"branch3x3": [(384, 3, 2, 0)],
                                    "branch3x3dbl": [(64, 1, 1, 0), (96, 3, 1, 1), (96, 3, 2, 0)]},
                              "max_s2")
        self.Mixed_6b, self.Mixed_6c = block_c(128), block_c(160)
        self.Mixed_6d, self.Mixed_6e = block_c(160), block_c(192)
        self.Mixed_7a = Mixed(768, {"branch3x3": [(192, 1, 1, 0), (320, 3, 2, 0)],
                                    "branch7x7x3": [(192, 1, 1, 0), (192, (1, 7), 1, (0, 3)),
                                                    (192, (7, 1), 1, (3, 0)), (192, 3, 2, 0)]},
                              "max_s2")
        self.Mixed_7b, self.Mixed_7c = block_e(1280, "avg"), block_e(2048, "max")
        self.fc = nn.Linear(2048, 1008)

    def features(self, x):
        """(B, 3, H, W) in [-1, 1] -> (B, 2048); resized to 299 px first, as FID does."""
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))   # (B, 64, 147, 147)
        x = F.max_pool2d(x, 3, stride=2)                                    # (B, 64, 73, 73)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)  # 192 x 35 x 35
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
                      self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b,
                      self.Mixed_7c):
            x = block(x)                                                    # ... (B, 2048, 8, 8)
        return x.mean((2, 3))                                               # (B, 2048)


def load_inception(path, device="cpu"):
    """The FID Inception-v3 from its weights file; one-line errors for a missing or wrong file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file. Pass --inception the FID Inception weights "
                                "(pt_inception-2015-12-05-6726825d.pth from pytorch-fid)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = InceptionV3()
        model.load_state_dict(state)
    except Exception as e:  # unpickling or key errors: say which file, and what it should be
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path} is not the FID Inception-v3 weights file "
                         f"({first[:120]})") from None
    return model.to(device).eval()


@torch.no_grad()
def inception_features(model, images, chunk=50):
    """(N, 3, R, R) images in [-1, 1] -> (N, 2048) pool features."""
    device = next(model.parameters()).device
    return torch.cat([model.features(x.to(device).float()).cpu() for x in images.split(chunk)])


def guidance_sweep(models, seed, n=300, scales=(1.0, 2.0, 3.0, 5.0), more_features=None):
    """unCLIP's samples for the prompts of n test scenes, per decoder guidance scale: CLIP-FID
    against n other test scenes, and exact match. more_features: {name: function from images to
    (N, D) features} adds a Frechet distance in those features (FID's Inception)."""
    clip_model, prior, decoder, _ = checkpoint.load_unclip(models)
    test = data.shapes_data(2 * n, decoder.cfg.resolution, seed, prefixes=False, stream="test")
    real, prompts = test.batch(torch.arange(n))[0], [c[0] for c in test.captions[n:]]
    features = dict(clip_fid=lambda x: image_embeddings(clip_model, x).cpu(),
                    **(more_features or {}))
    real_stats = {name: evaluate.feature_statistics(f(real)) for name, f in features.items()}
    results = {}
    for w in scales:
        torch.manual_seed(0)
        images = torch.cat([unclip_sample(clip_model, prior, decoder, [], prompts[i:i + 100],
                                          decoder_guidance=w)[0][-1]
                            for i in range(0, len(prompts), 100)])
        results[w] = {name: evaluate.frechet_distance(*real_stats[name],
                                                      *evaluate.feature_statistics(f(images)))
                      for name, f in features.items()}
        results[w]["exact"] = shapes.check_images(images, prompts)["exact"]
        print(f"decoder guidance {w}: " + ", ".join(f"{k} {v:.4f}" for k, v in results[w].items()),
              flush=True)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description="FID and CLIP-FID against decoder guidance")
    parser.add_argument("--models", default="out")
    parser.add_argument("--inception", help="the FID Inception-v3 weights (else CLIP-FID alone)")
    parser.add_argument("--n", type=int, default=300, help="generated and real images")
    parser.add_argument("--guidance", default="1,2,3,5", help="the decoder's guidance scales")
    parser.add_argument("--out", default="docs")
    args = parser.parse_args(argv)
    more = {}
    if args.inception:
        model = load_inception(args.inception)
        more["fid"] = lambda x: inception_features(model, x)
    seed = checkpoint.load_checkpoint(os.path.join(args.models, "decoder.pt"), "decoder")["seed"]
    scales = [float(s) for s in args.guidance.split(",")]
    results = guidance_sweep(args.models, seed, args.n, scales, more)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "clip_fid.json"), "w") as f:
        json.dump({"command": " ".join(["python"] + sys.argv), "n": args.n,
                   "label": "CLIP-FID (own features; not comparable to published FID)",
                   "decoder_guidance": results}, f, indent=1)


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}")
