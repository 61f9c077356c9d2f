"""train.py: exact resume, atomic checkpoints, loads that explain, one-line errors."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import checkpoint
import train
from stages import RUN_DEFAULTS, STAGES

TINY = dict(resolution=16, n_train=64, batch_size=8, warmup=2, checkpoint_every=3)
TINY_RUN = ["--steps", "1", "--n_train=16", "--resolution", "16", "--channels=8", "--no-eval",
            "--out", "/tmp/unclip-tests-should-not-train"]


def _run(stage, out, steps, resume=False, **config):
    run = dict(RUN_DEFAULTS, **TINY, steps=steps)
    config = dict(dict(channels=8, latent_dim=4, resolution=16), **config)
    return train.train(stage, run, config, str(out), seed=5, device="cpu", resume=resume,
                       quiet=True)[0]


def test_resume_is_exact(tmp_path):
    straight = _run("vae", tmp_path / "a", steps=8)
    _run("vae", tmp_path / "b", steps=4)
    resumed = _run("vae", tmp_path / "b", steps=8, resume=True)
    for (name, p), q in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(p, q), name
    state = checkpoint.load_checkpoint(str(tmp_path / "b" / "vae.pt"), "vae")
    assert state["step"] == 8 and state["config"]["latent_dim"] == 4


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = str(tmp_path / "x.pt")
    checkpoint.save_checkpoint(path, {"format": checkpoint.FORMAT, "stage": "ae", "step": 1})

    def crash(obj, f):  # a crash mid-write, e.g. the disk filling up
        f.write(b"partial")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="previous one is intact"):
        checkpoint.save_checkpoint(path, {"format": checkpoint.FORMAT, "stage": "ae", "step": 2})
    assert checkpoint.load_checkpoint(path)["step"] == 1
    assert os.listdir(tmp_path) == ["x.pt"]  # no temporary file left behind


def test_read_only_output_folder_is_one_line_and_keeps_the_checkpoint(tmp_path, monkeypatch,
                                                                     capsys):
    args = ["ae", "--out", str(tmp_path), "--steps", "2", "--resolution", "16", "--batch-size",
            "4", "--n_train=16", "--channels=8", "--quiet"]
    train.main(args)
    before = checkpoint.load_checkpoint(str(tmp_path / "ae.pt"))["model"]

    def read_only(path, mode="r", *rest, **kwargs):  # what a read-only folder does (as root,
        if "w" in mode:                                # chmod cannot show it)
            raise PermissionError(13, "Permission denied", path)
        return open(path, mode, *rest, **kwargs)
    monkeypatch.setattr(checkpoint, "open", read_only, raising=False)
    with pytest.raises(SystemExit):
        train.main(args + ["--seed", "1"])
    err = capsys.readouterr().err
    assert "could not write checkpoint" in err and "Permission denied" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    after = checkpoint.load_checkpoint(str(tmp_path / "ae.pt"))["model"]
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_bad_checkpoints_fail_clearly(tmp_path):
    _run("ae", tmp_path, steps=3)
    path = str(tmp_path / "ae.pt")
    with pytest.raises(checkpoint.CheckpointError, match="holds a 'ae' model, not 'vqvae'"):
        checkpoint.load_checkpoint(path, "vqvae")
    state = checkpoint.load_checkpoint(path, "ae")
    for changed in (dict(state, config=dict(state["config"], mask_prob=0.5)),  # an older field
                    dict(state, config=dict(state["config"], latent_dim=3))):  # other shapes
        with pytest.raises(checkpoint.CheckpointError, match="do not fit this code"):
            checkpoint.restore_model(changed)
    blob = open(path, "rb").read()
    open(path, "wb").write(blob[: len(blob) // 2])
    with pytest.raises(checkpoint.CheckpointError, match="truncated"):
        checkpoint.load_checkpoint(path, "ae")
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint at"):
        checkpoint.load_checkpoint(str(tmp_path / "none.pt"), "ae")


def test_resume_with_other_settings_is_refused(tmp_path):
    _run("ae", tmp_path, steps=3)
    with pytest.raises(checkpoint.CheckpointError, match="other settings.*latent_dim"):
        _run("ae", tmp_path, steps=6, resume=True, latent_dim=8)


def _replace_loss(monkeypatch, stage, wrap):
    """Train the stage with wrap(its loss) instead of its loss."""
    row = STAGES[stage]
    monkeypatch.setitem(STAGES, stage, dataclasses.replace(row, loss=wrap(row.loss)))


def test_nonfinite_loss_stops_with_step_and_checkpoint(tmp_path, monkeypatch):
    def poison(real):
        def poisoned(*args):
            loss, figures = real(*args)
            return (loss * float("nan") if torch.initial_seed() == train.step_seed(5, 4)
                    else loss, figures)
        return poisoned
    _replace_loss(monkeypatch, "ae", poison)
    with pytest.raises(FloatingPointError, match=r"at step 4; the last good checkpoint is .*"
                                                 r"ae.pt \(step 3\)"):
        _run("ae", tmp_path, steps=6)


def _poison(monkeypatch, calls, gradient_only=False):
    """Make the loss of the given calls (1, 2, ...) non-finite, or, with gradient_only, keep its
    value finite and make its gradient NaN; returns the list of calls seen."""
    seen = []

    def poison(real):
        def poisoned(model, *args):
            loss, figures = real(model, *args)
            seen.append(1)
            if len(seen) in calls:
                # sqrt at 0: the value 0, the gradient 0 * inf = NaN
                bad = (0 * next(model.parameters()).sum()).sqrt()
                loss = loss + bad if gradient_only else loss * float("nan")
            return loss, figures
        return poisoned
    _replace_loss(monkeypatch, "ae", poison)
    return seen


@pytest.mark.parametrize("poisoned_step", [3, 6])  # 6: the last step, which must still save
def test_nonfinite_loss_can_skip_the_step_instead(tmp_path, monkeypatch, poisoned_step):
    seen = _poison(monkeypatch, {poisoned_step})
    run = dict(RUN_DEFAULTS, **TINY, steps=6, on_nonfinite="skip")
    train.train("ae", run, dict(channels=8, latent_dim=4, resolution=16), str(tmp_path), seed=5,
                device="cpu", quiet=True)
    state = checkpoint.load_checkpoint(str(tmp_path / "ae.pt"))
    assert state["step"] == 6 and len(seen) == 6
    assert all(torch.isfinite(v).all() for v in state["model"].values())


@pytest.mark.parametrize("on_nonfinite", ["stop", "skip"])
def test_nonfinite_gradients_are_caught_like_a_nonfinite_loss(tmp_path, monkeypatch,
                                                               on_nonfinite):
    _poison(monkeypatch, {5}, gradient_only=True)
    run = dict(RUN_DEFAULTS, **TINY, steps=6, on_nonfinite=on_nonfinite)
    settings = ("ae", run, dict(channels=8, latent_dim=4, resolution=16), str(tmp_path))
    if on_nonfinite == "stop":
        with pytest.raises(FloatingPointError, match="gradient norm is nan at step 4"):
            train.train(*settings, seed=5, device="cpu", quiet=True)
        return
    train.train(*settings, seed=5, device="cpu", quiet=True)
    state = checkpoint.load_checkpoint(str(tmp_path / "ae.pt"))
    assert state["step"] == 6
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert all(torch.isfinite(v).all() for v in state["optimizer"]["state"][0].values())


@pytest.mark.parametrize("argv,message", [
    (["gan"], "unknown stage 'gan'"),
    (["ae", "--preset", "tpu"], "unknown preset 'tpu'"),
    (["ae", "--colour=red"], "unknown setting 'colour' for stage ae"),
    (["ae", "--latent_dim=many"], "--latent_dim: invalid literal"),
    (["ae", "--resolution", "24", "--steps", "1"], "must be a power of two >= 8, got 24"),
    (["ae", "--data", "cifar10:/nowhere", "--steps", "1"], "/nowhere: no such file or folder"),
    (["ae", "--resume", "--out", "/tmp/nothing-here"], "no checkpoint at /tmp/nothing-here/ae.pt"),
    (["upsampler", "--low_resolution=64", "--steps", "1", "--n_train=16"],
     "resolution 64 must exceed"),
    (["upsampler", "--degradation=jpeg", "--steps", "1", "--n_train=16"],
     "degradation must be 'blur' or"),
    (["clip", "--image_encoder=vit", "--patch_size=5", "--steps", "1", "--n_train=16"],
     "patch_size 5 must divide resolution 32"),
    (["clip", "--tokenizer=bpe", "--steps", "1", "--n_train=16"],
     "tokenizer must be 'word' or 'byte'"),
    (["ar_prior", "--out", "/tmp/nothing-here"], "no checkpoint at /tmp/nothing-here/clip.pt"),
    # (a tiny run, so that a check that lets these through fails fast instead of training)
    (["ae", "--precision=fp16"] + TINY_RUN, "--precision=fp16: choose from auto, bf16, fp32"),
    (["ae", "--on_nonfinite=skpi"] + TINY_RUN, "--on_nonfinite=skpi: choose from stop, skip"),
    (["ae", "--steps", "abc"], "--steps: invalid literal for int()"),
    (["ae", "--batch_size=0"] + TINY_RUN, "--batch_size=0: must be at least 1"),
])
def test_command_line_errors_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        train.main(argv + ["--quiet"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_main_trains_and_reports(tmp_path, capsys):
    train.main(["vqvae", "--out", str(tmp_path), "--steps", "3", "--resolution", "16",
                "--batch-size", "4", "--n_train=16", "--channels=8", "--quiet"])
    out = capsys.readouterr().out
    assert out.startswith("vqvae: train_seconds") and "perplexity" in out
    assert {"vqvae.pt", "vqvae_recon.png", "vqvae_metrics.json"} <= set(os.listdir(tmp_path))


def test_eval_flag_reports_a_trained_checkpoint_without_training(tmp_path, capsys):
    argv = ["ae", "--out", str(tmp_path), "--steps", "2", "--resolution", "16", "--batch-size",
            "4", "--n_train=16", "--channels=8", "--quiet"]
    train.main(argv)
    step = checkpoint.load_checkpoint(str(tmp_path / "ae.pt"))["step"]
    capsys.readouterr()
    train.main(["ae", "--out", str(tmp_path), "--eval"])
    out = capsys.readouterr().out
    assert "ae: baseline_mse" in out and "train_seconds" not in out
    assert checkpoint.load_checkpoint(str(tmp_path / "ae.pt"))["step"] == step


def _assert_resume_matches_a_straight_run(args, killed, straight):
    """--resume the killed run's folder; it must end with the weights of an uninterrupted run."""
    train.main(args + ["--out", str(killed), "--resume"])
    train.main(args + ["--out", str(straight)])
    resumed = checkpoint.load_checkpoint(str(killed / "ae.pt"))["model"]
    reference = checkpoint.load_checkpoint(str(straight / "ae.pt"))["model"]
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)


