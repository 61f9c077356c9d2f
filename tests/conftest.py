"""A tiny unCLIP cascade trained once per test session by the main job itself (two steps per
stage), shared by the tests of train.py and sample.py."""
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
    job's metrics, samples and prompts."""
    out = tmp_path_factory.mktemp("cascade")
    train.main(["--out", str(out)] + TINY_CASCADE)
    train.main(["ar_prior", "--out", str(out), "--pca_dim=4", "--buckets=8"] + RUN + PRIOR)
    return out
