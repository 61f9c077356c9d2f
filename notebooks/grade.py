"""Grading the notebooks' exercises: the instructor's command.

    python notebooks/grade.py expected [--seeds 1,2,3]   # store the right outputs (public: seed 0)
    python notebooks/grade.py student-copy DIR           # the copy to hand out
    python notebooks/grade.py student-copy DIR --blank-modules   # its modules blanked too
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
blank ones committed in the notebooks. It keeps the modules whole: they are the course's text,
and the notebooks train and sample with them before their exercises are written. With
--blank-modules the copy's modules become assignments too: each function that answers an
exercise (ANSWERS below) keeps its signature, its docstring gives way to the task, its body to
`raise NotImplementedError`, and the coefficients the student derives are gone; a notebook then
runs as far as the functions written so far carry it.
"""
import argparse
import ast
import csv
import importlib
import json
import os
import shutil
import subprocess
import sys
import textwrap

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

# The project's own answer to each exercise: (module, function, the exercise, the task its blank
# states). The grader blanks these while marking; `student-copy --blank-modules` blanks them in
# the copy's source.
ANSWERS = [
    ("vae", "gaussian_kl", "gaussian_kl",
     "(B, D) mean, logvar -> (B,) KL(N(mean, exp(logvar)) || N(0, I))."),
    ("vae", "reparameterise", "reparameterise",
     "A sample of N(mean, exp(logvar)), differentiable in mean and logvar."),
    ("vqvae", "straight_through", "straight_through",
     "z_q's value, with the gradient passed to z_e unchanged (VQ-VAE section 3.1)."),
    ("vqvae", "VectorQuantizer.nearest", "nearest_code",
     "(N, D) -> (N,) index of the closest code in self.codebook."),
    ("diffusion", "GaussianDiffusion.q_sample", "q_sample",
     "x_t from x_0, t and the noise (DDPM eq. 4)."),
    ("diffusion", "GaussianDiffusion.q_posterior", "q_posterior_mean",
     "Mean, variance and log-variance of q(x_{t-1} | x_t, x_0) (DDPM eqs. 6-7)."),
    ("diffusion", "GaussianDiffusion.training_target", "ddpm_loss",
     "What the model regresses on: the noise, x_0 or v, as self.prediction says."),
    ("diffusion", "GaussianDiffusion.training_loss", "ddpm_loss",
     "The simple loss (DDPM eq. 14) against training_target, weighted per timestep by "
     "loss_weight; draw t and the noise where not given."),
    ("diffusion", "GaussianDiffusion.x0_from_eps", "ddim_step",
     "x_0 from x_t, t and eps (invert eq. 4)."),
    ("diffusion", "GaussianDiffusion.ddim_sample", "ddim_step",
     "One DDIM step from t to t_prev (Song et al. eqs. 12 and 16; t_prev = -1 is x_0), with "
     "cond_fn's classifier gradient subtracted from eps when given."),
    ("diffusion", "GaussianDiffusion.ddim_sample_loop", "ddim_step",
     "DDIM over `steps` evenly spaced timesteps from `start` (T - 1 unless given) down to x_0."),
    ("diffusion", "classifier_free_guidance", "classifier_free_guidance",
     "guided(*inputs): the model with and without its condition in one batch, mixed at "
     "guidance_scale (w = 1 is the conditional model)."),
    ("diffusion", "classifier_guidance", "classifier_gradient",
     "cond_fn(x_t, t): scale times the gradient over x_t of log p(y | x_t, t)."),
    ("diffusion", "drop_condition", "drop_condition",
     "Each row of c zeroed with probability p_uncond."),
    ("clip", "contrastive_loss", "contrastive_loss",
     "Symmetric InfoNCE on logits (B, B + F): foils after the B captions; `same` marks pairs that "
     "share a description, positives alike."),
    ("clip", "normalise_embedding", "normalise_embedding", "(B, D) -> (B, D) of norm sqrt(D)."),
    ("prior", "select_candidates", "select_candidates",
     "(B, K, D) candidates, (B, D) z_t -> (B, D): the candidate closest to z_t by dot product."),
    ("decoder", "embedding_context", "embedding_context",
     "z_i (B, E) -> num_tokens context tokens by one linear map, before the caption's (B, L, C)."),
    ("upsample", "Upsampler.condition", "upsampler_condition",
     "(B, 3, r, r) -> (B, 3, R, R): the low-resolution image at the output size."),
    ("unclip", "slerp", "slerp", "(D,) a, b and (K,) fractions theta -> (K, D) on their sphere."),
    ("unclip", "text_diff", "text_diff",
     "unCLIP Fig. 5: z_i (D,) turned towards the difference of two captions' text embeddings."),
    ("evaluate", "frechet_distance", "frechet_distance",
     "The squared Frechet distance between N(mu_1, sigma_1) and N(mu_2, sigma_2)."),
    ("evaluate", "_sqrtm_psd", "frechet_distance",
     "The square root of a symmetric positive semi-definite matrix."),
]
DERIVED = {"diffusion": ("posterior_mean_coef1", "posterior_mean_coef2")}  # q_posterior's
BLANKED_LEAVES_OUT = ("bench/mutations.py",)  # it quotes lines of the answers


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