def test_run_killed_mid_training_resumes_to_the_same_weights(tmp_path):
    """SIGKILL a real training process after its first checkpoint; --resume must then end with
    exactly the weights of an uninterrupted run."""
    args = ["ae", "--steps", "300", "--resolution", "16", "--batch-size", "4", "--n_train=32",
            "--channels=8", "--checkpoint_every=20", "--quiet"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "train.py", *args, "--out", str(killed)], cwd=root)
    deadline = time.time() + 120
    while not (killed / "ae.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step = checkpoint.load_checkpoint(str(killed / "ae.pt"))["step"]  # whole, not truncated
    assert 0 < step < 300, step
    _assert_resume_matches_a_straight_run(args, killed, tmp_path / "straight")


def test_torchrun_with_two_gloo_processes_learns_what_one_process_does(tmp_path):
    """`torchrun --nproc_per_node=2 train.py` (DistributedDataParallel over gloo, on the CPU):
    each process takes half of every step's batch and DDP averages the gradients, so the weights
    are one process's on the whole batch, up to float rounding. Stopped after 3 steps and
    resumed to 6, with rank 0 alone writing the checkpoint and the log."""
    args = ["ae", "--resolution", "16", "--batch-size", "8", "--n_train=32", "--channels=8",
            "--checkpoint_every=3", "--quiet", "--no-eval", "--device=cpu"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                "train.py", *args, "--out", str(tmp_path / "ddp")]
    for more in (["--steps", "3"], ["--steps", "6", "--resume"]):
        subprocess.run(torchrun + more, cwd=root, env=dict(os.environ, OMP_NUM_THREADS="1"),
                       check=True, timeout=300, capture_output=True)
    train.main(args + ["--steps", "6", "--out", str(tmp_path / "one")])
    train.main(args + ["--steps", "6", "--batch-size", "4", "--out", str(tmp_path / "half")])
    ddp, one, half = (checkpoint.load_checkpoint(str(tmp_path / f / "ae.pt"))["model"]
                      for f in ("ddp", "one", "half"))
    gap = max((ddp[k] - one[k]).abs().max().item() for k in one)
    half_gap = max((half[k] - one[k]).abs().max().item() for k in one)
    assert gap < 1e-5 < half_gap, (gap, half_gap)  # one process on half the batch is far off
    steps = [json.loads(line)["step"] for line in open(tmp_path / "ddp" / "ae_log.jsonl")]
    assert steps == list(range(6))


def test_run_killed_mid_checkpoint_write_keeps_the_previous_one_and_resumes_exactly(tmp_path):
    """A real process is killed (SIGKILL) halfway through writing its second checkpoint: the
    first stays whole, and --resume from it ends with the weights of an uninterrupted run."""
    args = ["ae", "--steps", "40", "--resolution", "16", "--batch-size", "4", "--n_train=32",
            "--channels=8", "--checkpoint_every=20", "--quiet"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    dies_while_saving = (
        "import os, signal, sys, torch, train\n"
        "real_save, calls = torch.save, []\n"
        "def save(obj, f):\n"
        "    calls.append(1)\n"
        "    if len(calls) == 2:\n"
        "        f.write(b'half a checkpoint')\n"
        "        f.flush()\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    real_save(obj, f)\n"
        "torch.save = save\n"
        "train.main(sys.argv[1:])\n")
    killed = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", dies_while_saving, *args, "--out", str(killed)],
                          cwd=root)
    assert proc.returncode == -signal.SIGKILL
    assert (killed / "ae.pt.tmp").exists()                      # the write it died in
    assert checkpoint.load_checkpoint(str(killed / "ae.pt"))["step"] == 20
    _assert_resume_matches_a_straight_run(args, killed, tmp_path / "straight")


def test_main_job_trains_the_cascade_and_scores_test_prompts(cascade):
    for stage in ("clip", "prior", "decoder", "upsampler"):
        state = checkpoint.load_checkpoint(str(cascade / f"{stage}.pt"), stage)
        assert state["step"] == 2
    clip_stamp = checkpoint.fingerprint(checkpoint.restore_model(
        checkpoint.load_checkpoint(str(cascade / "clip.pt"))))
    assert checkpoint.load_checkpoint(str(cascade / "decoder.pt"))["clip"] == clip_stamp
    with open(cascade / "unclip_metrics.json") as f:
        metrics = json.load(f)
    assert {"exact_one_32px", "exact_two_32px", "exact_one_64px", "exact_two_64px"} <= set(metrics)
    assert all(0 <= metrics[k] <= 1 for k in metrics if k.startswith("exact"))
    shown = (cascade / "unclip_samples.txt").read_text().splitlines()
    assert len(shown) == 16 and shown[0].startswith("row 1, column 1: a ")
    assert os.path.exists(cascade / "unclip_samples.png")


def test_clip_reading_stages_need_clip_first(tmp_path, capsys):
    with pytest.raises(SystemExit):
        train.main(["prior", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert "no checkpoint at" in err and "clip.pt" in err and len(err.strip().splitlines()) == 1


def test_code_prior_trains_on_its_vqvae_and_its_checkpoint_draws_images(tmp_path, capsys):
    out = str(tmp_path)
    tiny = ["--out", out, "--resolution", "16", "--n_train=32", "--batch-size", "8", "--quiet"]
    with pytest.raises(SystemExit):  # no VQ-VAE yet
        train.main(["code_prior", "--steps", "1"] + tiny)
    err = capsys.readouterr().err
    assert "vqvae.pt" in err and "train it first" in err and len(err.strip().splitlines()) == 1
    train.main(["vqvae", "--steps", "20", "--channels=8", "--no-eval"] + tiny)
    train.main(["code_prior", "--steps", "2", "--width=16", "--layers=1", "--heads=2"] + tiny)
    metrics = json.load(open(tmp_path / "code_prior_metrics.json"))
    assert metrics["uniform_bits_per_code"] == 7  # log2 of 128 codes
    assert 0 < metrics["bits_per_code"] and 0 <= metrics["scene_rate_samples"] <= 1
    load = checkpoint.load_checkpoint
    vqvae = checkpoint.restore_model(load(os.path.join(out, "vqvae.pt"), "vqvae"))
    # The VQ-VAE inside it, frozen: the one it was trained on.
    prior = checkpoint.restore_model(load(os.path.join(out, "code_prior.pt"), "code_prior"))
    assert all(torch.equal(a, b) for a, b in zip(prior.vqvae.state_dict().values(),
                                                 vqvae.state_dict().values()))
    assert prior.sample(3).shape == (3, 3, 16, 16)


def test_main_job_rejects_a_setting_no_stage_has(capsys):
    with pytest.raises(SystemExit):
        train.main(["--out", "unused", "--latent_dim=4"])
    assert "unknown setting 'latent_dim'" in capsys.readouterr().err


def test_training_is_reproducible_for_a_seed_on_cpu(tmp_path):
    first, second = _run("vae", tmp_path / "a", steps=4), _run("vae", tmp_path / "b", steps=4)
    for (name, p), q in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(p, q), name


def test_fast_path_switches_on_for_cuda_and_bf16_for_the_u_nets_of_a_bf16_cpu(monkeypatch):
    run, cpu, cuda = dict(RUN_DEFAULTS), torch.device("cpu"), torch.device("cuda")
    for native in (False, True):
        monkeypatch.setattr(train, "native_bf16", lambda device: native)
        def fast(device, stage, **changed):
            return train.speed_options(device, dict(run, **changed), STAGES[stage].cpu_bf16)
        assert not any(fast(cpu, "clip").values())
        assert not any(fast(cpu, "prior").values())
        assert fast(cpu, "decoder") == dict(
            autocast=native, channels_last=False, fused_adamw=False, data_on_device=False)
        assert all(fast(cuda, "clip").values())
        assert not fast(cpu, "decoder", precision="fp32")["autocast"]
        assert not fast(cuda, "decoder", precision="fp32")["autocast"]
        assert fast(cpu, "clip", precision="bf16")["autocast"]


def test_bf16_autocast_branch_trains(tmp_path, monkeypatch):
    # The GPU's mixed-precision branch, run on the CPU: autocast is on in every step, the
    # convolutions compute in bfloat16, and the loss still falls by half in 60 steps.
    seen = []

    def record(real):
        def recording(model, images, *args):
            loss, figures = real(model, images, *args)
            seen.append((torch.is_autocast_enabled("cpu"), model.encoder(images).dtype,
                         loss.item()))
            return loss, figures
        return recording
    _replace_loss(monkeypatch, "ae", record)
    run = dict(RUN_DEFAULTS, **TINY, steps=60, lr=3e-3, precision="bf16")
    train.train("ae", run, dict(channels=8, latent_dim=8, resolution=16), str(tmp_path), seed=5,
                device="cpu", quiet=True)
    assert all(on and dtype == torch.bfloat16 for on, dtype, _ in seen)
    losses = [loss for *_, loss in seen]
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10]), losses


@pytest.mark.parametrize("seed", [1, 2])
def test_no_development_or_test_scene_is_a_training_scene_whatever_the_seed(tmp_path, seed,
                                                                             monkeypatch):
    import data
    import evaluate
    import shapes
    drawn, draw = {"training": set(), "evaluation": set()}, shapes.ShapesDataset.attributes
    phase = "training"

    def recording(self, i):  # every scene drawn, its attributes to the centres' last bit
        scene, prefix = draw(self, i)
        drawn[phase].add(json.dumps(scene, sort_keys=True))
        return scene, prefix
    monkeypatch.setattr(shapes.ShapesDataset, "attributes", recording)
    train.train("ae", dict(RUN_DEFAULTS, **dict(TINY, steps=1, n_train=1000)),
                dict(channels=8, latent_dim=4, resolution=16), str(tmp_path), seed=seed,
                device="cpu", quiet=True)
    phase = "evaluation"
    for stream in ("dev", "test"):
        data.load_data("shapes", 16, 1000, seed, stream)
        evaluate.evaluation_scenes(500, 16, seed, stream=stream)
        evaluate.evaluation_scenes(200, 16, seed, "holdout", stream)
    assert len(drawn["training"]) == 1000 and len(drawn["evaluation"]) > 3000
    assert not drawn["training"] & drawn["evaluation"]


def test_print_settings_shows_what_a_run_would_use(capsys):
    train.main(["ddpm", "--print-settings", "--steps", "9", "--channels=16"])
    printed = json.loads(capsys.readouterr().out)
    assert printed["run"]["steps"] == 9 and printed["config"]["channels"] == 16
    assert printed["run"]["data"] == "shapes:1"


def test_main_job_on_data_without_a_checker_reports_clip_fid(tmp_path, monkeypatch):
    # CIFAR-10's captions ("a photo of a cat") are not shapes captions: the cascade is scored by
    # CLIP-FID against held-out images at each resolution, and the CLIP score, instead of exact
    # match.
    import data as datasets
    import evaluate
    from test_data import _tiny_cifar
    from conftest import TINY_CASCADE
    _, archive = _tiny_cifar(str(tmp_path))
    out = str(tmp_path / "out")
    train.main(["--out", out, "--data", f"cifar10:{archive}"] + TINY_CASCADE)
    with open(tmp_path / "out" / "unclip_metrics.json") as f:
        figures = json.load(f)
    assert {"clip_fid_32px", "clip_fid_64px"} <= set(figures)
    assert not any(k.startswith("exact") for k in figures)
    # A cascade that returned the held-out images themselves would be at distance 0; one that
    # returned their negatives, far from it.
    real = {res: datasets.load_data(f"cifar10:{archive}", res, 96, 1, "test").images / 127.5 - 1
            for res in (32, 64)}
    for sign, near_zero in [(1, True), (-1, False)]:
        monkeypatch.setattr(evaluate, "unclip_sample", lambda *args, **kwargs: (
            [sign * real[32], sign * real[64]], None))
        figures = evaluate.evaluate_unclip(out, "cpu", 0)
        for key in ("clip_fid_32px", "clip_fid_64px"):
            assert (figures[key] < 1e-6) == near_zero, (sign, key, figures)
        # The real images' own CLIP score is the one such a cascade would get.
        same = abs(figures["clip_score_64px"] - figures["clip_score_real"]) < 1e-6
        assert same == near_zero and "clip_score_shuffled" in figures


def test_data_moves_to_the_gpu_only_when_it_fits(monkeypatch):
    # The "meta" device stands in for the GPU: what moves lands there, what does not stays put.
    import data as datasets
    images = torch.zeros(10, 3, 4, 4, dtype=torch.uint8)
    cache = [torch.zeros(10, 8), torch.zeros(10, 5, 8, dtype=torch.bfloat16)]
    meta = torch.device("meta")
    for free, moved in [(10 ** 9, True), (1000, False)]:  # 1,600 bytes: moves if 6,400 free
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (free, 2 * free))
        data = datasets.TensorData(images.clone(), [["a"]] * 10)
        new_cache = train.data_to_device(data, list(cache), meta)
        assert data.images.is_meta == moved
        assert all(f.is_meta == moved for f in new_cache)


