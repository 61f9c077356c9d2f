"""Grading the notebooks' exercises: the instructor's command.

    python notebooks/grade.py student-copy DIR [--blank-modules]   # the copy to hand out
    python notebooks/grade.py SUBMISSIONS --secret-file SECRET [--csv marks.csv]
    python notebooks/grade.py expected          # the public outputs the notebooks check against

A submission is a student's folder of notebooks (or one .ipynb; the student is its name). Marks
come only from work, for five reasons:

1. Each student's answers are marked on inputs made from three seeds of their own, derived from
   the instructor's secret (SECRET, a file that never leaves the instructor) and the student's
   name, so no table of outputs made in advance can match them. The published seeds (1, 2, 3)
   are used only when asked for (--published-seeds), with a warning.
2. The right outputs are computed here, from the project's own functions, before any
   submission runs.
3. A submission's code runs in a separate process, in a temporary copy of the project's modules
   whose answers are blanked in the source (as `student-copy --blank-modules` blanks them), with
   no solutions, no grader and no .git; it is handed the seeds, writes its outputs, and this
   process compares them. Each student gets a fresh copy.
4. What runs is what an answer needs: each notebook's imports (of torch, numpy, math, the
   standard helpers and the project), its function and class definitions, its `my_*`
   assignments and its constants (assignments without a call); imports first, so a later
   import cannot rebind a student's helper. Code that reaches for a reference (exec, eval,
   open, importlib, sys, os, setattr, files, dunder attributes, imports inside a function, or
   the project's modules used inside an answer) is flagged with the reason and not run.
5. Each exercise is marked case by case (a row of its output: one image, one timestep) on each
   seed: its points times the share of cases right, and a message says which case differs and
   by how much, or what the answer raised.

The student copy leaves out solutions.py, this grader, ANSWERS.md (the key to the questions that
close each notebook) and the two test files that read solutions.py. It keeps the modules whole:
they are the course's text. With --blank-modules each function that answers an exercise
(ANSWERS below) keeps its signature, its docstring gives way to the task, its body to `raise
NotImplementedError`, and the coefficients the student derives are gone; a notebook then runs
as far as the functions written so far carry it.
"""
import argparse
import ast
import csv
import glob
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import textwrap

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)
import exercises  # noqa: E402

LEFT_OUT = ("notebooks/solutions.py", "notebooks/grade.py",  # from the student copy
            "notebooks/ANSWERS.md",
            "tests/test_notebooks.py", "tests/test_grading.py")  # these two read solutions.py
PUBLISHED_SEEDS = (1, 2, 3)  # anyone can compute their outputs: practice marking only

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
BLANKED_LEAVES_OUT = ("bench/mutations.py", "notebooks/labs.py")  # they quote the answers


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


def write_expected():
    """expected/public.pt: seed 0's outputs, what the notebooks check against."""
    answers = references()
    os.makedirs(exercises.EXPECTED, exist_ok=True)
    stored = {name: {exercises.PUBLIC_SEED: exercises.run(name, answers[name],
                                                          exercises.PUBLIC_SEED).detach()}
              for name in exercises.EXERCISES}
    torch.save(stored, os.path.join(exercises.EXPECTED, "public.pt"))
    print(f"wrote {exercises.EXPECTED}/public.pt (seed {exercises.PUBLIC_SEED})")


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


def copy_files(paths, folder, blank):
    """Copy ROOT's files at these relative paths into folder, the answer modules blanked when
    `blank` (ANSWERS, blank_source)."""
    blanked = {f"{module}.py" for module, _, _, _ in ANSWERS} if blank else set()
    for path in paths:
        os.makedirs(os.path.join(folder, os.path.dirname(path)), exist_ok=True)
        with open(os.path.join(ROOT, path), "rb") as f:
            content = f.read()
        if path in blanked:
            content = blank_source(path.removesuffix(".py"), content.decode()).encode()
        with open(os.path.join(folder, path), "wb") as f:
            f.write(content)


