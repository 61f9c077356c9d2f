"""diffusion.py: closed forms in float64, samplers against an exact denoiser, guidance, learning.

The toy problem: data from a mixture of two 2-D Gaussians, for which the ideal noise predictor
and the ideal noisy classifier are known in closed form. A correct sampler driven by them must
reproduce the mixture; guidance must pull samples towards the requested component."""
import math

import pytest
import torch

from data import shapes_data
from diffusion import (DDPM, RING_CENTRES, ClassifierConfig, DDPMConfig, GaussianDiffusion,
                       NoisyClassifier, PointDenoiser, classifier_free_guidance,
                       classifier_guidance, cosine_beta_schedule, linear_beta_schedule,
                       ring_angle_entropy, ring_fidelity, ring_posterior, toy_rings)

MEANS = torch.tensor([[-2.0, 0.0], [2.0, 0.0]])
STD = 0.5  # each component is N(mean, STD^2 I), equal weights


def _component_log_probs(diffusion, x_t, t):
    """log N(x_t; sqrt(abar) mu_k, (abar s^2 + 1 - abar) I) for each k: (B, K), and the variance."""
    abar = diffusion.alphas_cumprod[t].float()[:, None]                   # (B, 1)
    var = abar * STD ** 2 + 1 - abar                                      # (B, 1)
    diff = x_t[:, None, :] - abar.sqrt()[:, None] * MEANS[None]           # (B, K, 2)
    return -0.5 * (diff ** 2).sum(-1) / var - torch.log(var), var, diff


def exact_eps(diffusion, labels=None):
    """eps*(x_t) = -sqrt(1 - abar_t) grad log p(x_t), of the mixture or of one component."""
    def model_fn(x_t, t):
        log_p, var, diff = _component_log_probs(diffusion, x_t, t)
        weights = torch.softmax(log_p, dim=1)                             # p(k | x_t)
        if labels is not None:
            weights = torch.nn.functional.one_hot(labels, 2).float()
        score = -(weights[:, :, None] * diff).sum(1) / var                # (B, 2)
        return -(1 - diffusion.alphas_cumprod[t].float()[:, None]).sqrt() * score
    return model_fn


def exact_classifier(diffusion):
    """p(k | x_t) of the mixture, as logits, in the NoisyClassifier's calling convention."""
    return lambda x_t, t: _component_log_probs(diffusion, x_t, t)[0]


def _diffusion(T=200):
    return GaussianDiffusion(cosine_beta_schedule(T), clip_x0="none")


def test_schedules_and_alphas_cumprod():
    betas = linear_beta_schedule(1000)
    assert betas.dtype == torch.float64 and betas[0] == 1e-4 and abs(betas[-1] - 0.02) < 1e-15
    T, s = 1000, 0.008
    f = [math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2 for t in range(T + 1)]
    abar = torch.tensor([f[t] / f[0] for t in range(1, T + 1)], dtype=torch.float64)
    d = GaussianDiffusion(cosine_beta_schedule(T))
    # Equal wherever the 0.999 clip on beta is not active (the last step only).
    assert torch.allclose(d.alphas_cumprod[:-1], abar[:-1], rtol=1e-10, atol=1e-15)
    loop = torch.ones(1, dtype=torch.float64)
    for t, beta in enumerate(betas[:10]):
        loop = loop * (1 - beta)
        assert abs(GaussianDiffusion(betas).alphas_cumprod[t] - loop) < 1e-15


def test_q_sample_matches_closed_form():
    d = GaussianDiffusion(linear_beta_schedule(1000))
    x0, noise = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)
    t = torch.tensor([0, 10, 500, 999])
    abar = torch.cumprod(1 - linear_beta_schedule(1000), 0)[t].view(-1, 1, 1, 1)
    expected = abar.sqrt() * x0.double() + (1 - abar).sqrt() * noise.double()
    assert torch.allclose(d.q_sample(x0, t, noise).double(), expected, atol=1e-6)


