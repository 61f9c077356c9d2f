"""Every stage's figures: what each trained model reports, on test data, and its pictures.

train.py calls `evaluate(stage, ...)` when a stage finishes and `evaluate_unclip` after the main
job; the figures land in OUT/STAGE_metrics.json. Defines, per rung:
  - evaluate, one stage; for the autoencoders: reconstruction MSE (and PSNR) against the mean
    image, the VAE's negative ELBO in bits per dimension, the VQ-VAE's perplexity and dead codes;
  - the code prior's evaluate_code_prior and scene_rate; evaluate_ddpm, class_conditional_quality;
  - CLIP's evaluate_clip, zero_shot_accuracy, shapes_zero_shot, binding (against minimal foils),
    binding_probe (leading_object, fit_linear_probe);
  - evaluate_prior; evaluate_decoder (the cascade's ceiling); evaluate_upsampler;
  - evaluate_unclip, the cascade: exact_match on evaluation_scenes' captions (evaluation_prompts);
    elsewhere CLIP-FID (feature_statistics, frechet_distance) and clip_score.

The Frechet distance (Heusel et al. 2017, arXiv 1706.08500) compares Gaussians fitted to two sets
of features: d^2 = ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)). Published FID takes
Inception-v3's features (bench/fid.py has that network); ours are our CLIP's image embeddings,
comparable between our own runs only: "CLIP-FID (own features; not comparable to published FID)".
Tr((S_1 S_2)^(1/2)) sums the square roots of the eigenvalues of S_1^(1/2) S_2 S_1^(1/2), symmetric
positive semi-definite with S_1 S_2's eigenvalues: real, non-negative (clamped for rounding).
Run `python evaluate.py --models OUT --zero-shot cifar10:PATH` for a CLIP's zero-shot accuracy on
another labelled data set, `python evaluate.py --models OUT --ddpm-quality DATA` for a
class-conditional DDPM's. (bench/fid.py sweeps the decoder's guidance scale by CLIP-FID and FID.)
"""
import argparse
import json
import math
import os
import sys

import torch
import torch.nn.functional as F

import data as datasets
import shapes
from checkpoint import load_checkpoint, load_clip, load_unclip, native_bf16, restore_model
from clip import clip_embeddings, image_embeddings, retrieval, zero_shot_weights
from stages import STAGES
from unclip import unclip_sample


def feature_statistics(features):
    """(N, D) features -> mean (D,) and covariance (D, D), in float64."""
    return features.double().mean(0), torch.cov(features.double().T)


def _sqrtm_psd(matrix):
    """The square root of a symmetric positive semi-definite matrix, by eigendecomposition."""
    values, vectors = torch.linalg.eigh(matrix)
    return vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(mu_1, sigma_1, mu_2, sigma_2):
    """The squared Frechet distance between N(mu_1, sigma_1) and N(mu_2, sigma_2): FID."""
    root_1 = _sqrtm_psd(sigma_1)
    cross = torch.linalg.eigvalsh(root_1 @ sigma_2 @ root_1).clamp(min=0).sqrt().sum()
    distance = (mu_1 - mu_2).pow(2).sum() + sigma_1.trace() + sigma_2.trace() - 2 * cross
    return distance.clamp(min=0).item()


@torch.no_grad()
def clip_score(clip_model, images, captions):
    """The CLIP score (Hessel et al. 2021) without its 2.5 rescaling: mean image-caption cosine."""
    text = torch.cat([F.normalize(clip_model.encode_text(captions[i:i + 250]), dim=-1).cpu()
                      for i in range(0, len(captions), 250)])
    return (image_embeddings(clip_model, images).cpu() * text).sum(1).mean().item()


# ----------------------------------------------------------------------------------------------
# Shapes figures: CLIP's zero-shot accuracy, and the caption checker over many images.

