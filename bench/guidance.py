"""The fidelity-diversity trade-off of guidance, and DDIM against DDPM, on a class-conditional DDPM.

    python bench/guidance.py --ddpm out/ddpm.pt --classifier out/classifier.pt --out docs

For each guidance scale, samples `--per-class` images of each shape class and judges them with
shapes.py's checker: fidelity is the share whose single object has the requested shape (also split
into the share showing exactly one clean object, and the right-shape rate among those), diversity
the summed entropy (bits) of the colour, size and position of those objects. Classifier-free
guidance varies w (0: unconditional, 1: conditional); classifier guidance varies the gradient
scale on the conditional model (w = 1). Then DDIM at 25/50/100 steps against DDPM at all T steps.
Writes OUT/guidance.json, OUT/guidance.md (tables) and OUT/guidance.png (the plot).
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
from diffusion import classifier_guidance  # noqa: E402
from checkpoint import load_checkpoint, restore_model  # noqa: E402


def judge(model, y, seed, **sampling):
    torch.manual_seed(seed)
    tic = time.time()
    images = model.sample(len(y), y, **sampling)
    objects, right = shapes.shape_judgements(images, [shapes.SHAPES[i] for i in y.tolist()])
    single = sum(o is not None for o in objects)
    return {"shape_accuracy": sum(right) / len(right),
            "one_object": single / len(objects),
            "shape_given_one_object": sum(right) / max(single, 1),
            "attribute_entropy_bits": shapes.attribute_entropy(objects),
            "seconds": round(time.time() - tic, 1)}, images


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ddpm", default="out/ddpm.pt")
    parser.add_argument("--classifier", default="out/classifier.pt")
    parser.add_argument("--per-class", type=int, default=32)
    parser.add_argument("--cfg-scales", default="0,1,2,3,5")
    parser.add_argument("--classifier-scales", default="0,1,2,4,8")
    parser.add_argument("--out", default="docs")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model = restore_model(load_checkpoint(args.ddpm, "ddpm"))
    classifier = restore_model(load_checkpoint(args.classifier, "classifier"))
    y = torch.arange(3).repeat_interleave(args.per_class)
    results = {"classifier_free": {}, "classifier": {}, "samplers": {}}
    grids = []
    for w in [float(s) for s in args.cfg_scales.split(",")]:
        results["classifier_free"][w], images = judge(model, y, 0, guidance_scale=w)
        grids.append(images[:: max(1, args.per_class // 4)][:12])  # 4 per class
        print("classifier-free", w, results["classifier_free"][w], flush=True)
    for s in [float(s) for s in args.classifier_scales.split(",")]:
        cond_fn = classifier_guidance(classifier, y, s)
        results["classifier"][s], _ = judge(model, y, 0, cond_fn=cond_fn)
        print("classifier", s, results["classifier"][s], flush=True)
    small = y[:: max(1, args.per_class // 16)]  # fewer images for the 1000-step sampler
    for name, sampling in [("ddim-25", dict(steps=25)), ("ddim-50", dict(steps=50)),
                           ("ddim-100", dict(steps=100)), ("ddpm-1000", dict(sampler="ddpm"))]:
        results["samplers"][name], _ = judge(model, small, 1, **sampling)
        print(name, results["samplers"][name], flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "guidance.json"), "w") as f:
        json.dump(results, f, indent=1)
    datasets.save_grid(torch.cat(grids), os.path.join(args.out, "guidance_grid.png"), nrow=12,
                       scale=2)
    write_table(results, os.path.join(args.out, "guidance.md"), len(y), len(small))
    plot(results, os.path.join(args.out, "guidance.png"))


def write_table(results, path, n, n_small):
    lines = [f"| guidance | scale | right shape ({n} samples) | one clean object | right shape "
             "among those | attribute entropy (bits) | time (s) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for kind, label in [("classifier_free", "classifier-free w"), ("classifier", "classifier s")]:
        for scale, r in results[kind].items():
            lines.append(f"| {label} | {scale:g} | {r['shape_accuracy']:.2f} | "
                         f"{r['one_object']:.2f} | {r['shape_given_one_object']:.2f} | "
                         f"{r['attribute_entropy_bits']:.2f} | {r['seconds']} |")
    lines += ["", f"| sampler ({n_small} samples, w = 1) | right shape | one clean object | "
                  "right shape among those | attribute entropy (bits) | time (s) |",
              "| --- | --- | --- | --- | --- | --- |"]
    for name, r in results["samplers"].items():
        lines.append(f"| {name} | {r['shape_accuracy']:.2f} | {r['one_object']:.2f} | "
                     f"{r['shape_given_one_object']:.2f} | {r['attribute_entropy_bits']:.2f} | "
                     f"{r['seconds']} |")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for i, (kind, label) in enumerate([("classifier_free", "classifier-free (w)"),
                                       ("classifier", "classifier (s)")]):
        scales = list(results[kind])
        accuracy = [results[kind][s]["shape_accuracy"] for s in scales]
        given_one = [results[kind][s]["shape_given_one_object"] for s in scales]
        entropy = [results[kind][s]["attribute_entropy_bits"] for s in scales]
        axes[0].plot(scales, accuracy, "o-", color=f"C{i}", label=f"{label}: right shape")
        axes[0].plot(scales, given_one, "^:", color=f"C{i}", label=f"{label}: right among clean")
        axes[0].plot(scales, [e / 5.9 for e in entropy], "s--", color=f"C{i}",
                     label=f"{label}: diversity / max")
        axes[1].plot(entropy, accuracy, "o-", color=f"C{i}", label=label)
        for s, e, a in zip(scales, entropy, accuracy):
            axes[1].annotate(f"{s:g}", (e, a), textcoords="offset points", xytext=(4, 4))
    axes[0].set(xlabel="guidance scale", ylabel="share / normalised entropy",
                title="Fidelity (right shape) and diversity")
    axes[1].set(xlabel="diversity: attribute entropy (bits)", ylabel="fidelity: right shape",
                title="The trade-off (labels: scale)")
    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError) as e:  # a missing or wrong checkpoint: one line
        sys.exit(f"error: {e}")