def test_q_posterior_matches_bayes_rule():
    """q(x_{t-1} | x_t, x_0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x_0): multiply the two Gaussians."""
    d = GaussianDiffusion(cosine_beta_schedule(100))
    x0, x_t = torch.randn(5, 3), torch.randn(5, 3)
    t = torch.tensor([1, 2, 30, 60, 99])
    mean, var, log_var = d.q_posterior(x0, x_t, t)
    betas = cosine_beta_schedule(100)
    abar = torch.cumprod(1 - betas, 0)
    a_t, ab_prev, b_t = (1 - betas[t])[:, None], abar[t - 1][:, None], betas[t][:, None]
    # the precision-weighted product of N(x_t / sqrt(a_t), b_t / a_t)
    # and N(sqrt(ab_prev) x0, 1 - ab_prev)
    p1, p2 = a_t / b_t, 1 / (1 - ab_prev)
    exact_var = 1 / (p1 + p2)
    exact_mean = exact_var * (p1 * x_t.double() / a_t.sqrt() + p2 * ab_prev.sqrt() * x0.double())
    assert torch.allclose(mean.double(), exact_mean, atol=1e-5)
    assert torch.allclose(var.double().expand(5, 3), exact_var.expand(5, 3), rtol=1e-5)
    assert torch.allclose(log_var.double().exp(), var.double(), rtol=1e-5)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_parameterisations_convert_exactly(prediction):
    d = GaussianDiffusion(cosine_beta_schedule(100), prediction=prediction, clip_x0="none")
    x0, noise, t = torch.randn(6, 2), torch.randn(6, 2), torch.randint(0, 100, (6,))
    x_t = d.q_sample(x0, t, noise)
    target = d.training_target(x0, t, noise)
    eps, x0_hat = d.predict_eps_x0(lambda x, s: target, x_t, t)  # a perfect model's output
    assert torch.allclose(x0_hat, x0, atol=1e-4) and torch.allclose(eps, noise, atol=1e-4)


@pytest.mark.parametrize("prediction,offset", [("eps", 1.0), ("eps", 0.5), ("x0", 1.0),
                                               ("v", 1.0), ("v", 0.5), ("v", 0.0)])
def test_min_snr_caps_the_weight_of_the_x0_error_at_gamma(prediction, offset):
    # Whatever the target, the weighted loss of one wrong prediction must equal
    # min(w, gamma) * |x0_hat - x0|^2, w the simple loss's own weight of the x_0 error: SNR for
    # eps (Min-SNR exactly), 1 for x0, SNR + 1 for v; for v the offset replaces the 1.
    d = GaussianDiffusion(cosine_beta_schedule(100), prediction, "none", min_snr_gamma=5.0,
                          min_snr_offset=offset)
    x0, t = torch.randn(8, 2), torch.arange(0, 96, 12)
    output = torch.randn(8, 2)  # the network's (wrong) raw output
    torch.manual_seed(0)
    loss = d.training_loss(lambda x, s: output, x0, t)
    torch.manual_seed(0)
    x_t = d.q_sample(x0, t, torch.randn_like(x0))
    _, x0_hat = d.predict_eps_x0(lambda x, s: output, x_t, t)
    snr = d.alphas_cumprod[t] / (1 - d.alphas_cumprod[t])
    w = {"eps": snr, "x0": torch.ones_like(snr), "v": snr + offset}[prediction]
    expected = (w.clamp(max=5.0) * (x0_hat - x0).double().pow(2).mean(1)).mean()
    assert abs(loss.item() - expected.item()) < 1e-4 * expected.item()
    plain = GaussianDiffusion(cosine_beta_schedule(100), prediction, "none")
    assert torch.equal(plain.loss_weight(t), torch.ones(8))


def test_v_is_the_published_definition():
    # A round trip passes a consistently wrong v; Salimans & Ho's definition does not:
    # v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0, and x_0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v.
    d = GaussianDiffusion(cosine_beta_schedule(100), prediction="v", clip_x0="none")
    x0, noise, t = torch.randn(6, 2), torch.randn(6, 2), torch.randint(0, 100, (6,))
    abar = d.alphas_cumprod[t].float()[:, None]
    v = abar.sqrt() * noise - (1 - abar).sqrt() * x0
    assert torch.allclose(d.training_target(x0, t, noise), v, atol=1e-6)
    x_t = d.q_sample(x0, t, noise)
    assert torch.allclose(d.x0_from_v(x_t, t, v), x0, atol=1e-5)