def blank_source(module, source):
    """A module's source with its answers (ANSWERS) blanked: each function keeps its signature
    and decorators, states its task and raises NotImplementedError; the assignments to the
    attributes the student derives (DERIVED) are dropped."""
    tasks = {qualname: (exercise, task) for name, qualname, exercise, task in ANSWERS
             if name == module}
    functions = {qualname: node for node, qualname in _functions(ast.parse(source))}
    missing = sorted(set(tasks) - set(functions))
    if missing:
        raise SystemExit(f"error: {module}.py has no {', '.join(missing)}: update ANSWERS in "
                         "notebooks/grade.py")
    lines = source.splitlines(keepends=True)
    edits = []  # (first line, last line, replacement lines), 1-based and inclusive
    for qualname, node in functions.items():
        if qualname in tasks:
            exercise, task = tasks[qualname]
            indent = " " * node.body[0].col_offset
            notebook = exercises.EXERCISES[exercise][0]
            docstring = textwrap.fill(f'"""Yours to write (notebook {notebook}, exercise '
                                      f'{exercise}). {task}"""', 100, initial_indent=indent,
                                      subsequent_indent=indent)
            edits.append((node.body[0].lineno, node.end_lineno, [
                docstring + "\n",
                f'{indent}raise NotImplementedError("{qualname}: yours to write")\n']))
        for statement in node.body if node.name == "__init__" else ():
            targets = getattr(statement, "targets", [])
            if any(getattr(t, "attr", None) in DERIVED.get(module, ()) for t in targets):
                edits.append((statement.lineno, statement.end_lineno, []))
    for first, last, replacement in sorted(edits, reverse=True):
        lines[first - 1:last] = replacement
    return "".join(lines)


def _functions(tree):
    """(node, qualified name) of the module's functions and its classes' methods."""
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            yield node, node.name
        elif isinstance(node, ast.ClassDef):
            yield from ((f, f"{node.name}.{f.name}") for f in node.body
                        if isinstance(f, ast.FunctionDef))


def student_copy(folder, blank_modules=False):
    """The repository's tracked files, less the answers, into a new folder; with blank_modules,
    the modules' answers blanked too."""
    if os.path.exists(folder):
        raise SystemExit(f"error: {folder} exists: name a new folder for the student copy")
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode:
        raise SystemExit("error: the student copy is made from a git checkout of the project")
    blanked = {f"{module}.py" for module, _, _, _ in ANSWERS} if blank_modules else set()
    left_out = LEFT_OUT + (BLANKED_LEAVES_OUT if blank_modules else ())
    for path in listed.stdout.splitlines():
        if path not in left_out and os.path.exists(os.path.join(ROOT, path)):
            os.makedirs(os.path.join(folder, os.path.dirname(path)), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, path), os.path.join(folder, path))
            if path in blanked:
                with open(os.path.join(ROOT, path)) as f:
                    source = blank_source(path.removesuffix(".py"), f.read())
                with open(os.path.join(folder, path), "w") as f:
                    f.write(source)
    print(f"wrote the student copy to {folder} (left out: {', '.join(left_out)}"
          + (f"; blanked: {len(ANSWERS)} functions in {', '.join(sorted(blanked))})"
             if blank_modules else ")"))


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
    """Replace every project function that answers an exercise (ANSWERS), wherever a module
    holds it, by one that raises NotImplementedError; make solutions.py unimportable."""
    def blank(*args, **kwargs):
        raise NotImplementedError("blanked for grading: write your own")
    functions = []
    for module, qualname, _, _ in ANSWERS:
        owner = importlib.import_module(module)
        *classes, name = qualname.split(".")
        for cls in classes:
            owner = getattr(owner, cls)
        if classes:
            setattr(owner, name, blank)
        else:
            functions.append(getattr(owner, name))
    for module in list(sys.modules.values()):
        for name, value in list(vars(module).items() if module else ()):
            if any(value is f for f in functions):
                setattr(module, name, blank)
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
    parser.add_argument("--blank-modules", action="store_true",
                        help="student-copy: blank the modules' answers too (ANSWERS)")
    args = parser.parse_args(argv)
    if args.what == "expected":
        return write_expected([int(s) for s in args.seeds.split(",")])
    if args.what == "student-copy":
        if not args.folder:
            raise SystemExit("error: name the folder: grade.py student-copy DIR")
        return student_copy(args.folder, args.blank_modules)
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