@torch.no_grad()
def shapes_zero_shot(model, seed, n=1000, split="train"):
    """Zero-shot accuracy per attribute (colour, shape, size, position) on n one-object test
    scenes, over the 180 canonical captions in every training prefix (prompt ensembling, CLIP
    section 3.1.4). A value's probability sums its captions': averaged into one class vector they
    would blur what a binding text tower keeps apart (docs/decisions.md). Relations: binding()."""
    captions = shapes.one_object_captions()
    named = [shapes.parse_caption(c) for c in captions]
    text_e = zero_shot_weights(model, [[c] for c in captions],
                               [p + "{}" for p in shapes.PREFIXES])              # (180, D)
    one = datasets.shapes_data(n, model.cfg.resolution, seed, split, prefixes=False, objects=1,
                               stream="test")
    scenes = [shapes.parse_caption(c[0]) for c in one.captions]
    image_e = image_embeddings(model, one.images)
    p_caption = (model.logit_scale.exp() * image_e @ text_e.T).softmax(-1)       # (n, 180)
    results = {}
    for attribute, values in [("colour", list(shapes.COLOURS)), ("shape", list(shapes.SHAPES)),
                              ("size", list(shapes.SIZES)), ("position", list(shapes.POSITIONS))]:
        def value(scene):
            return scene["position"] if attribute == "position" else scene["objects"][0][attribute]
        names = torch.tensor([[value(c) == v for c in named] for v in values],
                             dtype=p_caption.dtype, device=p_caption.device)     # (V, 180)
        predicted = (p_caption @ names.T).argmax(1).tolist()
        truth = [values.index(value(s)) for s in scenes]
        results[attribute] = sum(p == t for p, t in zip(predicted, truth)) / n
    return results


@torch.no_grad()
def binding(model, seed, n=1000, split="train"):
    """Does CLIP bind attributes to objects? On n two-object test scenes, the share in which the
    image's embedding is nearer its true caption than each minimal foil (shapes.minimal_foils:
    relation reversed, objects trading places, colours, shapes); a tie counts half. Chance, 0.50 on
    every kind: knowing a scene's attributes but not which object has them, or where."""
    two = datasets.shapes_data(n, model.cfg.resolution, seed, split, prefixes=False, objects=2,
                               stream="test")
    device = model.logit_scale.device
    image_e = image_embeddings(model, two.images)
    captions = [c[0] for c in two.captions]
    foils = [shapes.minimal_foils(c) for c in captions]
    kinds = [kind for f in foils for kind in f]
    owner = torch.tensor([i for i, f in enumerate(foils) for _ in f], device=device)  # (F,)
    texts = captions + [text for f in foils for text in f.values()]
    text_e = F.normalize(torch.cat([model.encode_text(texts[i:i + 500])
                                    for i in range(0, len(texts), 500)]), dim=-1)
    true_score = (image_e * text_e[:n]).sum(-1)                            # (n,)
    foil_score = (image_e[owner] * text_e[n:]).sum(-1)                    # (F,)
    wins = ((true_score[owner] > foil_score) + 0.5 * (true_score[owner] == foil_score)).tolist()
    return {kind: sum(w for k, w in zip(kinds, wins) if k == kind) / kinds.count(kind)
            for kind in dict.fromkeys(kinds)}


def leading_object(caption):
    """The left (or upper) object of a two-object caption: {size, colour, shape}."""
    scene = shapes.parse_caption(caption)
    return scene["objects"][scene["relation"] not in ("to the left of", "above")]