def test_ddim_with_eta_one_over_all_steps_is_ddpm():
    torch.manual_seed(0)
    d = _diffusion(50)
    model_fn = exact_eps(d)
    x_t, t = torch.randn(8, 2), torch.full((8,), 30)
    torch.manual_seed(1)
    ddpm = d.p_sample(model_fn, x_t, t)
    torch.manual_seed(1)
    ddim = d.ddim_sample(model_fn, x_t, t, t - 1, eta=1.0)
    assert torch.allclose(ddpm, ddim, atol=1e-5)


def test_ddim_steps_each_item_to_its_own_t_prev():
    # One item ends the chain (t_prev = -1, abar = 1: the step returns x_0), the others do not.
    d = _diffusion(50)
    x_t, eps = torch.randn(3, 2), torch.randn(3, 2)
    t, t_prev = torch.tensor([5, 30, 49]), torch.tensor([-1, 20, 48])
    step = d.ddim_sample(lambda x, t: eps, x_t, t, t_prev)
    abar = d.alphas_cumprod.float()
    x0 = (x_t - (1 - abar[t, None]).sqrt() * eps) / abar[t, None].sqrt()
    assert torch.allclose(step[0], x0[0], atol=1e-5)
    for i in (1, 2):
        expected = abar[t_prev[i]].sqrt() * x0[i] + (1 - abar[t_prev[i]]).sqrt() * eps[i]
        assert torch.allclose(step[i], expected, atol=1e-5)


def test_the_ring_toys_exact_posterior_and_figures():
    # All three rings pass through the origin; (0, 2) is on ring 0 alone.
    p = ring_posterior(torch.tensor([[0.0, 0.0], [0.0, 2.0]]))
    assert torch.allclose(p[0], torch.full((3,), 1 / 3), atol=1e-4)
    assert p[1, 0] > 0.999
    x, y = toy_rings(3000, torch.Generator().manual_seed(0))
    assert torch.bincount(y).min() > 900
    assert 0.75 < ring_fidelity(x, y) < 0.9  # the rest lie where rings cross
    assert ring_angle_entropy(x, y) > 3.5  # spread evenly round each ring: log2 12 = 3.58
    top = RING_CENTRES[y] + torch.tensor([0.0, 1.0])  # every point at the top of its ring
    assert ring_angle_entropy(top, y) == 0
    assert ring_fidelity(x + 2 * torch.tensor([0.0, 1.0]), y) < 0.3  # off the rings


def test_point_denoiser_null_label_and_shapes():
    model = PointDenoiser(num_classes=3, width=32, coordinate_dim=8)
    x, t = torch.randn(4, 2), torch.tensor([0, 5, 50, 199])
    assert model(x, t).shape == (4, 2)
    assert torch.equal(model(x, t), model(x, t, torch.full((4,), 3)))
    assert not torch.allclose(model(x, t), model(x, t, torch.zeros(4, dtype=torch.long)))


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_samplers_reproduce_the_data_distribution(sampler):
    torch.manual_seed(0)
    d = _diffusion(200)
    if sampler == "ddpm":
        x = d.p_sample_loop(exact_eps(d), (4000, 2))
    else:
        x = d.ddim_sample_loop(exact_eps(d), (4000, 2), steps=50)
    right = x[:, 0] > 0
    assert abs(right.float().mean() - 0.5) < 0.04  # equal weights
    for k, side in enumerate([~right, right]):
        assert torch.allclose(x[side].mean(0), MEANS[k], atol=0.08)
        assert torch.allclose(x[side].std(0), torch.tensor([STD, STD]), atol=0.06)


