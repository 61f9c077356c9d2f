"""notebooks/grade.py: each student is marked on seeds of their own, in a process and a copy of
their own; the worked answers score full marks, the blank notebooks, answers that borrow the
project's functions and every known cheat score nothing; marks are per case; the student copy
leaves the answers out (and, asked to, blanks them in the modules)."""
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


def test_stored_outputs_are_the_projects_own():
    answers = grade.references()
    for name, outputs in exercises.load_expected().items():
        for seed, stored in outputs.items():
            assert exercises.verdict(name, answers[name], seed, stored, atol=1e-6)[0], name
    assert set(exercises.load_expected()) == set(exercises.EXERCISES)


def test_each_student_is_marked_on_seeds_of_their_own():
    alice, bob = grade.student_seeds("s3cret", "alice"), grade.student_seeds("s3cret", "bob")
    assert alice == grade.student_seeds("s3cret", "alice") and len(set(alice + bob)) == 6
    assert grade.student_seeds("other", "alice") != alice
    assert exercises.PUBLIC_SEED not in alice + bob
    shown = exercises.inputs("q_sample", exercises.PUBLIC_SEED)[1]
    assert not any(exercises.inputs("q_sample", seed)[1].equal(shown) for seed in alice)


def totals(marks):
    return {student: sum(points for points, _ in m.values()) for student, m in marks.items()}


BORROWED = [  # the project's own functions, and the key
    """
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


        def my_ddim_step(schedule, x_t, eps, t, t_prev):
            process = GaussianDiffusion(schedule.betas, clip_x0="none")
            return process.ddim_sample(lambda x, t: eps, x_t, t, t_prev)


        def my_drop_condition(c, u, p_uncond):
            torch.manual_seed(0)
            return decoders_copy(c, p_uncond)
        """, "from solutions import reparameterise as my_reparameterise, clip_logits",
    "my_clip_logits = clip_logits"]


def test_marks(tmp_path):
    submission(tmp_path, "worked", *worked_answers())
    blank_cells = [nbformat.read(os.path.join(NOTEBOOKS, f), as_version=4).cells
                   for f in sorted(os.listdir(NOTEBOOKS)) if f.endswith(".ipynb")]
    submission(tmp_path, "blank", *[c.source for cells in blank_cells for c in cells
                                    if c.cell_type == "code"])
    submission(tmp_path, "borrowed", *BORROWED)
    marks = grade.grade(str(tmp_path), secret="s3cret")
    assert {name: points for name, (points, _) in marks["worked"].items()} == {
        name: points for name, (_, points, _, _) in exercises.EXERCISES.items()}
    assert totals(marks) == {"worked": TOTAL, "blank": 0, "borrowed": 0}
    assert "the project's diffusion" in marks["borrowed"]["q_sample"][1]
    assert marks["blank"]["q_sample"][1].startswith("not answered yet")


def test_the_copy_blanks_every_answer_the_reading_would_let_through(tmp_path, monkeypatch):
    monkeypatch.setattr(grade, "_reason", lambda *args: None)  # no flags: the copy alone holds
    submission(tmp_path, "borrowed", *BORROWED)
    marks = grade.grade(str(tmp_path), secret="s3cret")["borrowed"]
    assert totals({"borrowed": marks}) == {"borrowed": 0}, marks
    assert marks["q_sample"][1].startswith("not answered yet")  # blanked: it raises
    assert marks["frechet_distance"][1].startswith("not answered yet")


CHEATS = {  # the first three scored 45 / 45 before the sandbox, and after the vandal an honest
    # student scored 0 / 45 (docs/testing.md)
    "judge": ["import exercises",  # replaces the judge
              'my_judge = setattr(exercises, "verdict", lambda *a, **k: (True, "right"))',
              "\n".join(f"my_{name} = len" for name in exercises.EXERCISES)],
    "exec_solutions": ["import torch, math\nimport torch.nn.functional as F",  # runs the key
                       'my_ns = exec(open("notebooks/solutions.py").read(), globals())',
                       "\n".join(f"my_{name} = {name}" for name in exercises.EXERCISES)],
    "reload": ["import importlib\nimport importlib.machinery",  # the grader's own references
               "my_all = importlib.machinery.SourceFileLoader('g', 'notebooks/grade.py')"
               ".load_module().references()",
               "\n".join(f'my_{name} = my_all["{name}"]' for name in exercises.EXERCISES)],
    "vandal": ["import torch", 'my_x = torch.save({}, "notebooks/expected/hidden.pt")'],
    "through_torch": ["import torch", "def my_slerp(a, b, theta):\n"  # sys without importing it
                      "    return torch.sys.modules['unclip'].slerp(a, b, theta)"],
}


def test_cheats_score_nothing_and_leave_the_others_marks_alone(tmp_path):
    for student, cells in CHEATS.items():
        submission(tmp_path, student, *cells)
    submission(tmp_path, "zoe", *worked_answers())  # marked after every cheat
    marks = grade.grade(str(tmp_path), secret="s3cret")
    assert totals(marks) == {**{student: 0 for student in CHEATS}, "zoe": TOTAL}
    assert marks["judge"]["my_judge"] == (0, "not run: it uses setattr")
    assert marks["exec_solutions"]["my_ns"][1] in ("not run: it uses exec", "not run: it uses open")
    assert marks["reload"]["slerp"][1] == "not run: my_all, which it uses: it uses importlib"
    assert marks["through_torch"]["slerp"][1] == (
        "not run: it reaches for sys through another module")


