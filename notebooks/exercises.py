"""The notebooks' exercises and their checks: what each exercise is given, and what a right
answer returns on it.

    exercises.check("q_sample", my_q_sample)  # prints "q_sample: right" or what is wrong

Each exercise has inputs made from a seed. The notebooks check an answer on seed 0's, against
the output a right answer gives there, stored in `expected/public.pt` (`python notebooks/grade.py
expected` writes it from the project's own functions); grade.py marks on seeds of each student's
own, made from the instructor's secret, and runs `outputs` in a separate process on a copy of the
project whose answers are blanked. Nothing here imports the project's own version of an answer.
The inputs hold only what an exercise needs: the diffusion exercises get the schedule's two
arrays, not the coefficients the project precomputes from them. An output is compared case by
case (a row of it: one image, one timestep), so a message can say which case is wrong; a
function that still raises NotImplementedError is "not answered yet".
"""
import json
import math
import os
import sys
from dataclasses import dataclass

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from diffusion import ClassifierConfig, NoisyClassifier, cosine_beta_schedule  # noqa: E402

EXPECTED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "expected")
PUBLIC_SEED = 0


@dataclass
class Schedule:
    """What the diffusion exercises get of a process: beta_t and abar_t, t = 0 .. T-1."""
    betas: torch.Tensor
    alphas_cumprod: torch.Tensor


def _schedule():
    betas = cosine_beta_schedule(1000)
    return Schedule(betas, torch.cumprod(1 - betas, 0))


# Each exercise's inputs for a seed: the arguments the reader's function is called with.

def _kl(g):
    return torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)


def _reparameterise(g):
    return tuple(torch.randn(5, 4, generator=g) for _ in range(3))


def _nearest_code(g):
    return torch.randn(50, 4, generator=g), torch.randn(16, 4, generator=g)


def _straight_through(g):
    z_e = torch.randn(2, 4, 3, 3, generator=g).requires_grad_(True)
    return z_e, torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)


def _timesteps(g, first):
    return torch.cat([torch.tensor([first, 999]), torch.randint(first, 1000, (2,), generator=g)])


def _q_sample(g):
    x0, noise = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    return _schedule(), x0, _timesteps(g, 0), noise


def _q_posterior_mean(g):
    x0, x_t = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    return _schedule(), x0, x_t, _timesteps(g, 1)


def _ddpm_loss(g):
    x0, noise = torch.randn(4, 2, generator=g), torch.randn(4, 2, generator=g)
    weight = torch.randn(2, 2, generator=g)

    def model_fn(x_t, t):  # a fixed stand-in for a network: (B, 2) points, (B,) steps -> (B, 2)
        return x_t @ weight * (1 - t[:, None] / 1000)
    return model_fn, _schedule(), x0, _timesteps(g, 0), noise


def _ddim_step(g):
    x_t, eps = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    # t <= 900: nearer T, x_0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar) is float32 round-off.
    t = torch.cat([torch.tensor([1, 900]), torch.randint(1, 900, (2,), generator=g)])
    t_prev = (t - torch.randint(1, 100, (4,), generator=g)).clamp(min=0)
    t_prev[0] = -1  # the last step, to x_0
    return _schedule(), x_t, eps, t, t_prev


def _classifier_free_guidance(g):
    w = 1 + 4 * torch.rand((), generator=g).item()
    return torch.randn(3, 2, generator=g), torch.randn(3, 2, generator=g), w


def _classifier_gradient(g):
    with torch.random.fork_rng():  # the reader's random state stays as it was
        torch.manual_seed(int(torch.randint(2 ** 31, (), generator=g)))  # the weights
        classifier = NoisyClassifier(ClassifierConfig(
            resolution=8, channels=8, channel_mult=(1,), num_res_blocks=1,
            attention_resolutions=(), num_classes=3))
    x_t = torch.randn(4, 3, 8, 8, generator=g)
    return classifier, x_t, _timesteps(g, 0), torch.randint(3, (4,), generator=g)


def _clip_logits(g):
    features = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    return *features, 1 + 3 * torch.rand((), generator=g)


def _contrastive_loss(g):
    return (4 * torch.randn(6, 6, generator=g),)


def _normalise_embedding(g):
    return (3 * torch.randn(4, 16, generator=g),)


def _prior_loss(g):
    z_i, noise = torch.stack(_unit_vectors(g, 4)), torch.randn(4, 8, generator=g)
    weight = torch.randn(8, 8, generator=g) / 3

    def model_fn(z_noisy, t):  # a fixed stand-in for the prior: (B, 8), (B,) steps -> (B, 8)
        return z_noisy @ weight * (1 - t[:, None] / 1000)
    return model_fn, _schedule(), z_i, _timesteps(g, 0), noise


def _select_candidates(g):
    return torch.randn(5, 3, 4, generator=g), torch.randn(5, 4, generator=g)