def test_sampling_is_deterministic_for_a_seed():
    # Ancestral sampling draws fresh noise at every step: one seed, one result; another seed,
    # another. DDIM with eta = 0 draws none: from a given x_T it is the same whatever the seed.
    d = _diffusion(50)
    runs = []
    for seed in (3, 3, 4):
        torch.manual_seed(seed)
        runs.append(d.p_sample_loop(exact_eps(d), (5, 2)))
    assert torch.equal(runs[0], runs[1]) and not torch.allclose(runs[0], runs[2])
    x_T = torch.randn(5, 2)
    ddim = []
    for seed in (3, 4):
        torch.manual_seed(seed)
        ddim.append(d.ddim_sample_loop(exact_eps(d), (5, 2), steps=10, noise=x_T))
    assert torch.equal(*ddim)


def _share_in_component_zero(x):
    return (x[:, 0] < 0).float().mean().item()


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_classifier_guidance_pulls_towards_the_class(sampler):
    d = _diffusion(100)
    y = torch.zeros(2000, dtype=torch.long)
    shares = []
    for scale in [0.0, 1.0, 3.0]:
        torch.manual_seed(0)
        cond_fn = classifier_guidance(exact_classifier(d), y, scale)
        if sampler == "ddpm":
            x = d.p_sample_loop(exact_eps(d), (2000, 2), cond_fn=cond_fn)
        else:
            x = d.ddim_sample_loop(exact_eps(d), (2000, 2), steps=50, cond_fn=cond_fn)
        shares.append(_share_in_component_zero(x))
    assert abs(shares[0] - 0.5) < 0.05 and shares[1] > 0.95 and shares[2] >= shares[1], shares


def test_classifier_free_guidance_limits_and_extrapolation():
    d = _diffusion(100)
    uncond = exact_eps(d)

    def model_fn(x_t, t, c):  # c: 0 = component 0, 2 = the null label
        conditional = exact_eps(d, torch.zeros(len(x_t), dtype=torch.long))(x_t, t)
        return torch.where((c == 0)[:, None], conditional, uncond(x_t, t))
    x_t, t = torch.randn(3, 2), torch.tensor([10, 50, 90])
    label, null = torch.zeros(3, dtype=torch.long), torch.full((3,), 2)
    for w, expected in [(0.0, uncond(x_t, t)), (1.0, exact_eps(d, label)(x_t, t))]:
        assert torch.allclose(classifier_free_guidance(model_fn, label, null, w)(x_t, t), expected)
    # w > 1 moves further from the unconditional prediction than the conditional one does.
    u, c = uncond(x_t, t), exact_eps(d, label)(x_t, t)
    g = classifier_free_guidance(model_fn, label, null, 3.0)(x_t, t)
    assert torch.allclose(g - u, 3 * (c - u), atol=1e-6)


def _tiny_unet_config(**kw):
    return dict(resolution=16, channels=16, channel_mult=(1, 2), num_res_blocks=1,
                attention_resolutions=(8,), num_heads=2, dropout=0.0, **kw)


