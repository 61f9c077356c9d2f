"""notebooks/grade.py: marks come from stored outputs on hidden seeds, the worked answers score
full marks, the blank notebooks and answers that borrow the project's own functions score
nothing, and the student copy leaves the answers out (and, asked to, blanks them in the
modules)."""
import ast
import inspect
import os
import re
import subprocess
import sys
import textwrap

import nbformat
import pytest
import torch

NOTEBOOKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "notebooks")
sys.path.insert(0, NOTEBOOKS)
import exercises  # noqa: E402
import grade  # noqa: E402
import solutions  # noqa: E402

TOTAL = sum(points for _, points, _, _ in exercises.EXERCISES.values())


def submission(folder, student, *cells):
    """A student's folder holding one notebook with these code cells."""
    os.makedirs(folder / student)
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(textwrap.dedent(c))
                                               for c in cells])
    nbformat.write(notebook, str(folder / student / "answers.ipynb"))


def worked_answers():
    """solutions.py as a student would write it in the notebooks: one cell per my_* function."""
    cells = ["import math\nimport torch\nimport torch.nn.functional as F"]
    for name in exercises.EXERCISES:
        source = inspect.getsource(getattr(solutions, name))
        cells.append(re.sub(rf"\b({'|'.join(exercises.EXERCISES)})\(", r"my_\1(", source))
    return cells


@pytest.mark.parametrize("which", ["public", "hidden"])
def test_stored_outputs_are_the_projects_own(which):
    answers = grade.references()
    for name, outputs in exercises.load_expected(which).items():
        for seed, stored in outputs.items():
            assert exercises.verdict(name, answers[name], seed, stored, atol=1e-6)[0], name
    assert set(exercises.load_expected(which)) == set(exercises.EXERCISES)
    if which == "hidden":  # the marks do not come from the seed the notebooks show
        assert exercises.PUBLIC_SEED not in exercises.load_expected(which)["q_sample"]


def test_hidden_inputs_differ_from_the_public_ones():
    public, hidden = exercises.load_expected(), exercises.load_expected("hidden")
    for name in exercises.EXERCISES:
        shown = public[name][exercises.PUBLIC_SEED]
        assert all(not (h.shape == shown.shape and h.equal(shown)) for h in hidden[name].values())


def test_marks(tmp_path):
    submission(tmp_path, "worked", *worked_answers())
    blank_cells = [nbformat.read(os.path.join(NOTEBOOKS, f), as_version=4).cells
                   for f in sorted(os.listdir(NOTEBOOKS)) if f.endswith(".ipynb")]
    submission(tmp_path, "blank", *[c.source for cells in blank_cells for c in cells
                                    if c.cell_type == "code"])
    submission(tmp_path, "borrowed", """
        import clip, prior, unclip, vae
        from diffusion import GaussianDiffusion, classifier_free_guidance, drop_condition
        from upsample import Upsampler
        from decoder import drop_condition as decoders_copy
        my_gaussian_kl = vae.gaussian_kl
        my_reparameterise = vae.reparameterise
        from vqvae import straight_through as my_straight_through
        my_contrastive_loss = clip.contrastive_loss
        my_normalise_embedding = clip.normalise_embedding
        my_select_candidates = prior.select_candidates
        from decoder import embedding_context as my_embedding_context
        my_slerp = unclip.slerp
        from unclip import text_diff as my_text_diff
        from evaluate import frechet_distance as my_frechet_distance
        """, """
        def my_q_sample(schedule, x0, t, noise):
            return GaussianDiffusion(schedule.betas).q_sample(x0, t, noise)


        def my_q_posterior_mean(schedule, x0, x_t, t):
            return GaussianDiffusion(schedule.betas).q_posterior(x0, x_t, t)[0]


        def my_ddpm_loss(model_fn, s, x0, t, noise):
            return (noise - model_fn(GaussianDiffusion(s.betas).q_sample(x0, t, noise), t)).pow(2).mean()


        def my_ddim_step(schedule, x_t, eps, t, t_prev):
            process = GaussianDiffusion(schedule.betas, clip_x0="none")
            return process.ddim_sample(lambda x, t: eps, x_t, t, t_prev)


        def my_prior_loss(model_fn, s, z_i, t, noise):
            return GaussianDiffusion(s.betas, "x0", "none").training_loss(model_fn, z_i, t, noise)


        def my_drop_condition(c, u, p_uncond):
            torch.manual_seed(0)
            return decoders_copy(c, p_uncond)
        """, "from solutions import reparameterise as my_reparameterise, clip_logits",
        "my_clip_logits = clip_logits")
    marks = grade.grade(str(tmp_path))
    assert marks["worked"] == {name: points for name, (_, points, _, _)
                               in exercises.EXERCISES.items()}
    assert sum(marks["worked"].values()) == TOTAL
    assert sum(marks["blank"].values()) == 0
    assert sum(marks["borrowed"].values()) == 0


