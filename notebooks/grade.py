"""Grading the notebooks' exercises: the instructor's command.

    python notebooks/grade.py expected [--seeds 1,2,3]   # store the right outputs (public: seed 0)
    python notebooks/grade.py student-copy DIR           # the copy to hand out
    python notebooks/grade.py SUBMISSIONS [--csv marks.csv]   # mark a folder of submissions

A submission is a student's folder of notebooks (or one .ipynb; the student is its name). From
every code cell the grader keeps the imports, the function and class definitions, and the
assignments to `my_*` names, and nothing else (no training runs); it runs them in a fresh Python
process in which the project's own version of every answer is blanked (it raises
NotImplementedError), so `my_gaussian_kl = vae.gaussian_kl` scores nothing, and solutions.py
cannot be imported. Each exercise `NAME` is the reader's `my_NAME`, called on the inputs of each
hidden seed and compared with the stored output: its points times the share of seeds it gets
right.

The hidden outputs are written from the project's own functions on seeds the students do not
see: the copy in the repository uses 1, 2 and 3 (for the tests); for a course, choose your own
(`expected --seeds ...`) and keep that hidden.pt out of the student copy, as student-copy does.
The student copy leaves out solutions.py, hidden.pt, ANSWERS.md (the key to the questions that
close each notebook) and the two test files that read solutions.py; its exercise cells are the
blank ones committed in the notebooks.
"""
import argparse
import ast
import csv
import json
import os
import shutil
import subprocess
import sys

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)
import exercises  # noqa: E402

LEFT_OUT = ("notebooks/solutions.py", "notebooks/expected/hidden.pt",  # from the student copy
            "notebooks/ANSWERS.md",
            "tests/test_notebooks.py", "tests/test_grading.py")  # these two read solutions.py


def references():
    """name -> the project's own function of the exercise's inputs (or the closed form, where
    the project computes it inline): what the stored outputs are made from."""
    import clip
    import decoder
    import evaluate
    import prior
    import unclip
    import vae
    import vqvae
    from diffusion import GaussianDiffusion, classifier_free_guidance, classifier_guidance
    from upsample import Upsampler, UpsamplerConfig
    from vqvae import VectorQuantizer, VQVAEConfig

    def nearest_code(flat, codebook):
        quantizer = VectorQuantizer(VQVAEConfig(num_codes=len(codebook),
                                                embedding_dim=codebook.shape[1]))
        with torch.no_grad():
            quantizer.codebook.copy_(codebook)
        return quantizer.nearest(flat)

    def guided(out_cond, out_uncond, w):
        def model_fn(x, t, c):  # the conditional outputs where c = 1, the unconditional where 0
            return torch.where(c[:, None] == 1, out_cond.repeat(2, 1), out_uncond.repeat(2, 1))
        n = len(out_cond)
        return classifier_free_guidance(model_fn, torch.ones(n), torch.zeros(n), w)(
            torch.zeros_like(out_cond), torch.zeros(n, dtype=torch.long))

    def condition(low, resolution):
        cfg = UpsamplerConfig(resolution=resolution, low_resolution=low.shape[-1], channels=8,
                              channel_mult=(1,), num_res_blocks=1)
        return Upsampler(cfg).condition(low)

    def logits(image_features, text_features, logit_scale):  # CLIP Fig. 3, as in CLIP.logits
        return (logit_scale.exp() * F.normalize(image_features, dim=-1)
                @ F.normalize(text_features, dim=-1).T)

    return {
        "gaussian_kl": vae.gaussian_kl,
        "reparameterise": vae.reparameterise,
        "nearest_code": nearest_code,
        "straight_through": vqvae.straight_through,
        "q_sample": lambda s, x0, t, noise: GaussianDiffusion(s.betas).q_sample(x0, t, noise),
        "q_posterior_mean": lambda s, x0, x_t, t: GaussianDiffusion(s.betas).q_posterior(
            x0, x_t, t)[0],
        "ddpm_loss": lambda model_fn, s, x0, t, noise: (
            noise - model_fn(GaussianDiffusion(s.betas).q_sample(x0, t, noise), t)).pow(2).mean(),
        "ddim_step": lambda s, x_t, eps, t, t_prev: GaussianDiffusion(s.betas, clip_x0="none")
        .ddim_sample(lambda x, t: eps, x_t, t, t_prev),
        "classifier_free_guidance": guided,
        "classifier_gradient": lambda model, x_t, t, y: classifier_guidance(model, y, 1.0)(x_t, t),
        "clip_logits": logits,
        "contrastive_loss": clip.contrastive_loss,
        "normalise_embedding": clip.normalise_embedding,
        "select_candidates": prior.select_candidates,
        "prior_loss": lambda model_fn, s, z_i, t, noise: GaussianDiffusion(
            s.betas, "x0", "none").training_loss(model_fn, z_i, t, noise),
        "upsampler_condition": condition,
        "drop_condition": lambda c, u, p: c * (u >= p).to(c.dtype).view(-1, *[1] * (c.dim() - 1)),
        "embedding_context": decoder.embedding_context,
        "slerp": unclip.slerp,
        "text_diff": unclip.text_diff,
        "frechet_distance": lambda *statistics: torch.tensor(
            evaluate.frechet_distance(*statistics), dtype=torch.float64),
    }