@pytest.mark.parametrize("change,named", [(["--lr=0.01"], "lr"), (["--seed", "1"], "seed"),
                                          (["--batch-size", "8"], "batch_size"),
                                          (["--latent_dim=8"], "latent_dim")])
def test_resume_refuses_other_run_settings_in_one_line(tmp_path, capsys, change, named):
    args = ["ae", "--out", str(tmp_path), "--steps", "2", "--resolution", "16", "--batch-size",
            "4", "--n_train=16", "--channels=8", "--latent_dim=4", "--quiet", "--no-eval"]
    train.main(args)
    train.main(args + ["--resume", "--steps", "3"])  # the same run, continued: accepted
    with pytest.raises(SystemExit):
        train.main(args + ["--resume", "--steps", "4"] + change)
    err = capsys.readouterr().err
    assert f"was trained with other settings ({named})" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert checkpoint.load_checkpoint(str(tmp_path / "ae.pt"))["step"] == 3


def test_learning_rate_warms_up_then_stays_or_decays_to_zero_by_the_step_alone(tmp_path, capsys):
    run = dict(RUN_DEFAULTS, lr=2.0, warmup=10, steps=110)
    assert [train.learning_rate(run, s) for s in (0, 9, 50, 109)] == [0.2, 2.0, 2.0, 2.0]
    cosine = dict(run, lr_schedule="cosine")
    assert [round(train.learning_rate(cosine, s), 6) for s in (0, 9, 10, 60)] == [0.2, 2, 2, 1]
    assert 0 < train.learning_rate(cosine, 109) < 1e-3
    # A decay ends at the last step, so a cosine run cannot be continued to more steps.
    args = ["ae", "--out", str(tmp_path), "--steps", "2", "--resolution", "16", "--batch-size",
            "4", "--n_train=16", "--channels=8", "--latent_dim=4", "--quiet", "--no-eval",
            "--lr_schedule=cosine"]
    train.main(args)
    with pytest.raises(SystemExit):
        train.main(args + ["--resume", "--steps", "4"])
    assert "was trained with other settings (steps)" in capsys.readouterr().err


