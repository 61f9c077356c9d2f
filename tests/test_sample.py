"""sample.py: the DDPM with guidance; the prior over VQ-VAE codes; unCLIP's text to image,
variations, interpolations and text diffs; one-line errors for bad input."""
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import checkpoint
import data as datasets
import sample
import train

UNET = dict(resolution=16, channels=16, channel_mult=(1, 2), num_res_blocks=1,
            attention_resolutions=(8,), num_heads=2, timesteps=20)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    run = dict(train.RUN_DEFAULTS, data="shapes:1", resolution=16, n_train=32, batch_size=4,
               steps=2, warmup=1)
    train.train("ddpm", run, UNET, str(out), device="cpu", quiet=True)
    train.train("classifier", run, UNET, str(out), device="cpu", quiet=True)
    train.train("vqvae", dict(run, data="shapes"), dict(resolution=16, channels=8), str(out),
                device="cpu", quiet=True)
    train.train("code_prior", dict(run, data="shapes"), dict(width=16, layers=1, heads=2),
                str(out), device="cpu", quiet=True)
    return out


def test_writes_a_grid_or_one_file_per_image(checkpoints, tmp_path):
    ckpt = str(checkpoints / "ddpm.pt")
    sample.main(["ddpm", "--ckpt", ckpt, "--class", "circle", "--guidance", "3", "--n", "3",
                 "--steps", "2", "--out", str(tmp_path / "grid.png")])
    assert os.path.exists(tmp_path / "grid.png")
    sample.main(["ddpm", "--ckpt", ckpt, "--class", "2", "--classifier",
                 str(checkpoints / "classifier.pt"), "--classifier-scale", "2", "--sampler", "ddpm",
                 "--n", "2", "--out", str(tmp_path / "many")])
    assert sorted(os.listdir(tmp_path / "many")) == ["0000.png", "0001.png"]


def test_codes_job_draws_from_the_prior_over_codes(checkpoints, tmp_path, capsys):
    sample.main(["codes", "--ckpt", str(checkpoints / "code_prior.pt"), "--n", "2",
                 "--temperature", "0.5", "--out", str(tmp_path / "codes")])
    images = [np.asarray(Image.open(tmp_path / "codes" / f)) for f in ("0000.png", "0001.png")]
    assert all(image.shape == (16, 16, 3) for image in images)
    with pytest.raises(SystemExit):
        sample.main(["codes", "--ckpt", str(checkpoints / "code_prior.pt"), "--temperature", "0"])
    err = capsys.readouterr().err
    assert "temperature must be above 0" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("extra,message", [
    (["--class", "hexagon"], "unknown class 'hexagon'"),
    (["--classifier", "CLF"], "--classifier needs --class"),
    (["--n", "0"], "--n must be at least 1"),
    (["--steps", "0"], "DDIM steps must be in 1..20"),
])
def test_bad_arguments_are_one_line(checkpoints, extra, message, capsys):
    extra = [str(checkpoints / "classifier.pt") if e == "CLF" else e for e in extra]
    with pytest.raises(SystemExit) as exit_:
        sample.main(["ddpm", "--ckpt", str(checkpoints / "ddpm.pt"), "--n", "1"] + extra)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


def test_wrong_stage_checkpoint_is_refused(checkpoints, capsys):
    with pytest.raises(SystemExit):
        sample.main(["ddpm", "--ckpt", str(checkpoints / "classifier.pt")])
    assert "holds a 'classifier' model, not 'ddpm'" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# unCLIP, on the tiny cascade of conftest.py.

FAST = ["--steps", "2", "--upsampler-steps", "2"]


def test_text_to_image_writes_a_grid_or_files_named_by_prompt_and_sample(cascade, tmp_path):
    sample.main(["unclip", "a small red circle on the left", "--models", str(cascade), "--n", "2",
                 "--out", str(tmp_path / "grid.png")] + FAST)
    assert Image.open(tmp_path / "grid.png").size[0] > 64
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a large blue square at the top\na small red circle above a small "
                       "green triangle\n")
    for prior in ("diffusion", "ar"):
        sample.main(["unclip", "--prompts", str(prompts), "--models", str(cascade), "--n", "2",
                     "--prior", prior, "--out", str(tmp_path / prior)] + FAST)
        names = sorted(os.listdir(tmp_path / prior))
        assert names == ["0000_0.png", "0000_1.png", "0001_0.png", "0001_1.png"]
        assert Image.open(tmp_path / prior / "0001_1.png").size == (64, 64)