def _upsampler_condition(g):
    return torch.rand(2, 3, 8, 8, generator=g) * 2 - 1, 16


def _embedding_context(g):
    with torch.random.fork_rng():  # the reader's random state stays as it was
        torch.manual_seed(int(torch.randint(2 ** 31, (), generator=g)))  # the weights
        embedding_proj = torch.nn.Linear(6, 3 * 4)
    return torch.randn(2, 6, generator=g), torch.randn(2, 5, 4, generator=g), embedding_proj, 3


def _drop_condition(g):
    return torch.randn(8, 3, 2, generator=g), torch.rand(8, generator=g), 0.3


def _unit_vectors(g, n):
    return [math.sqrt(8) * v / v.norm() for v in torch.randn(n, 8, generator=g)]


def _slerp(g):
    return *_unit_vectors(g, 2), torch.linspace(0, 1, 5)


def _text_diff(g):
    return *_unit_vectors(g, 3), torch.linspace(0, 0.5, 4)


def _frechet_distance(g):
    def statistics(d=5, n=40):  # a mean and the covariance of n random points: symmetric PSD
        x = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.rand(d, generator=g)
        return x.mean(0) + torch.randn(d, generator=g), torch.cov(x.T)
    return *statistics(), *statistics()


def _value_and_gradient(answer):
    """straight_through is judged on its value and on the gradient reaching z_e, which must be
    the upstream gradient itself (here `weights`)."""
    def run(z_e, z_q, weights):
        out = answer(z_e, z_q)
        if not (torch.is_tensor(out) and out.requires_grad):  # no gradient reaches z_e at all
            return torch.full((2, *z_q.shape), float("nan"))
        (out * weights).sum().backward()
        return torch.stack([out.detach(), z_e.grad])
    return run


# name: (notebook, points, inputs(generator) -> arguments, what the answer returns)
EXERCISES = {
    "gaussian_kl": ("01_autoencoders", 2, _kl, "(B,) KL(N(mean, exp(logvar)) || N(0, I))"),
    "reparameterise": ("01_autoencoders", 1, _reparameterise, "z ~ N(mean, exp(logvar))"),
    "nearest_code": ("02_vqvae", 2, _nearest_code, "(N,) index of the nearest code"),
    "straight_through": ("02_vqvae", 2, _straight_through, "z_q, with z_e's gradient"),
    "q_sample": ("03_ddpm", 2, _q_sample, "x_t, DDPM eq. 4"),
    "q_posterior_mean": ("03_ddpm", 3, _q_posterior_mean, "the mean of q(x_{t-1} | x_t, x_0)"),
    "ddpm_loss": ("03_ddpm", 3, _ddpm_loss, "the simple loss of DDPM's Algorithm 1 (a scalar)"),
    "ddim_step": ("03_ddpm", 3, _ddim_step, "x_{t_prev}, DDIM eq. 12 with eta = 0"),
    "classifier_free_guidance": ("04_guidance", 1, _classifier_free_guidance, "the guided output"),
    "classifier_gradient": ("04_guidance", 3, _classifier_gradient,
                            "grad over x_t of sum_i log p(y_i | x_t_i, t_i)"),
    "clip_logits": ("05_clip", 2, _clip_logits, "(B, B) scaled cosine similarities"),
    "contrastive_loss": ("05_clip", 2, _contrastive_loss, "the symmetric InfoNCE loss"),
    "normalise_embedding": ("06_prior", 1, _normalise_embedding, "(B, D) of norm sqrt(D)"),
    "select_candidates": ("06_prior", 2, _select_candidates, "(B, D) the best candidates"),
    "prior_loss": ("06_prior", 3, _prior_loss, "the prior's loss on the clean z_i (a scalar)"),
    "upsampler_condition": ("07_decoder_upsamplers", 1, _upsampler_condition,
                            "the low-resolution image resized bilinearly"),
    "drop_condition": ("07_decoder_upsamplers", 2, _drop_condition, "c with dropped rows zeroed"),
    "embedding_context": ("07_decoder_upsamplers", 2, _embedding_context,
                          "(B, k + L, C) z_i's k tokens, then the caption's"),
    "slerp": ("08_unclip", 3, _slerp, "(K, D) spherical interpolation"),
    "text_diff": ("08_unclip", 2, _text_diff, "(K, D) z_i rotated towards the text diff"),
    "frechet_distance": ("09_real_data", 3, _frechet_distance,
                         "d^2 between N(mu_1, sigma_1) and N(mu_2, sigma_2) (a scalar)"),
}
ADAPTERS = {"straight_through": _value_and_gradient}
# The rows of an exercise's inputs that are its edges (the first two timesteps of _timesteps are
# the smallest and T - 1): messages name them, since an answer is often wrong only there.
EDGES = {"q_sample": {0: "t = 0", 1: "t = T - 1"},
         "q_posterior_mean": {0: "t = 1", 1: "t = T - 1"},
         "ddim_step": {0: "t_prev = -1, the step to x_0", 1: "t = 900"},
         "classifier_gradient": {0: "t = 0", 1: "t = T - 1"},
         "straight_through": {0: "the value", 1: "the gradient reaching z_e"}}


