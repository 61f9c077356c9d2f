"""notebooks/: every notebook runs top to bottom in fast mode (UNCLIP_FAST=1), and every
exercise checker says "right" to the worked answer and "not yet right" to wrong ones."""
import os
import sys

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "notebooks")
sys.path.insert(0, NOTEBOOKS)
import exercises  # noqa: E402
import solutions  # noqa: E402

CHECKERS = [checker for checkers in exercises.CHECKERS.values() for checker in checkers]


def worked_answer(checker):
    return getattr(solutions, checker.__name__.removeprefix("check_"))


@pytest.mark.parametrize("checker", CHECKERS, ids=lambda c: c.__name__)
def test_checker_says_right_to_the_worked_answer(checker, capsys):
    assert checker(worked_answer(checker))
    assert capsys.readouterr().out.strip().endswith(": right")


@pytest.mark.parametrize("checker", CHECKERS, ids=lambda c: c.__name__)
def test_checker_says_wrong_to_a_wrong_answer_and_waits_for_a_blank_one(checker, capsys):
    answer = worked_answer(checker)

    def off_by_a_little(*inputs):
        out = answer(*inputs)
        return out * 1.01 + 0.01 if out.is_floating_point() else out + 1

    def blank(*inputs):
        raise NotImplementedError
    assert not checker(off_by_a_little)
    assert not checker(blank)
    out = capsys.readouterr().out
    assert "not yet right" in out and "not answered yet" in out


def test_straight_through_checker_wants_the_gradient_too(capsys):
    # Right value, but no gradient reaches z_e: the checker must refuse it.
    assert not exercises.check_straight_through(lambda z_e, z_q: z_q.clone())
    assert "not yet right" in capsys.readouterr().out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One checkpoint folder for all the notebooks, as in a reader's checkout (5's CLIP is 6's)."""
    return str(tmp_path_factory.mktemp("notebook_runs"))


@pytest.mark.parametrize("name", sorted(exercises.CHECKERS))
def test_notebook_runs_top_to_bottom_in_fast_mode(name, runs, monkeypatch):
    monkeypatch.setenv("UNCLIP_FAST", "1")
    monkeypatch.setenv("UNCLIP_RUNS", runs)
    notebook = nbformat.read(os.path.join(NOTEBOOKS, f"{name}.ipynb"), as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": NOTEBOOKS}}).execute()
    printed = "".join(o.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                      for o in cell.outputs)
    # The committed exercises are blank: each check must run and say so.
    assert printed.count("not answered yet") == len(exercises.CHECKERS[name])
    assert "fast mode" in printed