def test_variations_interpolations_and_text_diffs(cascade, tmp_path):
    scenes = datasets.shapes_data(2, 64, seed=3)
    for i in range(2):
        datasets.save_grid(scenes.batch(torch.tensor([i]))[0], str(tmp_path / f"{i}.png"))
    a, b = str(tmp_path / "0.png"), str(tmp_path / "1.png")
    for flags, count in [(["variations", a, "--n", "3"], 4),
                         (["interpolate", a, b, "--n", "5"], 5),
                         (["text-diff", "a red circle", "a blue circle", a, "--n", "4"], 4)]:
        out = tmp_path / flags[0]
        sample.main(flags + ["--models", str(cascade), "--out", str(out)] + FAST)
        assert len(os.listdir(out)) == count, flags[0]
    # Variations decode one embedding from fresh noise each; interpolations and text diffs start
    # every image from one x_T, so that only the embedding changes along the row (in this tiny
    # cascade, which has barely learnt to read the embedding, the pictures come out the same).
    def pictures(job):
        return [np.asarray(Image.open(tmp_path / job / name), dtype=float)
                for name in sorted(os.listdir(tmp_path / job))]
    variations = pictures("variations")[1:]  # the first is the input
    assert all(np.abs(a - b).mean() > 1 for a, b in zip(variations, variations[1:]))
    for job in ("interpolate", "text-diff"):
        row = pictures(job)
        assert all(np.abs(a - b).mean() < 1 for a, b in zip(row, row[1:])), job


@pytest.mark.parametrize("argv,message", [
    (["unclip", "   "], "prompt 0 is empty"),
    (["unclip", "a " * 23], "prompt 0 is 23 words; this CLIP reads at most 22"),
    (["unclip", "a pink circle"], "'pink' is not one of the"),
    (["unclip", "--prompts", "MISSING"], "no prompts file at"),
    (["variations", "MISSING.png"], "no image at"),
    (["variations", "NOT_AN_IMAGE"], "is not an image"),
    (["unclip"], "give a prompt or --prompts FILE"),
    # argparse's own errors, one line each: the job comes first, and its arguments
    (["a small red circle"], "invalid choice: 'a small red circle' (choose from 'unclip'"),
    (["variations"], "required: image (python sample.py variations --help)"),
])
def test_bad_unclip_input_is_one_line(cascade, tmp_path, argv, message, capsys):
    (tmp_path / "notes.png").write_text("not a picture")
    argv = [str(tmp_path / "nothing") if a.startswith("MISSING") else
            str(tmp_path / "notes.png") if a == "NOT_AN_IMAGE" else a for a in argv]
    with pytest.raises(SystemExit):
        sample.main(argv + ["--models", str(cascade), "--out", str(tmp_path / "x.png")] + FAST)
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_a_retrained_clip_is_caught(cascade, tmp_path, capsys):
    for name in ("prior.pt", "decoder.pt", "upsampler.pt"):
        shutil.copy(cascade / name, tmp_path / name)
    state = checkpoint.load_checkpoint(str(cascade / "clip.pt"))
    state["model"] = {k: v + 0.01 for k, v in state["model"].items()}
    checkpoint.save_checkpoint(str(tmp_path / "clip.pt"), state)
    with pytest.raises(SystemExit):
        sample.main(["unclip", "a small red circle on the left", "--models", str(tmp_path)] + FAST)
    assert "was trained with another CLIP" in capsys.readouterr().err


def test_sampling_is_reproducible_for_a_seed(cascade, tmp_path):
    def draw(name, seed):
        out = str(tmp_path / f"{name}.png")
        sample.main(["unclip", "a large green circle in the center", "--models", str(cascade),
                     "--n", "2", "--seed", str(seed), "--out", out] + FAST)
        return open(out, "rb").read()
    assert draw("a", 7) == draw("b", 7)
    assert draw("a", 7) != draw("c", 8)


def _break_by_truncating(state, path):
    blob = open(path, "rb").read()
    open(path, "wb").write(blob[: len(blob) // 3])


def _break_by_format(state, path):
    checkpoint.save_checkpoint(path, dict(state, format="unclip-from-scratch/0"))


def _break_by_config(state, path):
    checkpoint.save_checkpoint(path, dict(state, config=dict(state["config"], channels=16)))


def _break_by_stage(state, path):
    shutil.copy(os.path.join(os.path.dirname(path), "prior.pt"), path)


@pytest.mark.parametrize("damage,message", [
    (_break_by_truncating, "is truncated or not a checkpoint of this project"),
    (_break_by_format, "is not a unclip-from-scratch/1 checkpoint"),
    (_break_by_config, "config or weights do not fit this code"),
    (_break_by_stage, "holds a 'prior' model, not 'decoder'"),
])
def test_damaged_checkpoints_are_one_line(cascade, tmp_path, damage, message, capsys):
    for name in ("clip.pt", "prior.pt", "decoder.pt", "upsampler.pt"):
        shutil.copy(cascade / name, tmp_path / name)
    path = str(tmp_path / "decoder.pt")
    damage(checkpoint.load_checkpoint(path), path)
    with pytest.raises(SystemExit):
        sample.main(["unclip", "a small red circle on the left", "--models", str(tmp_path)] + FAST)
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
