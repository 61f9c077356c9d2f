"""What every notebook's first cell needs, kept in one place: the project's modules on the path,
the fast mode, the folder the checkpoints go to, and `train_stage`, which trains a stage with
the project's own command line (`python train.py STAGE ...`, in a subprocess: no notebook holds
a copy of the training loop) and loads the model back.

    from course import FAST, RUNS, load_or_train, print_run_time, train_stage  # before the modules

Fast mode (UNCLIP_FAST=1, as `python -m pytest tests/test_notebooks.py` runs the notebooks)
trains a few steps on a few images; UNCLIP_RUNS=DIR puts the checkpoints elsewhere. Paths are
relative to notebooks/, the folder Jupyter runs a notebook in.
"""
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the modules
from checkpoint import load_checkpoint, restore_model  # noqa: E402

FAST = os.environ.get("UNCLIP_FAST") == "1"  # the test suite's quick run: few steps, little data
RUNS = os.environ.get("UNCLIP_RUNS",  # checkpoints (git-ignored); notebooks 5-8 share them
                      f"../runs/notebooks/{'fast' if FAST else 'full'}")
START = time.time()  # a notebook imports this module in its first cell: its clock starts here


def train_stage(stage, steps, out, **settings):
    """Train with the command line, `python train.py STAGE --steps=N --out=OUT --key=value ...`,
    then load the model and its per-step log back (`trained`). Fast mode: a few steps on a few
    images."""
    if FAST:
        steps, settings = 6, dict(settings, batch_size=8, n_train=256)
    flags = [f"--{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}"
             for k, v in settings.items()]
    command = [sys.executable, "../train.py", stage, f"--steps={steps}", f"--out={out}",
               "--quiet", "--no-eval", *flags]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr.strip().splitlines()[-1])
    return trained(stage, out)


def trained(stage, out):
    """(model, per-step log) of the stage `python train.py` left in OUT: OUT/STAGE.pt (its
    moving average of the weights, where it keeps one) and OUT/STAGE_log.jsonl."""
    with open(f"{out}/{stage}_log.jsonl") as f:
        log = [json.loads(line) for line in f]
    return restore_model(load_checkpoint(f"{out}/{stage}.pt", stage)), log


def load_or_train(stage, steps, out, **settings):
    """(model, log, where): the model of `python train.py STAGE` from ../out when it is there
    (outside fast mode), as the course's longer runs leave it; otherwise train_stage trains it
    here for `steps` into `out`. `where` says which, for the notebook to print."""
    if not FAST and os.path.exists(f"../out/{stage}.pt"):
        model, log = trained(stage, "../out")
        return model, log, f"../out ({len(log)} steps of python train.py {stage})"
    model, log = train_stage(stage, steps, out, **settings)
    return model, log, f"trained here ({len(log)} steps)"


def print_run_time():
    """A notebook's last line: how long it ran, and in which mode."""
    print(f"notebook ran in {time.time() - START:.0f} s ({'fast' if FAST else 'full'} mode)")