def student_copy(folder, blank_modules=False):
    """The repository's tracked files, less the answers, into a new folder; with blank_modules,
    the modules' answers blanked too."""
    if os.path.exists(folder):
        raise SystemExit(f"error: {folder} exists: name a new folder for the student copy")
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode:
        raise SystemExit("error: the student copy is made from a git checkout of the project")
    left_out = LEFT_OUT + (BLANKED_LEAVES_OUT if blank_modules else ())
    copy_files([path for path in listed.stdout.splitlines() if path not in left_out
                and os.path.exists(os.path.join(ROOT, path))], folder, blank_modules)
    print(f"wrote the student copy to {folder} (left out: {', '.join(left_out)}"
          + (f"; blanked: {len(ANSWERS)} functions in {len({m for m, *_ in ANSWERS})} modules)"
             if blank_modules else ")"))


# ----------------------------------------------------------------------------------------------
# Reading a submission: what runs, and what is flagged.

SAFE_IMPORTS = {"math", "torch", "numpy", "functools", "itertools", "collections", "typing",
                "dataclasses"}
PROJECT = {os.path.basename(p).removesuffix(".py") for p in glob.glob(f"{ROOT}/*.py")} | {
    "exercises", "course"}
FORBIDDEN_NAMES = {"exec", "eval", "compile", "open", "__import__", "globals", "locals", "vars",
                   "setattr", "delattr", "getattr", "breakpoint", "input", "__builtins__"}
FILE_ATTRIBUTES = {"load", "save", "hub", "fromfile", "tofile", "loadtxt", "savetxt", "savez",
                   "memmap"}
MODULE_ATTRIBUTES = {"os", "sys", "subprocess", "importlib", "builtins", "io", "pathlib", "shutil",
                     "inspect", "pickle", "ctypes", "runpy", "glob", "socket", "marshal", "types"}


def _free_names(node):
    """The names a definition reads from outside itself: not its arguments, not what it binds."""
    local = {n.arg for n in ast.walk(node) if isinstance(n, ast.arg)} | {
        n.id for n in ast.walk(node) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)}
    if isinstance(node, ast.Assign):  # `my_x = ...` reads its value's names, whatever it binds
        local = {n for n in local if not any(t.id == n for t in node.targets)}
    return [n.id for n in ast.walk(node) if isinstance(n, ast.Name) and n.id not in local]


def _reason(node, foreign, project, own):
    """Why a definition or assignment cannot be run for marks, or None. `own`: the names the
    notebook defines, which win over any import (the imports run first)."""
    for name in _free_names(node):
        if name in own:
            continue
        if name in FORBIDDEN_NAMES:
            return f"it uses {name}"
        if name in foreign:
            return f"it uses {foreign[name]}"
        if name in project:
            return (f"it uses the project's {project[name]} (answers are written with torch, "
                    "numpy, math and your own functions)")
    for n in ast.walk(node):
        if isinstance(n, (ast.Import, ast.ImportFrom)):
            return "it imports inside a function"
        if isinstance(n, ast.Attribute) and n.attr.startswith("__") and n.attr != "__init__":
            return f"it reaches for {n.attr}"
        if isinstance(n, ast.Attribute) and n.attr in FILE_ATTRIBUTES:
            return f"it reads or writes files (.{n.attr})"
        if isinstance(n, ast.Attribute) and n.attr in MODULE_ATTRIBUTES:  # torch.sys, numpy.os
            return f"it reaches for {n.attr} through another module"
    return None