def test_bf16_autocast_and_fp32_agree_on_a_tiny_decoder():
    from decoder import Decoder, DecoderConfig
    torch.manual_seed(0)
    model = Decoder(DecoderConfig(resolution=16, channels=16, channel_mult=(1, 2),
                                  embed_dim=8, text_width=4, context_dim=16))
    for p in model.parameters():  # untrained layers start at zero; make every path matter
        p.data.normal_(0, 0.1)
    x, t = torch.randn(4, 3, 16, 16), torch.tensor([1, 200, 500, 900])
    z_i, tokens = torch.randn(4, 8), torch.randn(4, 6, 4)
    exact = model(x, t, z_i, tokens)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = model(x, t, z_i, tokens).float()
    # bfloat16 keeps 8 bits of mantissa: about 1% per operation, a few percent through the net.
    assert (fast - exact).norm() / exact.norm() < 0.05
    assert not torch.equal(fast, exact)  # it did compute in bf16


class _Exploit:  # what a malicious checkpoint would carry: unpickling it would run code
    def __reduce__(self):
        return (open, ("/tmp/unclip-weights-only-was-bypassed", "w"))


def test_a_checkpoint_with_a_pickled_object_is_refused_and_never_run(tmp_path):
    marker = "/tmp/unclip-weights-only-was-bypassed"
    if os.path.exists(marker):
        os.remove(marker)
    path = str(tmp_path / "ae.pt")
    torch.save({"format": checkpoint.FORMAT, "stage": "ae", "payload": _Exploit()}, path)
    with pytest.raises(checkpoint.CheckpointError, match="holds pickled objects"):
        checkpoint.load_checkpoint(path, "ae")
    assert not os.path.exists(marker)