def test_a_submission_runs_in_a_copy_of_its_own(tmp_path, monkeypatch):
    # Even code the reading lets through cannot reach the next student: here the flags on files
    # are off, and the vandal overwrites the checker it is run with, in its own copy.
    monkeypatch.setattr(grade, "FILE_ATTRIBUTES", set())
    submission(tmp_path, "vandal", "import numpy",
               'my_gaussian_kl = numpy.savetxt("notebooks/exercises.py", [0])')
    submission(tmp_path, "zoe", *worked_answers())
    before = open(os.path.join(NOTEBOOKS, "exercises.py")).read()
    assert totals(grade.grade(str(tmp_path), secret="s3cret")) == {"vandal": 0, "zoe": TOTAL}
    assert open(os.path.join(NOTEBOOKS, "exercises.py")).read() == before


def test_an_honest_notebook_keeps_its_constants_and_its_own_helpers(tmp_path):
    submission(tmp_path, "honest", """
        import torch
        HALF = 0.5  # a constant of the notebook's, used by an answer
        """, """
        def gaussian_kl(mean, logvar):  # the student's helper, named as the project's function
            return HALF * (mean ** 2 + logvar.exp() - 1 - logvar).sum(1)
        my_gaussian_kl = gaussian_kl
        def my_reparameterise(mean, logvar, eps):
            return mean + (HALF * logvar).exp() * eps
        """, "from vae import gaussian_kl  # a later cell imports the project's: no rebinding",
        "model = train_stage('vae', 100)  # training is not re-run")
    marks = grade.grade(str(tmp_path), secret="s3cret")["honest"]
    assert marks["gaussian_kl"] == (2, "right") and marks["reparameterise"] == (1, "right")


def test_marks_are_per_case_and_say_which_case_is_wrong(tmp_path):
    # Right everywhere but the last step to x_0 (t_prev = -1), case 0 of 4 on every seed.
    submission(tmp_path, "edge", "import torch", """
        def my_ddim_step(diffusion, x_t, eps, t, t_prev):
            shape = (-1, *[1] * (x_t.dim() - 1))
            abar = diffusion.alphas_cumprod[t].view(shape)
            abar_prev = diffusion.alphas_cumprod[t_prev].view(shape)  # wrong at -1: abar_{T-1}
            x0 = (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()
            return abar_prev.sqrt() * x0 + (1 - abar_prev).sqrt() * eps
        """)
    points, message = grade.grade(str(tmp_path), secret="s3cret")["edge"]["ddim_step"]
    assert points == pytest.approx(3 * 3 / 4)
    assert "1 of 4 cases wrong (case 0 (t_prev = -1, the step to x_0))" in message, message


def test_marking_needs_a_secret_unless_the_published_seeds_are_asked_for(tmp_path, capsys):
    submission(tmp_path, "alice", *worked_answers())
    with pytest.raises(SystemExit, match="no secret"):
        grade.main([str(tmp_path)])
    (tmp_path / "secret").write_text("")
    with pytest.raises(SystemExit, match="no secret in"):
        grade.main([str(tmp_path), "--secret-file", str(tmp_path / "secret")])
    grade.main([str(tmp_path), "--published-seeds"])
    assert "warning: marking with the published seeds" in capsys.readouterr().out


def test_a_partly_right_answer_gets_its_share(tmp_path):
    # Right on the first published seed's inputs only: a third of the points.
    submission(tmp_path, "lucky", """
        import torch
        def my_normalise_embedding(z):
            right = z / z.norm(dim=-1, keepdim=True) * z.shape[-1] ** 0.5
            return right if abs(z[0, 0].item() - SEED_ONE) < 1e-6 else 2 * right
        """.replace("SEED_ONE", repr(exercises.inputs("normalise_embedding", 1)[0][0, 0].item())))
    marks = grade.grade(str(tmp_path))["lucky"]  # no secret: the published seeds 1, 2, 3
    assert marks["normalise_embedding"][0] == pytest.approx(1 / 3)
    assert totals({"lucky": marks})["lucky"] == pytest.approx(1 / 3)


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
    assert not any((blanked / path).exists() for path in grade.BLANKED_LEAVES_OUT)
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



def test_every_exercise_cell_states_what_is_graded():
    for notebook in sorted({notebook for notebook, *_ in exercises.EXERCISES.values()}):
        cells = nbformat.read(os.path.join(NOTEBOOKS, f"{notebook}.ipynb"), as_version=4).cells
        text = "\n".join(c.source for c in cells if c.cell_type == "markdown")
        assert "**What is graded.**" in text and "assignments without a call" in text, notebook
        for name, (owner, points, _, _) in exercises.EXERCISES.items():
            stated = f"*Graded: `my_{name}`, {points} point{'s' if points > 1 else ''}.*"
            assert (stated in text) == (owner == notebook), (notebook, name)