def test_a_partly_right_answer_gets_its_share(tmp_path):
    # Right on the first hidden seed's inputs only: a third of the points.
    submission(tmp_path, "lucky", """
        import torch
        def my_normalise_embedding(z):
            right = z / z.norm(dim=-1, keepdim=True) * z.shape[-1] ** 0.5
            return right if abs(z[0, 0].item() - SEED_ONE) < 1e-6 else 2 * right
        """.replace("SEED_ONE", repr(exercises.inputs("normalise_embedding", 1)[0][0, 0].item())))
    marks = grade.grade(str(tmp_path))["lucky"]
    assert marks["normalise_embedding"] == pytest.approx(1 / 3)
    assert sum(marks.values()) == pytest.approx(1 / 3)


def test_student_copy_leaves_out_the_answers(tmp_path):
    if subprocess.run(["git", "-C", grade.ROOT, "rev-parse"], capture_output=True).returncode:
        pytest.skip("the student copy is made from a git checkout")
    copy = tmp_path / "copy"
    grade.student_copy(str(copy))
    for left_out in grade.LEFT_OUT:
        assert not (copy / left_out).exists()
    for kept in ("notebooks/exercises.py", "notebooks/expected/public.pt",
                 "notebooks/03_ddpm.ipynb", "diffusion.py"):
        assert (copy / kept).exists()
    with pytest.raises(SystemExit, match="exists"):
        grade.student_copy(str(copy))
    blanked = tmp_path / "blanked"
    grade.student_copy(str(blanked), blank_modules=True)
    assert not (blanked / "bench/mutations.py").exists()
    with open(blanked / "diffusion.py") as copied, open(os.path.join(grade.ROOT,
                                                                   "diffusion.py")) as original:
        assert copied.read() == grade.blank_source("diffusion", original.read())


def _definitions(tree):
    """{qualified name: source} of a module's functions and methods."""
    return {name: ast.unparse(node) for node, name in grade._functions(tree)}


@pytest.mark.parametrize("module", sorted({m for m, _, _, _ in grade.ANSWERS}))
def test_blanking_a_module_leaves_each_answer_a_task_and_the_rest_as_it_was(module):
    with open(os.path.join(grade.ROOT, f"{module}.py")) as f:
        source = f.read()
    blanked = grade.blank_source(module, source)
    before, after = _definitions(ast.parse(source)), _definitions(ast.parse(blanked))
    answers = {q for m, q, _, _ in grade.ANSWERS if m == module}
    assert before.keys() == after.keys()
    for name in answers:
        node = next(n for n, q in grade._functions(ast.parse(blanked)) if q == name)
        docstring, last = node.body
        assert docstring.value.value.startswith("Yours to write") and isinstance(last, ast.Raise)
    derived = grade.DERIVED.get(module, ())
    for name in before.keys() - answers:
        if name.endswith("__init__"):  # the derived coefficients are gone, nothing else
            tree = ast.parse(textwrap.dedent(before[name]))
            tree.body[0].body = [s for s in tree.body[0].body if not any(
                getattr(t, "attr", None) in derived for t in getattr(s, "targets", []))]
            assert after[name] == ast.unparse(tree), name
        else:
            assert after[name] == before[name], name
    assert not any(name in blanked for name in derived)
    exec(compile(blanked, f"{module}.py", "exec"), {"__name__": module})  # still imports


def test_a_blanked_answer_says_whose_it_is():
    namespace = {}
    with open(os.path.join(grade.ROOT, "vae.py")) as f:
        exec(grade.blank_source("vae", f.read()), namespace)
    with pytest.raises(NotImplementedError, match="gaussian_kl: yours to write"):
        namespace["gaussian_kl"](torch.zeros(2, 3), torch.zeros(2, 3))
    assert "notebook 01_autoencoders, exercise gaussian_kl" in namespace["gaussian_kl"].__doc__


def test_every_notebooks_questions_have_answers():
    with open(os.path.join(NOTEBOOKS, "ANSWERS.md")) as f:
        key = f.read().split("\n## ")[1:]  # one section per notebook, in order
    names = sorted(f for f in os.listdir(NOTEBOOKS) if f.endswith(".ipynb"))
    assert len(key) == len(names)
    for name, answers in zip(names, key):
        cells = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4).cells
        questions = [c.source for c in cells if c.source.startswith("## Questions")]
        asked = re.findall(r"^\d+\. (.+)$", questions[0], re.M)
        assert 3 <= len(asked) <= 5, name
        answered = re.findall(r"^\d+\. \*(.+?)\*$", answers, re.M | re.S)
        assert [" ".join(a.split()) for a in answered] == asked, name