def inputs(name, seed):
    return EXERCISES[name][2](torch.Generator().manual_seed(seed))


def run(name, answer, seed):
    """The answer's output on the seed's inputs (exceptions propagate)."""
    return ADAPTERS.get(name, lambda f: f)(answer)(*inputs(name, seed))


def load_expected(which="public"):
    """{name: {seed: output}} stored by `python notebooks/grade.py expected`."""
    return torch.load(os.path.join(EXPECTED, f"{which}.pt"), weights_only=True)


def output(name, answer, seed):
    """The answer's output on the seed's inputs as a tensor, or what stopped it, in words."""
    try:
        got = run(name, answer, seed)
    except NotImplementedError:
        return "not answered yet (the function still raises NotImplementedError)"
    except Exception as e:  # a mistake in the answer: say what, without a traceback
        return f"it raised {type(e).__name__}: {e}"
    if isinstance(got, (int, float)):  # a plain number for a scalar answer is fine
        got = torch.tensor(float(got))
    if not torch.is_tensor(got):
        return f"expected a tensor, got {type(got).__name__}"
    return got.detach().cpu()


def compare(name, got, expected, atol=1e-4):
    """(right or not for each case, what differs): a case is a row of the output (one image,
    one timestep, one point), or the whole output when it is a scalar."""
    cases = len(expected) if expected.dim() else 1
    if isinstance(got, str):
        return [False] * cases, got
    if got.shape != expected.shape:
        return [False] * cases, f"shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
    error = (got.double() - expected.double()).abs()
    error = error.reshape(len(error), -1).amax(1) if error.dim() else error.reshape(1)
    right = [bool(e <= atol) for e in error]  # NaN counts as wrong
    wrong = [i for i, r in enumerate(right) if not r]
    if not wrong:
        return right, "right"
    if cases == 1:
        return right, f"largest difference from the answer {error.item():.3g}"
    named = ", ".join(f"{i}" + (f" ({EDGES[name][i]})" if i in EDGES.get(name, {}) else "")
                      for i in wrong[:4])
    return right, (f"{len(wrong)} of {cases} cases wrong (case {named}), largest difference "
                   f"{error.max().item():.3g}")


def verdict(name, answer, seed, expected, atol=1e-4):
    """(True or False, what to tell the reader) for one answer on one seed's inputs."""
    got = output(name, answer, seed)
    right, message = compare(name, got, expected, atol)
    if all(right) or isinstance(got, str) and got.startswith("not answered"):
        return all(right), message
    return False, f"not yet right: {message}"


def check(name, answer):
    """The notebooks' check: the answer on the public inputs, against the stored output."""
    right, message = verdict(name, answer, PUBLIC_SEED, load_expected()[name][PUBLIC_SEED])
    print(f"{name}: {message}")
    return right


def yours_or(name, answer, fallback):
    """The reader's answer where it passes its check, else the project's version: the notebooks
    train and sample with what the reader wrote as soon as it is right."""
    right = verdict(name, answer, PUBLIC_SEED, load_expected()[name][PUBLIC_SEED])[0]
    print(f"{name}: using " + ("yours" if right else "the project's until yours is right"))
    return answer if right else fallback


def outputs(answers, seeds):
    """{name: {seed: output or what stopped it}} of each exercise's my_NAME among `answers`
    ({notebook: [statements]}), each notebook's statements run in a namespace of its own. This
    runs in grade.py's separate process, on a copy of the project whose answers are blanked."""
    defined = {}
    for notebook, statements in answers.items():
        namespace = {"__name__": "submission"}
        for statement in statements:
            try:
                exec(statement, namespace)
            except Exception:  # a broken definition leaves its answer missing
                pass
        defined[notebook] = namespace
    results = {}
    for name, (notebook, *_) in EXERCISES.items():
        found = [ns[f"my_{name}"] for nb, ns in defined.items() if f"my_{name}" in ns]
        own = defined.get(notebook, {}).get(f"my_{name}")
        answer = own if own is not None else (found[-1] if found else None)
        results[name] = {seed: output(name, answer, seed) if answer is not None
                         else f"no my_{name} in the submission" for seed in seeds}
    return results


if __name__ == "__main__":  # grade.py's marking process: ANSWERS.json SEEDS OUT.pt
    with open(sys.argv[1]) as f:
        submitted = json.load(f)
    torch.save(outputs(submitted, json.loads(sys.argv[2])), sys.argv[3])