def fit_linear_probe(features, labels, weight_decay=1e-3, iterations=200):
    """Softmax regression (N, D) -> C classes, fitted by L-BFGS on the mean cross-entropy plus
    weight_decay * ||W||^2 (from zeros: no randomness). Returns a function features -> class."""
    classes = int(labels.max()) + 1
    weight = torch.zeros(features.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    lbfgs = torch.optim.LBFGS([weight, bias], max_iter=iterations, line_search_fn="strong_wolfe")

    def closure():
        lbfgs.zero_grad()
        loss = (F.cross_entropy(features @ weight + bias, labels)
                + weight_decay * weight.square().sum())
        loss.backward()
        return loss
    with torch.enable_grad():
        lbfgs.step(closure)
    return lambda x: (x @ weight.detach() + bias.detach()).argmax(1)


@torch.no_grad()
def binding_probe(model, seed, n=1000, n_fit=2000, split="train"):
    """Is "which colour is where" in CLIP's (normalised) image embedding, whatever the text tower
    does with it? A linear probe for the colour and shape of a two-object scene's left (or upper)
    object, fitted on n_fit training-stream scenes, scored on n test ones. Chance: 1/6 colour, 1/3
    shape; a bag of attributes (one of two colours) scores about half on colour, binding near 1."""
    scenes = [datasets.shapes_data(count, model.cfg.resolution, seed, split, prefixes=False,
                                   objects=2, stream=stream)
              for count, stream in ((n_fit, "train"), (n, "test"))]
    z_fit, z_test = (image_embeddings(model, s.images).cpu() for s in scenes)   # (count, D)
    lead_fit, lead_test = ([leading_object(c[0]) for c in s.captions] for s in scenes)
    figures = {}
    for attribute, values in (("colour", list(shapes.COLOURS)), ("shape", list(shapes.SHAPES))):
        def labels(objects):
            return torch.tensor([values.index(o[attribute]) for o in objects])
        probe = fit_linear_probe(z_fit, labels(lead_fit))
        figures[attribute] = (probe(z_test) == labels(lead_test)).float().mean().item()
    return figures


def exact_match(images, captions):
    """The checker's exact-match rates: one-object, two-object, overall; none if it cannot read."""
    if not all(shapes.is_shapes_caption(c) for c in captions):
        return {}
    summary = shapes.check_images(images.cpu(), captions)
    return {f"exact_{group}": summary[group]["exact"] for group in ("one", "two")
            if group in summary} | {"exact": summary["exact"]}


def evaluation_scenes(n, resolution, seed, split="train", stream="test"):
    """n one-object, then n two-object scenes never trained on (stream "test" or "dev"): images
    (2n, 3, R, R) in [-1, 1], canonical captions. split "holdout": unseen colour-shape pairs."""
    batches = [datasets.shapes_data(n, resolution, seed, split, prefixes=False, objects=count,
                                    stream=stream).batch(torch.arange(n))[:2] for count in (1, 2)]
    return torch.cat([b[0] for b in batches]), [c for b in batches for c in b[1]]


def evaluation_prompts(n, seed, split="train", stream="test"):
    """The captions of evaluation_scenes: n one-object, then n two-object prompts."""
    return evaluation_scenes(n, 8, seed, split, stream)[1]  # 8 px: only the captions are used


# ----------------------------------------------------------------------------------------------
# Each stage's figures.

def evaluate_clip(model, test_data, train_data, seed):
    """Retrieval on test pairs; on shapes, zero-shot accuracy per attribute, and both again
    on the holdout split (colour-shape pairs never seen in training)."""
    figures = retrieval(model, test_data.images, [c[0] for c in test_data.captions])
    if test_data.labels is not None and not datasets.is_shapes(test_data):
        figures["zero_shot_accuracy"] = zero_shot_accuracy(model, test_data)
    if datasets.is_shapes(train_data):
        figures.update({f"zero_shot_{k}": v for k, v in shapes_zero_shot(model, seed).items()})
        figures.update({f"binding_{k}": v for k, v in binding(model, seed).items()})
        figures.update({f"probe_{k}": v for k, v in binding_probe(model, seed).items()})
        holdout = datasets.shapes_data(1000, model.cfg.resolution, seed, split="holdout",
                                       prefixes=False, stream="test")
        figures.update({f"holdout_{k}": v for k, v in retrieval(
            model, holdout.images, [c[0] for c in holdout.captions]).items()})
        figures.update({f"holdout_zero_shot_{k}": v
                        for k, v in shapes_zero_shot(model, seed, split="holdout").items()})
    return figures


@torch.no_grad()
def zero_shot_accuracy(model, data, templates=datasets.CIFAR10_TEMPLATES):
    """Classify labelled images (CIFAR-10, class folders) by their class names alone, each put
    in every template ("a photo of a cat", ...; CLIP's prompt ensembling). Chance: 1 / classes."""
    weights = zero_shot_weights(model, [[datasets.with_article(c)] for c in data.class_names],
                                templates)                                            # (C, E)
    predicted = (image_embeddings(model, data.images) @ weights.T).argmax(1).cpu()
    return (predicted == data.labels).float().mean().item()


def evaluate_ddpm(model, class_names, device, out, per_class=16):
    """A grid of DDIM samples, a row pair per class; on shapes, the share with the right shape."""
    if not model.cfg.num_classes:
        images = model.sample(32, device=device)
        datasets.save_grid(images, os.path.join(out, "ddpm_samples.png"), scale=3)
        return {}
    y = torch.arange(model.cfg.num_classes, device=device).repeat_interleave(per_class)
    images = model.sample(len(y), y, guidance_scale=1.0, device=device)
    datasets.save_grid(images, os.path.join(out, "ddpm_samples.png"), nrow=per_class, scale=3)
    if class_names != shapes.SHAPES:
        return {}
    _, right = shapes.shape_judgements(images.cpu(), [class_names[i] for i in y.tolist()])
    return {"shape_accuracy": sum(right) / len(right)}


@torch.no_grad()
def class_conditional_quality(ddpm, classifier, real_train, real_test, out, scales=(0, 1, 2, 4),
                              per_class=50, steps=None):
    """A class-conditional DDPM on real data, judged by a plain classifier trained on the real
    training images (`train.py classifier --max_timestep=1`): per guidance scale w, its accuracy on
    the samples of each class and the Frechet distance in its pooled features to as many real test
    images (FID's recipe, our classifier: our runs only). Floor and ceiling: real images'."""
    device, n = next(ddpm.parameters()).device, per_class * ddpm.cfg.num_classes

    def judge(images, labels):  # accuracy, and features (N, C)
        t = torch.zeros(len(images), dtype=torch.long, device=device)
        features = torch.cat([classifier.features(x, t[:len(x)]).float().cpu()
                              for x in images.to(device).split(250)])
        predicted = classifier.head[-1](features.to(device)).argmax(1).cpu()
        return (predicted == labels.cpu()).float().mean().item(), features
    test = real_test.batch(torch.arange(min(n, len(real_test))))
    accuracy, test_features = judge(test[0], test[2])
    stats = feature_statistics(test_features)
    train = real_train.batch(torch.randperm(len(real_train),
                                            generator=torch.Generator().manual_seed(0))[:n])
    figures = {"classifier_test_accuracy": accuracy, "real_train_vs_test_fd": frechet_distance(
        *feature_statistics(judge(train[0], train[2])[1]), *stats)}
    y = torch.arange(ddpm.cfg.num_classes, device=device).repeat_interleave(per_class)
    for w in scales:
        torch.manual_seed(0)
        images = torch.cat([ddpm.sample(len(c), c, guidance_scale=w, steps=steps, device=device)
                            for c in y.split(250)])
        accuracy, features = judge(images, y)
        figures[f"w{w}_accuracy"] = accuracy
        figures[f"w{w}_fd"] = frechet_distance(*feature_statistics(features), *stats)
        pick = torch.cat([torch.arange(8) + k * per_class for k in range(ddpm.cfg.num_classes)])
        datasets.save_grid(images[pick.to(device)].cpu(),
                           os.path.join(out, f"ddpm_samples_w{w}.png"), nrow=8, scale=2)
    return figures


def evaluate_prior(model, clip_model, test_data, n=200):
    """Mean cosine of sampled to true image embeddings, beside the text's and another image's."""
    images, captions, _ = test_data.batch(torch.arange(min(n, len(test_data))))
    z_i, z_t, tokens = clip_embeddings(clip_model, images, captions)
    sampled = model.sample(z_t, tokens)
    return {"cosine_sample_image": F.cosine_similarity(sampled, z_i).mean().item(),
            "cosine_text_image": F.cosine_similarity(z_t, z_i).mean().item(),
            "cosine_other_image": F.cosine_similarity(z_i.roll(1, 0), z_i).mean().item()}


def evaluate_decoder(model, clip_model, test_data, out, seed, n=100, guidance_scale=None):
    """Exact match of test images decoded from their own z_i and caption: the cascade's ceiling."""
    if datasets.is_shapes(test_data):
        images, captions = evaluation_scenes(n, model.cfg.resolution, seed)
    else:
        images, captions, _ = test_data.batch(torch.arange(min(2 * n, len(test_data))))
    z_i, _, tokens = clip_embeddings(clip_model, images, captions)
    with torch.autocast(z_i.device.type, torch.bfloat16, enabled=native_bf16(z_i.device)):
        decoded = model.sample(z_i, tokens, guidance_scale)
    datasets.save_grid(torch.cat([images[:8], images[-8:], decoded[:8].cpu(), decoded[-8:].cpu()]),
                       os.path.join(out, "decoder_samples.png"), nrow=16, scale=3)
    return exact_match(decoded, captions)


def scene_rate(images):
    """The share of images (N, 3, R, R) in which shapes.find_objects reads one or two objects."""
    return sum(len(shapes.find_objects(image)) in (1, 2) for image in images) / len(images)


def evaluate_code_prior(model, train_data, test_data, out, n=200):
    """Test bits per code against the context-free and uniform priors; on shapes, scene rates."""
    device, vq = model.head.weight.device, model.vqvae

    def encode(data):  # (N, h w) codes of up to 5,000 images
        return torch.cat([model.encode(data.batch(i)[0].to(device))
                          for i in torch.arange(min(5000, len(data))).split(500)])
    histogram = torch.bincount(encode(train_data).flatten(), minlength=vq.cfg.num_codes)
    unigram = (histogram + 1) / (histogram + 1).sum()           # (K,), smoothed
    codes = encode(test_data)                                   # (N, h w)
    nll = torch.cat([model.nll(c) for c in codes.split(250)])   # (N, h w)
    figures = {"bits_per_code": nll.mean().item() / math.log(2),
               "context_free_bits_per_code": -unigram[codes].log2().mean().item(),
               "uniform_bits_per_code": math.log2(vq.cfg.num_codes)}
    samples = model.sample(n)
    context_free = vq.decode_codes(torch.multinomial(unigram, n * model.side ** 2, True)
                                   .view(n, model.side, model.side))
    datasets.save_grid(torch.cat([samples[:32], context_free[:16]]).cpu(),
                       os.path.join(out, "code_prior_samples.png"), scale=2)
    if datasets.is_shapes(test_data):  # the checker reads shapes scenes only
        real = test_data.batch(torch.arange(n))[0].to(device)
        figures.update(scene_rate_samples=scene_rate(samples.cpu()),
                       scene_rate_context_free=scene_rate(context_free.cpu()),
                       scene_rate_reconstructions=scene_rate(vq.reconstruct(real).cpu()),
                       scene_rate_real=scene_rate(real.cpu()))
    return figures


def evaluate_upsampler(model, test_data, stage, out, n=64):
    """Upsample box-downsampled test images; MSE and exact match against bilinear resizing."""
    images, captions, _ = test_data.batch(torch.arange(min(n, len(test_data))))
    x = images.to(next(model.parameters()).device)
    low = F.interpolate(x, size=model.cfg.low_resolution, mode="area")
    upsampled, bilinear = model.sample(low), model.condition(low).clamp(-1, 1)
    datasets.save_grid(torch.cat([bilinear[:8], upsampled[:8], x[:8]]).cpu(),
                       os.path.join(out, f"{stage}_samples.png"), nrow=8, scale=2)
    figures = {"mse": (upsampled - x).pow(2).mean().item(),
               "bilinear_mse": (bilinear - x).pow(2).mean().item()}
    figures.update({f"{k}_upsampled": v for k, v in exact_match(upsampled, captions).items()})
    figures.update({f"{k}_bilinear": v for k, v in exact_match(bilinear, captions).items()})
    return figures


@torch.no_grad()
def evaluate(stage, model, train_data, test_data, device, out, seed):
    """The figures a finished stage reports on its training seed's test data, and its pictures."""
    torch.manual_seed(0)
    if stage == "decoder":
        return evaluate_decoder(model, load_clip(out, device), test_data, out, seed)
    if STAGES[stage].reads == "clip":  # the priors
        return evaluate_prior(model, load_clip(out, device), test_data)
    if stage in ("upsampler", "upsampler2"):
        return evaluate_upsampler(model, test_data, stage, out)
    if stage == "code_prior":
        return evaluate_code_prior(model, train_data, test_data, out)
    x, _, labels = test_data.batch(torch.arange(min(1000, len(test_data))))
    x = x.to(device)
    if stage == "ddpm":
        return evaluate_ddpm(model, train_data.class_names, device, out)
    if stage == "clip":
        return evaluate_clip(model, test_data, train_data, seed)
    if stage == "classifier":
        t = torch.full((len(x),), model.cfg.timesteps // 2, device=device)
        return {"accuracy_t0": (model(x, 0 * t).argmax(1).cpu() == labels).float().mean().item(),
                "accuracy_half_T": (model(model.diffusion.q_sample(x, t, torch.randn_like(x)), t)
                                    .argmax(1).cpu() == labels).float().mean().item()}
    mean_image = datasets.to_unit_range(train_data.images.float().mean(0)).to(device)
    figures = {"baseline_mse": (x - mean_image).pow(2).mean().item()}
    chunks = x.split(250)
    recon = torch.cat([model.reconstruct(c).clamp(-1, 1) for c in chunks])
    figures["mse"] = (recon - x).pow(2).mean().item()
    figures["psnr"] = 10 * math.log10(4 / figures["mse"])  # dB; the pixel range [-1, 1] spans 2
    if stage == "dae":  # how well it removes the corruption it was trained on
        denoised = torch.cat([model.reconstruct(model.corrupt(c)).clamp(-1, 1) for c in chunks])
        figures["denoised_mse"] = (denoised - x).pow(2).mean().item()
    if stage == "vae":
        terms = [model.elbo_terms(c) for c in chunks]  # (log p(x | z), KL) per image
        figures["nats"] = torch.cat([kl - log_px for log_px, kl in terms]).mean().item()
        figures["bpd"] = figures["nats"] / (x[0].numel() * math.log(2))
        pictures = [model.sample(16, device), model.interpolate(x[0], x[1], 8),
                    model.interpolate(x[2], x[3], 8)]
        datasets.save_grid(torch.cat(pictures), os.path.join(out, "vae_samples.png"), scale=3)
    if stage == "vqvae":
        figures["perplexity"] = model(x)[4].item()
        figures["dead_codes"] = model.quantizer.dead_codes()
    datasets.save_grid(torch.cat([x[:16], recon[:16]]), os.path.join(out, f"{stage}_recon.png"),
                       scale=3)
    return figures


def evaluate_unclip(out, device, seed, n=100, holdout=50):
    """Text to image through the whole cascade, on the captions of scenes training never drew (most
    captions seen): exact match at every resolution, per attribute at the last. On shapes, n
    one-object and n two-object prompts of the seed's test stream, and `holdout` of each
    with colour-shape pairs never trained on (holdout_*); elsewhere CLIP-FID against 2n test
    images, the CLIP score beside real and shuffled pairs'. Writes a grid and its prompts."""
    clip_model, prior, decoder, upsamplers = load_unclip(out, device)
    data = load_checkpoint(os.path.join(out, "decoder.pt"), "decoder")["run"]["data"]
    on_shapes = data.startswith("shapes")
    if on_shapes:
        prompts = evaluation_prompts(n, seed) + evaluation_prompts(holdout, seed, "holdout")
    else:  # the first caption of 2n test images
        test = datasets.load_data(data, decoder.cfg.resolution, 2 * n, seed, "test")
        prompts = [c[0] for c in test.captions[:2 * n]]
    torch.manual_seed(0)
    stages, _ = unclip_sample(clip_model, prior, decoder, upsamplers, prompts,
                              bf16=native_bf16(torch.device(device)))
    figures = {}
    for images in stages:
        res = images.shape[-1]
        figures.update({f"{k}_{res}px": v for k, v in exact_match(images[:2 * n],
                                                                  prompts[:2 * n]).items()})
        if on_shapes and holdout:
            figures.update({f"holdout_{k}_{res}px": v for k, v in exact_match(
                images[2 * n:], prompts[2 * n:]).items()})
        if not on_shapes:
            real = datasets.load_data(data, res, 2 * n, seed, "test").images[:2 * n]
            figures[f"clip_fid_{res}px"] = frechet_distance(
                *feature_statistics(image_embeddings(clip_model, real).cpu()),
                *feature_statistics(image_embeddings(clip_model, images).cpu()))
            figures[f"clip_score_{res}px"] = clip_score(clip_model, images, prompts)
            if res == stages[-1].shape[-1]:  # the floor and ceiling of the CLIP score
                figures["clip_score_real"] = clip_score(clip_model, real, prompts)
                figures["clip_score_shuffled"] = clip_score(clip_model, real.roll(1, 0), prompts)
    if on_shapes:  # per attribute, final images: one_colour, two_relation, two_b_shape, ...
        summary = shapes.check_images(stages[-1][:2 * n].cpu(), prompts[:2 * n])
        figures.update({f"{group}_{key}": v for group in ("one", "two")
                        for key, v in summary[group].items() if key not in ("n", "exact")})
    shown = (list(range(8)) + list(range(n, n + 8)) if on_shapes  # one-object, two-object
             else list(range(min(16, len(prompts)))))
    datasets.save_grid(stages[-1][shown].cpu(), os.path.join(out, "unclip_samples.png"),
                       nrow=8, scale=2)
    with open(os.path.join(out, "unclip_samples.txt"), "w") as f:
        f.write("".join(f"row {i // 8 + 1}, column {i % 8 + 1}: {prompts[j]}\n"
                        for i, j in enumerate(shown)))
    return figures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="out")
    task = parser.add_mutually_exclusive_group(required=True)
    task.add_argument("--zero-shot", metavar="DATA", help="zero-shot accuracy of "
                      "MODELS/clip.pt on DATA's test split (e.g. cifar10:PATH)")
    task.add_argument("--ddpm-quality", metavar="DATA", help="MODELS/ddpm.pt judged by "
                      "MODELS/classifier.pt (trained with --max_timestep=1) on DATA")
    parser.add_argument("--guidance", default="0,1,2,4", help="the DDPM's guidance scales")
    parser.add_argument("--per-class", type=int, default=50, help="samples per class")
    args = parser.parse_args(argv)
    command = " ".join(["python"] + sys.argv)
    if args.ddpm_quality:
        ddpm, classifier = (restore_model(load_checkpoint(os.path.join(args.models, f"{s}.pt"),
                                                          s)) for s in ("ddpm", "classifier"))
        res = ddpm.cfg.resolution
        figures = class_conditional_quality(
            ddpm, classifier, datasets.load_data(args.ddpm_quality, res, split="train"),
            datasets.load_data(args.ddpm_quality, res, split="test"), args.models,
            [float(s) for s in args.guidance.split(",")], args.per_class)
        print(figures)
        with open(os.path.join(args.models, "ddpm_quality.json"), "w") as f:
            json.dump(dict(figures, per_class=args.per_class, command=command), f, indent=1)
        return
    model = load_clip(args.models)
    test = datasets.load_data(args.zero_shot, model.cfg.resolution, split="test")
    if test.labels is None:
        raise ValueError(f"{args.zero_shot} has no class labels to classify by")
    figures = {"zero_shot_accuracy": zero_shot_accuracy(model, test),
               "chance": 1 / len(test.class_names), "images": len(test), "command": command}
    print(figures)
    with open(os.path.join(args.models, "zero_shot.json"), "w") as f:
        json.dump(figures, f, indent=1)


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}")