def test_batches_and_clip_features_follow_the_model_device():
    # The "meta" device stands in for a GPU: whatever reaches the model must be on its device,
    # from an in-memory CPU data set, with CLIP's features cached on the CPU or computed.
    import clip
    import data as datasets
    meta = torch.device("meta")
    data = datasets.shapes_data(8, 16, seed=0)
    clip_model = clip.CLIP(clip.CLIPConfig(resolution=16, embed_dim=8, text_width=16,
                                           tokenizer="byte", context_length=80, vision_width=16,
                                           text_layers=1,
                                           vision_layers=1))
    cache = train.cache_clip_embeddings(clip_model, data)
    clip_model.to(meta)
    index = torch.arange(4)
    for features_from in (cache, None):
        images, _, labels, features = train.load_batch(data, index, meta, torch.contiguous_format,
                                                       clip_model, features_from)
        assert images.is_meta and labels.is_meta and all(f.is_meta for f in features)
    z_i, z_t, tokens = clip.clip_embeddings(clip_model, data.batch(index)[0], ["a"] * 4)
    assert z_i.is_meta and z_t.is_meta and tokens.is_meta


def test_checkpoints_written_on_a_gpu_load_and_sample_on_a_cpu(cascade, tmp_path):
    # What a student with a GPU gets: train.py trains there and saves CUDA tensors; the notebooks
    # and sample.py load the cascade in a process that may have no GPU at all. Simulated here by
    # re-saving the test cascade with every storage tagged "cuda:0", as torch.save tags them on
    # a GPU.
    import torch.serialization as serialization
    import unclip

    def on_the_gpu(storage):
        return "cuda:0"
    serialization.register_package(0, on_the_gpu, lambda storage, location: None)
    try:
        for stage in ("clip", "prior", "decoder", "upsampler"):
            state = torch.load(cascade / f"{stage}.pt", map_location="cpu", weights_only=True)
            torch.save(state, tmp_path / f"{stage}.pt")
    finally:  # no public way to unregister a tagger
        serialization._package_registry[:] = [p for p in serialization._package_registry
                                              if p[1] is not on_the_gpu]
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):  # the simulation is what a GPU writes
            torch.load(tmp_path / "decoder.pt", weights_only=True)
    clip_model, prior, decoder, upsamplers = checkpoint.load_unclip(str(tmp_path))
    torch.manual_seed(0)
    images, z_i = unclip.unclip_sample(clip_model, prior, decoder, upsamplers,
                                       ["a red circle", "a blue square"], steps=2,
                                       upsampler_steps=2)
    assert images[-1].device.type == "cpu" and images[-1].shape == (2, 3, 64, 64)
    assert torch.isfinite(images[-1]).all() and z_i.device.type == "cpu"


