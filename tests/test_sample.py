"""sample.py: grids and folders from a DDPM checkpoint, guidance flags, one-line errors."""
import os

import pytest

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


def test_wrong_stage_checkpoint_is_refused(checkpoints, capsys):
    with pytest.raises(SystemExit):
        sample.main(["ddpm", "--ckpt", str(checkpoints / "classifier.pt")])
    assert "holds a 'classifier' model, not 'ddpm'" in capsys.readouterr().err