def read_answers(notebook_path):
    """(statements, flags) of a notebook: the code that defines its answers, imports first, and
    {my_NAME: why it is not run} for the answers that reach for a reference."""
    with open(notebook_path) as f:
        cells = [c for c in json.load(f)["cells"] if c["cell_type"] == "code"]
    imports, definitions = [], {}  # definitions: name -> its def, class or assignment
    foreign, project = {}, {}      # name -> the module it was imported from
    for cell in cells:
        lines = "".join(cell["source"]).splitlines()
        try:  # IPython's magics (%) and shell lines (!) are not Python: blank them
            tree = ast.parse("\n".join("" if ln.lstrip()[:1] in ("%", "!") else ln
                                       for ln in lines))
        except SyntaxError:
            continue  # a cell that does not parse defines nothing
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for alias in node.names:  # one import statement per name, the safe ones kept
                    module = (getattr(node, "module", None) or alias.name).split(".")[0]
                    name = (alias.asname or alias.name).split(".")[0]
                    if (module not in SAFE_IMPORTS | PROJECT or getattr(node, "level", 0)
                            or alias.name == "*"):  # a star import hides what it binds
                        foreign[name] = module or "a relative import"
                        continue
                    if module in PROJECT:
                        project[name] = module
                    one = ast.Import([alias]) if isinstance(node, ast.Import) else (
                        ast.ImportFrom(node.module, [alias], 0))
                    imports.append(ast.unparse(one))
            elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                definitions[node.name] = node
            elif isinstance(node, ast.Assign) and all(isinstance(t, ast.Name)
                                                      for t in node.targets):
                names = [t.id for t in node.targets]
                if any(n.startswith("my_") for n in names) or not any(
                        isinstance(n, ast.Call) for n in ast.walk(node.value)):
                    definitions.update({name: node for name in names})
    flags = {}
    for name in definitions:  # an answer is flagged when anything it reaches is
        seen, todo = set(), [name]
        while todo and name not in flags:
            current = todo.pop()
            if current in seen or current not in definitions:
                continue
            seen.add(current)
            reason = _reason(definitions[current], foreign, project, definitions)
            if reason:
                flags[name] = reason if current == name else f"{current}, which it uses: {reason}"
            todo += _free_names(definitions[current])
    kept = dict.fromkeys(node for name, node in definitions.items() if name not in flags)
    statements = list(dict.fromkeys(imports)) + [ast.unparse(node) for node in kept]
    return statements, {n: r for n, r in flags.items() if n.startswith("my_")}


# ----------------------------------------------------------------------------------------------
# Marking: the right outputs here, each submission's in a process and a copy of its own.

def student_seeds(secret, student):
    """Three seeds of the student's own, from the instructor's secret and the student's name."""
    digest = hashlib.sha256(f"{secret}\n{student}".encode()).digest()
    return [int.from_bytes(digest[4 * i:4 * i + 4], "big") % (2 ** 31 - 1) + 1 for i in range(3)]


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


