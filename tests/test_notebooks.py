"""notebooks/: every notebook runs top to bottom in fast mode (UNCLIP_FAST=1), and every
exercise check says "right" to the worked answer and "not yet right" to wrong ones."""
import copy
import os
import re
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


def test_each_break_it_lab_changes_one_line_of_its_module_and_shows_the_bug(capsys):
    import labs
    assert sorted(labs.LABS) == list(range(1, 10))
    for week, (path, right, wrong, _, _) in labs.LABS.items():
        with open(os.path.join(labs.ROOT, path)) as f:
            assert f.read().count(right) == 1 and right != wrong, week
    sys.argv = ["labs.py", "9"]  # the quickest: the Frechet distance without its factor 2
    labs.main()
    shown = capsys.readouterr().out
    as_it_is, with_the_bug = shown.split("== with the bug")
    assert "two samples of one Gaussian: 0.033" in as_it_is
    assert "two samples of one Gaussian: 16.036" in with_the_bug
    sys.argv = ["labs.py", "10"]
    with pytest.raises(SystemExit, match="no lab '10'"):
        labs.main()


# Numbers the prose states that no cell prints, each with where it comes from. A number the
# notebook measures belongs in its output, so that the prose and the output cannot disagree.
NOT_PRINTED = {
    "02_vqvae": {"0.99": "a setting, VQVAEConfig.codebook_decay"},
    "03_ddpm": {"0.15": "a setting, diffusion.RING_BLUR", "0.08": "the samples' figure titles",
                "0.07": "the samples' figure titles", "0.25": "the loss curve",
                "0.96": "the score field's figure"},
    "04_guidance": {n: "the fidelity-diversity curves' figure" for n in (
        "3.58", "0.33", "0.95", "0.98", "0.78", "0.66", "0.46", "0.61", "0.87", "3.2", "1.8",
        "3.1")},
    "06_prior": {"0.05": "the loss curve's figure", "2.2": "the AR prior's loss curve"},
    "07_decoder_upsamplers": {"0.1": "a setting, the largest noise of Upsampler.corrupt"},
    "09_real_data": {"0.002": "the fit's largest miss and two of the floor's SDs at 1,000"},
}


def _stated_numbers(markdown):
    """(number as written, its sentence) for each decimal the prose states, outside LaTeX, code
    and section numbers (§3.2)."""
    prose = re.sub(r"\$\$.*?\$\$|\$[^$]*\$", " ", markdown, flags=re.S)
    for sentence in re.split(r"(?<=[.;:!?])\s+(?=[A-Z(*])|\n\n", prose):
        bare = re.sub(r"`[^`]*`|\]\([^)]*\)|§\s?[\d.]+", " ", sentence)
        for number in re.findall(r"(?<![\w.])(\d+\.\d+)(?![\w.]*\d)", bare):
            yield number, sentence


@pytest.mark.parametrize("name", NOTEBOOK_NAMES)
def test_every_number_the_prose_states_is_one_the_notebook_prints(name):
    # Within the prose's rounding; numbers from elsewhere say where (docs/, a command, a paper).
    cells = nbformat.read(os.path.join(NOTEBOOKS, f"{name}.ipynb"), as_version=4).cells
    outputs = " ".join(o.get("text", "") + "".join(o.get("data", {}).get("text/plain", ""))
                       for c in cells if c.cell_type == "code" for o in c.outputs)
    printed = [float(v) for v in re.findall(r"\d+\.\d+|\d+", outputs)]
    code = " ".join(c.source for c in cells if c.cell_type == "code")
    cited = re.compile(r"docs/|results\.md|README|arXiv|python [\w/]+\.py|notebook \d|"
                       r"standard error")
    unexplained = [
        (number, " ".join(sentence.split())[:120])
        for cell in cells if cell.cell_type == "markdown"
        for number, sentence in _stated_numbers(cell.source)
        if not any(abs(p - float(number)) <= 0.5 * 10 ** -len(number.split(".")[1]) + 1e-9
                   for p in printed)
        and number not in code and not cited.search(sentence)
        and number not in NOT_PRINTED.get(name, {})]
    assert not unexplained, unexplained
