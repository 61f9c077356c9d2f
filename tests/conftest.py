"""A tiny unCLIP cascade trained once per test session by the main job itself (two steps per
stage), shared by the tests of train.py and sample.py."""
import functools

import pytest

import train

RUN = ["--steps", "2", "--batch-size", "8", "--n_train=64", "--warmup=1", "--quiet"]
PRIOR = ["--width=16", "--layers=1", "--heads=2"]
TINY_CASCADE = RUN + PRIOR + [
    # CLIP
    "--embed_dim=16", "--text_width=16", "--text_layers=1", "--text_heads=2",
    "--vision_width=16", "--vision_layers=1", "--vision_heads=2",
    # decoder and upsampler (T = 100: the evaluations take 64 DDIM steps)
    "--channels=8", "--channel_mult=1,2", "--num_heads=2", "--context_dim=16",
    "--timesteps=100",
]


@pytest.fixture(scope="session")
def cascade(tmp_path_factory):
    """A folder holding clip.pt, prior.pt, ar_prior.pt, decoder.pt, upsampler.pt and the main
    job's metrics, samples and prompts. The job's final evaluation draws 8 + 8 held-out prompts
    and 4 + 4 held-out compositions instead of 100 + 100 and 50 + 50 (most of its time)."""
    out = tmp_path_factory.mktemp("cascade")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train, "evaluate_unclip", functools.partial(train.evaluate_unclip,
                                                                   n=8, holdout=4))
        train.main(["--out", str(out)] + TINY_CASCADE)
    train.main(["ar_prior", "--out", str(out), "--pca_dim=4", "--buckets=8"] + RUN + PRIOR)
    return out