def run_submission(notebooks, seeds, timeout):
    """(outputs, flags): {name: {seed: output or what stopped it}} from the student's code, run
    in a fresh process on a fresh copy of the blanked modules, and {my_NAME: why not run}; or
    (None, why) when the process failed or ran out of time."""
    answers, flags = {}, {}
    for path in notebooks:
        answers[os.path.basename(path).removesuffix(".ipynb")], flagged = read_answers(path)
        flags.update(flagged)
    with tempfile.TemporaryDirectory(prefix="grading-") as copy:
        copy_files([os.path.basename(p) for p in glob.glob(f"{ROOT}/*.py")]
                   + ["notebooks/exercises.py", "notebooks/course.py"], copy, blank=True)
        with open(os.path.join(copy, "answers.json"), "w") as f:
            json.dump(answers, f)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        try:
            done = subprocess.run([sys.executable, "notebooks/exercises.py", "answers.json",
                                   json.dumps(seeds), "outputs.pt"], cwd=copy, env=env,
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return None, f"it ran past {timeout} s"
        if done.returncode or not os.path.exists(os.path.join(copy, "outputs.pt")):
            lines = done.stderr.strip().splitlines()
            return None, lines[-1] if lines else "it stopped with no output"
        return torch.load(os.path.join(copy, "outputs.pt"), weights_only=True), flags


def mark(outputs, flags, expected):
    """{name: (points, message)} for one student's outputs, and {my_NAME: (0, why)} for the
    other my_* names that were flagged."""
    marks = {}
    for name, (_, points, _, _) in exercises.EXERCISES.items():
        if f"my_{name}" in flags:
            marks[name] = (0.0, f"not run: {flags[f'my_{name}']}")
            continue
        shares, messages = [], []
        for seed, right_output in expected[name].items():
            got = outputs.get(name, {}).get(seed, "no output")
            right, message = exercises.compare(name, got, right_output)
            shares.append(sum(right) / len(right))
            messages.append(message)
        wrong = [m for m in messages if m != "right"]
        marks[name] = (points * sum(shares) / len(shares), "right" if not wrong else wrong[0]
                       + (f" (on {len(wrong)} of {len(messages)} seeds)" if len(set(messages)) > 1
                          else ""))
    for name, reason in flags.items():  # flagged my_* names that answer no exercise, reported
        if name.removeprefix("my_") not in exercises.EXERCISES:
            marks[name] = (0.0, f"not run: {reason}")
    return marks


def grade(folder, secret=None, timeout=300):
    """Mark every submission: {student: {name: (points, message)}}. Without a secret, the
    published seeds."""
    submissions = find_submissions(folder)
    seeds = {s: student_seeds(secret, s) if secret else list(PUBLISHED_SEEDS) for s in submissions}
    answers = references()  # every right output, before any submission runs
    expected = {s: {name: {seed: exercises.run(name, answers[name], seed).detach()
                           for seed in seeds[s]} for name in exercises.EXERCISES}
                for s in submissions}
    results = {}
    for student, notebooks in submissions.items():
        outputs, flags = run_submission(notebooks, seeds[student], timeout)
        if outputs is None:  # flags holds why
            results[student] = {name: (0.0, f"could not be marked: {flags}")
                                for name in exercises.EXERCISES}
        else:
            results[student] = mark(outputs, flags, expected[student])
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", help="a folder of submissions | student-copy | expected")
    parser.add_argument("folder", nargs="?", help="student-copy: the folder to write")
    parser.add_argument("--secret-file", help="a file holding your secret: each student's seeds")
    parser.add_argument("--published-seeds", action="store_true",
                        help="mark with seeds 1, 2, 3, which anyone can know (practice only)")
    parser.add_argument("--csv", help="also write the marks to this CSV file")
    parser.add_argument("--blank-modules", action="store_true",
                        help="student-copy: blank the modules' answers too (ANSWERS)")
    args = parser.parse_args(argv)
    if args.what == "expected":
        return write_expected()
    if args.what == "student-copy":
        if not args.folder:
            raise SystemExit("error: name the folder: grade.py student-copy DIR")
        return student_copy(args.folder, args.blank_modules)
    if not os.path.isdir(args.what):
        raise SystemExit(f"error: {args.what} is not a folder of submissions (or 'expected', "
                         "'student-copy')")
    secret = None
    if args.secret_file:
        secret = open(args.secret_file).read().strip() if os.path.isfile(args.secret_file) else ""
        if not secret:
            raise SystemExit(f"error: no secret in {args.secret_file}: write one there, e.g. "
                             f"python -c 'import secrets; print(secrets.token_hex(16))' > "
                             f"{args.secret_file}")
    elif not args.published_seeds:
        raise SystemExit("error: no secret: pass --secret-file FILE (each student's seeds come "
                         "from it), or --published-seeds for practice marks anyone can game")
    else:
        print(f"warning: marking with the published seeds {PUBLISHED_SEEDS}: a table of their "
              "outputs made in advance scores full marks")
    results = grade(args.what, secret)
    total = sum(points for _, points, _, _ in exercises.EXERCISES.values())
    for student, marks in results.items():
        print(f"{student}: {sum(p for p, _ in marks.values()):g} / {total}")
        for name, (points, message) in marks.items():
            if message != "right":
                out_of = f" / {exercises.EXERCISES[name][1]}" if name in exercises.EXERCISES else ""
                print(f"  {name} {points:.3g}{out_of}: {message}")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["student", *exercises.EXERCISES, "total"])
            for student, marks in results.items():
                points = [round(marks[name][0], 4) for name in exercises.EXERCISES]
                writer.writerow([student, *points, round(sum(points), 4)])
        print(f"wrote {args.csv}")


if __name__ == "__main__":
    main()