def test_resume_is_exact_for_a_stage_with_an_ema_that_reads_clip(tmp_path):
    # The decoder keeps an EMA and reads CLIP's cached features: both must resume exactly.
    tiny = ["--steps", "2", "--batch-size", "4", "--n_train=16", "--warmup=1", "--quiet",
            "--no-eval", "--embed_dim=8", "--text_width=16", "--text_layers=1", "--text_heads=2",
            "--vision_width=16", "--vision_layers=1", "--vision_heads=2"]
    decoder = ["--batch-size", "4", "--n_train=16", "--warmup=1", "--quiet", "--no-eval",
               "--channels=8", "--channel_mult=1,2", "--num_heads=2", "--context_dim=8",
               "--timesteps=20", "--checkpoint_every=2", "--lr_schedule=constant"]
    for folder in ("straight", "resumed"):
        train.main(["clip", "--out", str(tmp_path / folder)] + tiny)
    train.main(["decoder", "--out", str(tmp_path / "straight"), "--steps", "4"] + decoder)
    train.main(["decoder", "--out", str(tmp_path / "resumed"), "--steps", "2"] + decoder)
    train.main(["decoder", "--out", str(tmp_path / "resumed"), "--steps", "4", "--resume"]
               + decoder)
    a, b = (checkpoint.load_checkpoint(str(tmp_path / f / "decoder.pt"))
            for f in ("straight", "resumed"))
    assert a["step"] == b["step"] == 4 and a["ema"] is not None
    for part in ("model", "ema"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