def test_class_conditional_ddpm_loss_falls_on_tiny_shapes():
    torch.manual_seed(0)
    images, _, labels = shapes_data(64, 16, seed=0).batch(torch.arange(64))
    model = DDPM(DDPMConfig(**_tiny_unet_config(num_classes=3), timesteps=100))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    fixed_t = torch.randint(0, 100, (64,))

    @torch.no_grad()
    def fixed_loss():  # on fixed timesteps and noise, so the comparison is not noise
        torch.manual_seed(1)
        return model.diffusion.training_loss(lambda x, t: model.unet(x, t, labels), images,
                                             fixed_t).item()
    before = fixed_loss()
    for step in range(80):
        torch.manual_seed(100 + step)
        loss, _ = model.loss(images, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = fixed_loss()
    assert after < before / 3, (before, after)
    x = model.eval().sample(2, torch.tensor([0, 1]), guidance_scale=2.0, steps=5)
    assert x.shape == (2, 3, 16, 16) and x.abs().max() <= 1


def test_label_dropout_rate_is_p_uncond(monkeypatch):
    # In DDPM.loss itself, not only in the helper: record the labels the U-Net is given.
    torch.manual_seed(0)
    model = DDPM(DDPMConfig(**_tiny_unet_config(num_classes=3), timesteps=10))
    seen = []

    def recording(x_t, t, y=None):
        seen.append(y)
        return torch.zeros_like(x_t)
    monkeypatch.setattr(model.unet, "forward", recording)
    labels = torch.randint(0, 3, (20000,))
    model.loss(torch.zeros(20000, 3, 8, 8), labels)  # any size: the U-Net is stubbed
    null = seen[0] == 3
    assert abs(null.float().mean().item() - model.cfg.p_uncond) < 0.006
    assert torch.equal(seen[0][~null], labels[~null])  # the others are left as they were


@pytest.mark.parametrize("max_timestep", [0, 1, 7])
def test_classifier_trains_on_the_timesteps_below_max_timestep(monkeypatch, max_timestep):
    # 1: clean images only (a plain classifier); 0: the whole schedule.
    cfg = ClassifierConfig(**_tiny_unet_config(), timesteps=50, max_timestep=max_timestep)
    clf = NoisyClassifier(cfg)
    seen = []
    monkeypatch.setattr(clf, "forward", lambda x_t, t: seen.append(t) or torch.zeros(len(t), 3))
    clf.loss(torch.zeros(4000, 3, 8, 8), torch.zeros(4000, dtype=torch.long))
    assert seen[0].max().item() == (max_timestep or 50) - 1 and seen[0].min().item() == 0
    features = NoisyClassifier(cfg).features(torch.zeros(2, 3, 16, 16), torch.zeros(2).long())
    assert features.shape == (2, cfg.channels * cfg.channel_mult[-1])


def test_noisy_classifier_learns_and_guides():
    torch.manual_seed(0)
    images, _, labels = shapes_data(64, 16, seed=0).batch(torch.arange(64))
    cfg = ClassifierConfig(**{k: v for k, v in _tiny_unet_config().items()}, timesteps=100)
    clf = NoisyClassifier(cfg)
    opt = torch.optim.Adam(clf.parameters(), lr=2e-3)
    t = torch.zeros(64, dtype=torch.long)
    first = torch.nn.functional.cross_entropy(clf(images, t), labels).item()
    for _ in range(150):
        loss, _ = clf.loss(images, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = torch.nn.functional.cross_entropy(clf(images, t), labels).item()
    assert last < first / 2, (first, last)
    # Guides: the gradient is scale x grad log p(y | x_t), so a small step along it raises the
    # log-probability of every requested class, and the scale only multiplies it.
    x, y = images[:4], labels[:4]
    grad = classifier_guidance(clf, y, 2.0)(x, t[:4])
    assert torch.allclose(grad, 2 * classifier_guidance(clf, y, 1.0)(x, t[:4]), atol=1e-6)
    with torch.no_grad():
        def log_p(z):
            return torch.log_softmax(clf(z, t[:4]), -1)[torch.arange(4), y]
        stepped = x + 1e-3 * grad / grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        assert (log_p(stepped) > log_p(x)).all()


def test_ddpm_samples_the_configs_ddim_steps_unless_told(monkeypatch):
    model = DDPM(DDPMConfig(**_tiny_unet_config(), timesteps=20, sample_steps=7)).eval()
    seen = []
    monkeypatch.setattr(model.diffusion, "ddim_sample_loop",
                        lambda fn, shape, steps, *args: seen.append(steps) or torch.zeros(shape))
    model.sample(2)
    model.sample(2, steps=3)
    assert seen == [7, 3]


def test_ddpm_guidance_scale_zero_and_one_are_the_unconditional_and_conditional_model():
    torch.manual_seed(0)
    model = DDPM(DDPMConfig(**_tiny_unet_config(num_classes=3), timesteps=10)).eval()
    for p in model.parameters():  # random weights, so the label matters
        torch.nn.init.normal_(p, std=0.05)
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([3, 7]), torch.tensor([0, 2])
    with torch.no_grad():
        null = model.unet(x, t, torch.full_like(y, 3))
        cond = model.unet(x, t, y)
        assert torch.allclose(model.model_fn(y, 0.0)(x, t), null, atol=1e-5)
        assert torch.allclose(model.model_fn(y, 1.0)(x, t), cond, atol=1e-5)
        assert torch.allclose(model.model_fn(y, 2.5)(x, t), null + 2.5 * (cond - null), atol=1e-4)