def write_expected(seeds):
    """expected/public.pt (seed 0, what the notebooks check) and expected/hidden.pt (seeds)."""
    answers = references()
    os.makedirs(exercises.EXPECTED, exist_ok=True)
    for which, chosen in (("public", [exercises.PUBLIC_SEED]), ("hidden", seeds)):
        stored = {name: {seed: exercises.run(name, answers[name], seed).detach()
                         for seed in chosen} for name in exercises.EXERCISES}
        torch.save(stored, os.path.join(exercises.EXPECTED, f"{which}.pt"))
    print(f"wrote {exercises.EXPECTED}/public.pt (seed {exercises.PUBLIC_SEED}) and hidden.pt "
          f"(seeds {', '.join(map(str, seeds))})")


def student_copy(folder):
    """The repository's tracked files, less the answers, into a new folder."""
    if os.path.exists(folder):
        raise SystemExit(f"error: {folder} exists: name a new folder for the student copy")
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode:
        raise SystemExit("error: the student copy is made from a git checkout of the project")
    for path in listed.stdout.splitlines():
        if path not in LEFT_OUT and os.path.exists(os.path.join(ROOT, path)):
            os.makedirs(os.path.join(folder, os.path.dirname(path)), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, path), os.path.join(folder, path))
    print(f"wrote the student copy to {folder} (left out: {', '.join(LEFT_OUT)})")


# ----------------------------------------------------------------------------------------------
# Marking: one process per student.

def answer_code(notebook_path):
    """The statements of a notebook's code cells that define answers: imports, function and
    class definitions, and assignments to my_* names."""
    with open(notebook_path) as f:
        cells = json.load(f)["cells"]
    kept = []
    for cell in cells:
        if cell["cell_type"] != "code":
            continue
        try:
            tree = ast.parse("".join(cell["source"]))
        except SyntaxError:
            continue  # a cell that does not parse defines nothing
        for node in tree.body:
            targets = [t for t in getattr(node, "targets", []) if isinstance(t, ast.Name)]
            if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef)) or (
                    targets and all(t.id.startswith("my_") for t in targets)):
                kept.append(ast.unparse(node))
    return kept


def blank_references():
    """Replace every project function that answers an exercise, wherever a module holds it, by
    one that raises NotImplementedError; make solutions.py unimportable."""
    import clip
    import decoder
    import diffusion
    import evaluate
    import prior
    import unclip
    import upsample
    import vae
    import vqvae
    originals = [vae.gaussian_kl, vae.reparameterise, vqvae.straight_through,
                 diffusion.classifier_free_guidance, diffusion.classifier_guidance,
                 diffusion.drop_condition, clip.contrastive_loss, clip.normalise_embedding,
                 prior.select_candidates, decoder.embedding_context, unclip.slerp,
                 unclip.text_diff, evaluate.frechet_distance, evaluate._sqrtm_psd]

    def blank(*args, **kwargs):
        raise NotImplementedError("blanked for grading: write your own")
    for module in list(sys.modules.values()):
        for name, value in list(vars(module).items() if module else ()):
            if any(value is f for f in originals):
                setattr(module, name, blank)
    methods = [(vqvae.VectorQuantizer, "nearest"), (upsample.Upsampler, "condition")] + [
        (diffusion.GaussianDiffusion, name) for name in (
            "q_sample", "q_posterior", "x0_from_eps", "training_target", "training_loss",
            "ddim_sample", "ddim_sample_loop")]
    for cls, name in methods:
        setattr(cls, name, blank)
    sys.modules["solutions"] = None  # `import solutions` raises ImportError


