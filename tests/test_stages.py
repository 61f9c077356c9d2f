"""stages.py: the stage table, the presets and the settings resolver."""
import os
import sys

import pytest

import stages
from stages import PRESETS, RUN_DEFAULTS, STAGES, resolve_settings


def test_gpu_presets_set_each_stage_and_flags_still_win():
    run, config = resolve_settings("decoder", "gpu-cifar10")
    assert run["data"].startswith("cifar10:") and run["steps"] == 40000
    assert config["channels"] == 128 and config["attention_resolutions"] == (16, 8)
    run, config = resolve_settings("upsampler", "gpu-cifar10", ["--steps=7"])
    assert (run["resolution"], config["low_resolution"], run["steps"]) == (64, 32, 7)
    assert resolve_settings("clip", "gpu-cifar10")[1]["embed_dim"] == 256
    assert resolve_settings("ae", "gpu-cifar10")[0]["steps"] == RUN_DEFAULTS["steps"]


def test_cpu_settings_come_from_the_dataclasses():
    # The CPU preset adds no model fields (upsampler2 aside): the dataclass defaults are its values.
    for stage in STAGES:
        run, config = resolve_settings(stage)
        assert set(config) <= {"resolution", "low_resolution", "degradation", "channel_mult"}


def test_no_model_field_is_also_a_run_setting():
    # One flag, one meaning: --resolution alone is both (the images' and the model's).
    for stage in STAGES:
        assert set(RUN_DEFAULTS) & set(stages.model_fields(stage)) <= {"resolution"}, stage


def test_a_stage_fixes_the_fields_that_make_it_that_stage():
    model = stages.build_model("dae", dict(channels=8, latent_dim=4, resolution=16))
    assert model.cfg.kind == "dae"
    with pytest.raises(ValueError, match="unknown setting 'kind'"):
        resolve_settings("dae", flags=["--kind=vae"])
    with pytest.raises(ValueError, match="unknown stage 'dalle'"):
        resolve_settings("dalle")


def test_gpu_preset_models_build_and_take_a_training_step():
    # bench/throughput.py --presets builds every stage of every GPU preset and runs one forward
    # and backward pass on one image, counting FLOPs: hours = FLOPs x batch x steps / 100 TFLOP/s,
    # and the COCO decoder (64 px) costs 3-6x the CIFAR-10 one (32 px, same U-Net: 4x the
    # convolutions, but the caption's tokens cost alike).
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))
    import throughput
    decoder = {}
    for preset in [p for p in PRESETS if p != "cpu"]:
        rows = throughput.preset_estimates(preset)
        assert {r[0] for r in rows} == {s for s in PRESETS[preset] if s != "all"}
        for _, _, gflops, batch, steps, hours in rows:
            assert hours == pytest.approx(gflops * 1e9 * batch * steps / 100e12 / 3600)
        decoder[preset] = next(r[2] for r in rows if r[0] == "decoder")
    assert 3 < decoder["gpu-coco"] / decoder["gpu-cifar10"] < 6, decoder
