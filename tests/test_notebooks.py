"""notebooks/: every notebook runs top to bottom in fast mode (UNCLIP_FAST=1), and every
exercise check says "right" to the worked answer and "not yet right" to wrong ones."""
import copy
import os
import sys

import nbformat
import pytest
import torch
from nbclient import NotebookClient
from nbclient.exceptions import DeadKernelError

NOTEBOOKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "notebooks")
sys.path.insert(0, NOTEBOOKS)
import exercises  # noqa: E402
import solutions  # noqa: E402


@pytest.mark.parametrize("name", exercises.EXERCISES)
def test_check_says_right_to_the_worked_answer(name, capsys):
    assert exercises.check(name, getattr(solutions, name))
    assert capsys.readouterr().out.strip() == f"{name}: right"


@pytest.mark.parametrize("name", exercises.EXERCISES)
def test_check_says_wrong_to_a_wrong_answer_and_waits_for_a_blank_one(name, capsys):
    answer = getattr(solutions, name)

    def off_by_a_little(*inputs):
        out = answer(*inputs)
        return out * 1.01 + 0.01 if out.is_floating_point() else out + 1

    def blank(*inputs):
        raise NotImplementedError
    assert not exercises.check(name, off_by_a_little)
    assert not exercises.check(name, blank)
    out = capsys.readouterr().out
    assert "not yet right" in out and "not answered yet" in out


def test_straight_through_check_wants_the_gradient_too(capsys):
    # Right value, but no gradient reaches z_e: the check must refuse it.
    assert not exercises.check("straight_through", lambda z_e, z_q: z_q.clone())
    assert "not yet right" in capsys.readouterr().out


def test_checks_leave_the_readers_random_state_alone():
    state = torch.random.get_rng_state()
    for name in exercises.EXERCISES:
        exercises.inputs(name, 0)
    assert torch.equal(torch.random.get_rng_state(), state)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One checkpoint folder for all the notebooks, as in a reader's checkout (5's CLIP is 6's)."""
    return str(tmp_path_factory.mktemp("notebook_runs"))


def kernel_died(error):
    while error is not None:
        if isinstance(error, DeadKernelError):
            return True
        error = error.__cause__ or error.__context__
    return False


def execute(notebook):
    """Run a copy of the notebook in a fresh kernel and return it. A kernel that dies is started
    once more: on our 2-core machines its ZMQ socket now and then fails outside any cell
    ("Socket operation on non-socket"). An error in a cell is never retried."""
    for attempt in (1, 2):
        run = copy.deepcopy(notebook)
        try:
            NotebookClient(run, timeout=600, kernel_name="python3",
                           resources={"metadata": {"path": NOTEBOOKS}}).execute()
            return run
        except Exception as error:
            if attempt == 2 or not kernel_died(error):
                raise


NOTEBOOK_NAMES = sorted({notebook for notebook, *_ in exercises.EXERCISES.values()})


@pytest.mark.parametrize("name", NOTEBOOK_NAMES)
def test_notebook_runs_top_to_bottom_in_fast_mode(name, runs, monkeypatch):
    monkeypatch.setenv("UNCLIP_FAST", "1")
    monkeypatch.setenv("UNCLIP_RUNS", runs)
    notebook = execute(nbformat.read(os.path.join(NOTEBOOKS, f"{name}.ipynb"), as_version=4))
    printed = "".join(o.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                      for o in cell.outputs)
    # The committed exercises are blank: each check must run and say so.
    assert printed.count("not answered yet") == sum(
        notebook == name for notebook, *_ in exercises.EXERCISES.values())
    assert "fast mode" in printed