def mark_in_this_process(notebooks, seeds):
    """{name: [right on each seed]} for the answers in these notebooks."""
    sys.path[:] = [p for p in sys.path if os.path.abspath(p) != HERE]  # solutions.py is there
    blank_references()
    namespace = {"__name__": "submission"}
    for path in notebooks:
        for statement in answer_code(path):
            try:
                exec(statement, namespace)
            except Exception:  # a broken definition leaves its answer missing
                pass
    expected = exercises.load_expected("hidden")
    marks = {}
    for name in exercises.EXERCISES:
        answer = namespace.get(f"my_{name}")
        marks[name] = [answer is not None
                       and exercises.verdict(name, answer, seed, expected[name][seed])[0]
                       for seed in seeds]
    return marks


def find_submissions(folder):
    """{student: [notebook paths]}: each sub-folder is a student, and so is each .ipynb."""
    submissions = {}
    for entry in sorted(os.listdir(folder)):
        path = os.path.join(folder, entry)
        if entry.endswith(".ipynb"):
            submissions[entry.removesuffix(".ipynb")] = [path]
        elif os.path.isdir(path):
            submissions[entry] = sorted(os.path.join(d, f) for d, _, files in os.walk(path)
                                        for f in files if f.endswith(".ipynb")
                                        and ".ipynb_checkpoints" not in d)
    if not submissions:
        raise SystemExit(f"error: no submissions in {folder}: put each student's notebooks in a "
                         "folder of their own (or one .ipynb per student)")
    return submissions


def grade(folder, timeout=300):
    """Mark every submission in its own process: {student: {name: points}}."""
    seeds = sorted(next(iter(exercises.load_expected("hidden").values())))
    results = {}
    for student, notebooks in find_submissions(folder).items():
        done = subprocess.run([sys.executable, __file__, "--mark", json.dumps(seeds), *notebooks],
                              capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        if done.returncode:
            lines = done.stderr.strip().splitlines()
            print(f"{student}: could not be marked ({lines[-1] if lines else 'no output'})")
            marks = {name: [False] * len(seeds) for name in exercises.EXERCISES}
        else:
            marks = json.loads(done.stdout.strip().splitlines()[-1])
        results[student] = {name: exercises.EXERCISES[name][1] * sum(right) / len(right)
                            for name, right in marks.items()}
    return results


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--mark"]:  # the per-student process
        print(json.dumps(mark_in_this_process(argv[2:], json.loads(argv[1]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", help="expected | student-copy | a folder of submissions")
    parser.add_argument("folder", nargs="?", help="student-copy: the folder to write")
    parser.add_argument("--seeds", default="1,2,3", help="expected: the hidden seeds")
    parser.add_argument("--csv", help="also write the marks to this CSV file")
    args = parser.parse_args(argv)
    if args.what == "expected":
        return write_expected([int(s) for s in args.seeds.split(",")])
    if args.what == "student-copy":
        if not args.folder:
            raise SystemExit("error: name the folder: grade.py student-copy DIR")
        return student_copy(args.folder)
    if not os.path.isdir(args.what):
        raise SystemExit(f"error: {args.what} is not a folder of submissions (or 'expected', "
                         "'student-copy')")
    results = grade(args.what)
    total = sum(points for _, points, _, _ in exercises.EXERCISES.values())
    for student, points in results.items():
        print(f"{student}: {sum(points.values()):g} / {total}  "
              + " ".join(f"{name} {p:g}" for name, p in points.items()))
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["student", *exercises.EXERCISES, "total"])
            for student, points in results.items():
                writer.writerow([student, *points.values(), sum(points.values())])
        print(f"wrote {args.csv}")


if __name__ == "__main__":
    main()
