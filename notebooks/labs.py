"""Break-it labs: one realistic bug a week, predicted in writing, then run.

    python notebooks/labs.py          # the labs: each week's bug and its question
    python notebooks/labs.py 3        # week 3: its demo on the code as it is, then with the bug

Each lab changes one exact piece of one module, as a student or a refactor might, in a temporary
copy of the project's modules, and runs the week's command there twice: on the code as it is and
with the bug. Students write down what they expect the bug to do to the printed figures before
running it (SYLLABUS.md, "Each week"); the measured effect is in ANSWERS.md, for instructors.
The project itself is never changed.
"""
import glob
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# week: (file, the code as it is, the bug, the command, the question to answer before running)
LABS = {
    1: ("vae.py", "return 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).sum(-1)",
        "return 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).mean(-1)", "python vae.py",
        "The KL term is averaged over the code's 32 dimensions instead of summed. What happens "
        "to the printed bits per dimension, and is the model better for it?"),
    2: ("vqvae.py", "return z_e + (z_q - z_e).detach()", "return z_q",
        "python vqvae.py",
        "The straight-through estimator returns z_q itself. Which parameters still learn, and "
        "what happens to the reconstruction error and the codebook's perplexity?"),
    3: ("diffusion.py", "* eps) / extract(\n            self.sqrt_alphas_cumprod, t, x_t)",
        "* eps) / extract(\n            self.alphas_cumprod, t, x_t)",
        "python -c \"from diffusion import *; import torch; torch.manual_seed(0); "
        "d = GaussianDiffusion(linear_beta_schedule(200), clip_x0='none'); "
        "m = PointDenoiser(num_classes=3); fit_ring_toy(m, d, 4000); "
        "y = torch.zeros(1000, dtype=torch.long); "
        "x = d.p_sample_loop(lambda x, t: m(x, t, y), (1000, 2)); "
        "print(f'mean distance to the nearest ring: ancestral samples "
        "{ring_distance(x).min(1).values.mean():.3f}, the data "
        "{ring_distance(toy_rings(1000)[0]).min(1).values.mean():.3f}')\"",
        "The x_0 that x_t and eps imply divides by abar_t instead of its square root (eq. 4 "
        "inverted without the root); training is unchanged, the sampler reads x_0. How far from "
        "the rings do the samples land, against the data's own distance?"),
    4: ("diffusion.py", "return out_uncond + guidance_scale * (out_cond - out_uncond)",
        "return out_cond + guidance_scale * (out_cond - out_uncond)", "python diffusion.py",
        "Classifier-free guidance extrapolates from the conditional output instead of the "
        "unconditional one. Predict fidelity and diversity at w = 1, 3 and 10 against the "
        "code as it is."),
    5: ("clip.py", "return (image_to_text + F.cross_entropy(logits[:, :b].T, target)) / 2",
        "return image_to_text", "python clip.py",
        "The contrastive loss keeps only its image-to-text half. Which retrieval direction "
        "suffers, and by how much?"),
    6: ("prior.py", "keep = drop_condition(torch.ones(len(z_t), device=z_t.device), p_uncond)",
        "keep = drop_condition(torch.ones(len(z_t), device=z_t.device), 1 - p_uncond)",
        "python prior.py",
        "p_uncond is read as the chance of keeping the caption, so the prior trains on it 10% "
        "of the time instead of 90%. What happens to the share of samples nearest their "
        "class, and to their cosine with it?"),
    7: ("decoder.py", "self(x, t, *c), (z_i, tokens), null, w)",
        "self(x, t, *c), null, (z_i, tokens), w)",
        "python decoder.py",
        "The decoder's guidance gets its two conditions swapped: the null one where the "
        "embedding goes, and the embedding where the null goes. At the demo's w = 3, how far "
        "are the decoded images from the originals, against the data's mean image?"),
    8: ("unclip.py", "unit = (torch.sin((1 - theta) * omega) * a_unit + torch.sin(theta * omega) "
        "* b_unit) \\\n        / torch.sin(omega)", "unit = (1 - theta) * a_unit + theta * b_unit",
        "python -c \"import torch, math, unclip; torch.manual_seed(0); "
        "a, b = (math.sqrt(64) * torch.nn.functional.normalize(torch.randn(2, 64), dim=-1)); "
        "print('norms along the path:', [round(v, 2) for v in unclip.slerp(a, b, "
        "torch.linspace(0, 1, 5)).norm(dim=-1).tolist()])\"",
        "slerp is written as a straight line between the two unit vectors (a lerp). What "
        "happens to the norms along the path, where the decoder was trained at sqrt(D) = 8?"),
    9: ("evaluate.py", "sigma_1.trace() + sigma_2.trace() - 2 * cross",
        "sigma_1.trace() + sigma_2.trace() - cross",
        "python -c \"import torch; from evaluate import frechet_distance; torch.manual_seed(0); "
        "x, y = torch.randn(2, 5000, 16).double(); "
        "s = lambda v: (v.mean(0), torch.cov(v.T)); "
        "print(f'two samples of one Gaussian: {frechet_distance(*s(x), *s(y)):.3f}')\"",
        "The cross term of the Frechet distance loses its factor 2. What does it give for two "
        "samples of the same Gaussian, whose distance should be near 0?"),
}


def run(command, copy):
    """What a shell command prints, run in the copy of the modules (never the project's own)."""
    done = subprocess.run(command, shell=True, cwd=copy, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ""})
    return (done.stdout + done.stderr).strip()


def main():
    if len(sys.argv) < 2:
        for week, (path, *_, question) in LABS.items():
            print(f"week {week} ({path}): {question}")
        return
    if not sys.argv[1].isdigit() or int(sys.argv[1]) not in LABS:
        raise SystemExit(f"error: no lab {sys.argv[1]!r}: choose a week, 1 to {len(LABS)}")
    path, right, wrong, command, question = LABS[int(sys.argv[1])]
    print(f"{question}\n\n{path}:\n- {right}\n+ {wrong}\n")
    with tempfile.TemporaryDirectory(prefix="lab-") as copy:
        for module in glob.glob(os.path.join(ROOT, "*.py")):
            shutil.copy(module, copy)
        print(f"== as it is: {command}\n{run(command, copy)}\n")
        with open(os.path.join(copy, path)) as f:
            source = f.read()
        if source.count(right) != 1:
            raise SystemExit(f"error: the lab's line is not in {path} exactly once: update LABS")
        with open(os.path.join(copy, path), "w") as f:
            f.write(source.replace(right, wrong))
        print(f"== with the bug\n{run(command, copy)}")


if __name__ == "__main__":
    main()
