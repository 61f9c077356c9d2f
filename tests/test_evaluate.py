"""evaluate.py: the Frechet distance against its closed forms; zero-shot, binding and the
binding probe on hand-built CLIPs whose answers are known; the cascade's figures."""
import json
import math
import os
import sys

import torch

import evaluate
import shapes
from evaluate import feature_statistics, frechet_distance


def test_identical_feature_sets_are_at_distance_zero():
    features = torch.randn(500, 16, generator=torch.Generator().manual_seed(0))
    stats = feature_statistics(features)
    assert abs(frechet_distance(*stats, *stats)) < 1e-8


def test_gaussians_with_diagonal_covariances_match_the_closed_form():
    # With S_1 = diag(a), S_2 = diag(b): Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)) = sum (sqrt a - sqrt b)^2
    mu_1, mu_2 = torch.tensor([0.0, 1.0, 2.0]).double(), torch.tensor([1.0, 1.0, -1.0]).double()
    a, b = torch.tensor([1.0, 4.0, 0.25]).double(), torch.tensor([9.0, 1.0, 0.25]).double()
    expected = (mu_1 - mu_2).pow(2).sum() + (a.sqrt() - b.sqrt()).pow(2).sum()   # 10 + 5
    assert abs(frechet_distance(mu_1, torch.diag(a), mu_2, torch.diag(b)) - expected) < 1e-9


def test_rotated_covariances_and_sampled_features():
    # Rotating both Gaussians by one orthogonal matrix leaves the distance unchanged, and the
    # statistics of many samples give the distance of the Gaussians they were drawn from.
    g = torch.Generator().manual_seed(1)
    q = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))[0]
    a, b = torch.tensor([1.0, 2.0, 3.0, 4.0]).double(), torch.tensor([2.0, 2.0, 1.0, 0.5]).double()
    mu_1, mu_2 = torch.zeros(4).double(), torch.ones(4).double()
    exact = frechet_distance(mu_1, torch.diag(a), mu_2, torch.diag(b))
    rotated = frechet_distance(q @ mu_1, q @ torch.diag(a) @ q.T, q @ mu_2, q @ torch.diag(b) @ q.T)
    assert abs(rotated - exact) < 1e-9
    n = 200000
    x = (torch.randn(n, 4, generator=g, dtype=torch.float64) * a.sqrt() + mu_1) @ q.T
    y = (torch.randn(n, 4, generator=g, dtype=torch.float64) * b.sqrt() + mu_2) @ q.T
    sampled = frechet_distance(*feature_statistics(x), *feature_statistics(y))
    assert abs(sampled - exact) < 0.05 * exact


def test_covariances_that_do_not_commute_match_the_eigenvalues_of_their_product():
    # Tr((S_1 S_2)^(1/2)) is the sum of the square roots of the eigenvalues of S_1 S_2 (real and
    # non-negative for positive definite S_1, S_2), which differs from Tr(S_1^(1/2) S_2^(1/2))
    # unless the two commute; random covariances in 5 dimensions do not.
    g = torch.Generator().manual_seed(2)
    a, b = (torch.randn(5, 5, generator=g, dtype=torch.float64) for _ in range(2))
    s_1, s_2 = a @ a.T + 0.1 * torch.eye(5), b @ b.T + 0.1 * torch.eye(5)
    assert not torch.allclose(s_1 @ s_2, s_2 @ s_1)
    mu_1, mu_2 = torch.zeros(5).double(), torch.full((5,), 0.5).double()
    cross = torch.linalg.eigvals(s_1 @ s_2).real.clamp(min=0).sqrt().sum()
    expected = (mu_1 - mu_2).pow(2).sum() + s_1.trace() + s_2.trace() - 2 * cross
    assert abs(frechet_distance(mu_1, s_1, mu_2, s_2) - expected.item()) < 1e-8


def test_the_cascade_is_scored_on_its_own_prompts(cascade, tmp_path, monkeypatch):
    # With a "cascade" that draws each held-out prompt's true scene, the main job's score must be
    # the checker's on ground truth (>= 0.97); with the pictures shifted by one prompt, near 0.
    scenes = {res: torch.cat([evaluate.evaluation_scenes(8, res, 0)[0],
                              evaluate.evaluation_scenes(4, res, 0, split="holdout")[0]])
              for res in (32, 64)}
    for shift, low, high in [(0, 0.97, 1.0), (1, 0.0, 0.3)]:
        monkeypatch.setattr(evaluate, "unclip_sample", lambda *args, **kwargs: (
            [scenes[32].roll(shift, 0), scenes[64].roll(shift, 0)], None))
        figures = evaluate.evaluate_unclip(str(cascade), "cpu", 0, n=8, holdout=4)
        for key in ("exact_one_32px", "exact_two_32px", "exact_one_64px", "exact_two_64px",
                    "holdout_exact_one_64px", "holdout_exact_two_64px", "two_relation"):
            assert low <= figures[key] <= high, (shift, key, figures)
    with open(cascade / "unclip_metrics.json") as f:  # what the main job itself wrote
        assert set(figures) <= set(json.load(f))


class _HandBuiltCLIP:
    """A 'CLIP' whose embeddings are known: the scene's attributes, one-hot, read from the
    caption or found in the pixels by the checker. bound=True lists them object by object (left
    or top object first); bound=False adds them up, forgetting which attribute was whose."""
    cfg = type("cfg", (), {"resolution": 32})
    logit_scale = torch.zeros(())

    def __init__(self, bound):
        self.bound = bound

    def embed(self, objects, vertical):
        values = [list(shapes.COLOURS), list(shapes.SHAPES), list(shapes.SIZES)]
        parts = [torch.tensor([float(vertical), 1.0 - vertical])]
        for o in objects:
            parts.append(torch.cat([torch.eye(len(v))[v.index(o[k])]
                                    for v, k in zip(values, ("colour", "shape", "size"))]))
        if not self.bound:
            parts = [parts[0], parts[1] + parts[2]]
        return torch.cat(parts)

    def encode_text(self, captions):
        out = []
        for caption in captions:
            scene = shapes.parse_caption(caption)
            a, b = scene["objects"]
            first = scene["relation"] in ("to the left of", "above")
            out.append(self.embed([a, b] if first else [b, a],
                                  scene["relation"] in ("above", "below")))
        return torch.stack(out)

    def encode_image(self, images):
        out = []
        for image in images:
            a, b = shapes.find_objects(image)
            (ax, ay), (bx, by) = a["centre"], b["centre"]
            vertical = abs(by - ay) > abs(bx - ax)
            out.append(self.embed(sorted([a, b], key=lambda o: o["centre"][vertical]), vertical))
        return torch.stack(out)


def test_binding_scores_one_for_a_model_that_binds_and_chance_for_a_bag_of_attributes():
    bound = evaluate.binding(_HandBuiltCLIP(bound=True), n=100, seed=5)
    assert set(bound) == {"relation", "places", "colour", "shape"}
    assert all(v == 1.0 for v in bound.values()), bound
    bag = evaluate.binding(_HandBuiltCLIP(bound=False), n=100, seed=5)
    assert all(v == 0.5 for v in bag.values()), bag  # every foil ties with its caption


class _OneObjectCLIP:
    """A 'CLIP' for one-object scenes whose embedding is the scene's attributes, one-hot: read
    from the caption, or found in the pixels by the checker; blind_to_shape leaves the image's
    shape out."""
    cfg = type("cfg", (), {"resolution": 32})
    logit_scale = torch.tensor(math.log(100.0))

    def __init__(self, blind_to_shape=False):
        self.blind_to_shape = blind_to_shape

    @staticmethod
    def embed(obj, position, shape=True):
        parts = [torch.eye(len(v))[list(v).index(obj[k])] for v, k in
                 [(shapes.COLOURS, "colour"), (shapes.SHAPES, "shape"), (shapes.SIZES, "size")]]
        parts[1] *= shape
        where = torch.eye(len(shapes.POSITIONS))[list(shapes.POSITIONS).index(position)]
        return torch.cat(parts + [where])

    def encode_text(self, captions):
        scenes = [shapes.parse_caption(c) for c in captions]
        return torch.stack([self.embed(s["objects"][0], s["position"]) for s in scenes])

    def encode_image(self, images):
        found = [shapes.find_objects(image)[0] for image in images]
        return torch.stack([self.embed(o, shapes._position_of(o["centre"]),
                                       shape=not self.blind_to_shape) for o in found])


def test_shapes_zero_shot_reads_each_attribute_and_misses_one_the_image_lacks():
    seeing = evaluate.shapes_zero_shot(_OneObjectCLIP(), n=60, seed=5)
    assert seeing == {"colour": 1.0, "shape": 1.0, "size": 1.0, "position": 1.0}
    blind = evaluate.shapes_zero_shot(_OneObjectCLIP(blind_to_shape=True), n=60, seed=5)
    assert blind["shape"] < 0.6 and blind["colour"] == 1.0, blind


def test_leading_object_is_the_left_or_upper_one_whichever_is_named_first():
    for caption, colour in [("a small red circle to the left of a large blue square", "red"),
                            ("a small red circle to the right of a large blue square", "blue"),
                            ("a small red circle above a large blue square", "red"),
                            ("a picture of a small red circle below a large blue square", "blue")]:
        assert evaluate.leading_object(caption)["colour"] == colour, caption


def test_binding_probe_reads_a_bound_embedding_and_not_a_bag_of_attributes():
    bound = evaluate.binding_probe(_HandBuiltCLIP(bound=True), n=100, n_fit=200, seed=5)
    assert bound == {"colour": 1.0, "shape": 1.0}
    # A bag of attributes knows the two colours but not which is on the left: about half.
    bag = evaluate.binding_probe(_HandBuiltCLIP(bound=False), n=100, n_fit=200, seed=5)
    assert 0.3 < bag["colour"] < 0.65 and bag["shape"] < 0.8, bag


def test_zero_shot_accuracy_reads_the_class_names_in_every_template():
    # A hand-built CLIP on two colours: a caption naming "an orange" points one way, "a blue"
    # the other; an image points by its mean red minus blue. Every image is classified right;
    # labels swapped, every one wrong.
    import data

    class Stub:
        cfg = type("cfg", (), {"resolution": 4})
        logit_scale = torch.zeros(())

        def encode_text(self, texts):
            return torch.tensor([[1.0, 0.0] if "an orange" in t else [0.0, 1.0] for t in texts])

        def encode_image(self, x):
            red_minus_blue = x[:, 0].mean((1, 2)) - x[:, 2].mean((1, 2))
            return torch.stack([red_minus_blue, -red_minus_blue], 1)

    images = torch.zeros(6, 3, 4, 4, dtype=torch.uint8)
    images[:3, 0], images[3:, 2] = 255, 255                  # three orange-red, three blue
    labelled = data.TensorData(images, [[""]] * 6, torch.tensor([0, 0, 0, 1, 1, 1]),
                               ("orange", "blue"))
    assert evaluate.zero_shot_accuracy(Stub(), labelled) == 1.0
    labelled.labels = 1 - labelled.labels
    assert evaluate.zero_shot_accuracy(Stub(), labelled) == 0.0


def test_class_conditional_quality_scores_the_requested_classes(tmp_path):
    # Two classes of real images, reddish and bluish; a classifier that reads the mean colour.
    # A "DDPM" that draws real images of the requested class at w >= 1 and only reddish ones at
    # w = 0 must score accuracy 1 and a distance near the real floor, then 0.5 and far off.
    import data

    def real(n, seed):
        g = torch.Generator().manual_seed(seed)
        labels = torch.arange(n) % 2
        images = (torch.rand(n, 3, 4, 4, generator=g) * 100).byte()
        images[labels == 0, 0] += 150
        images[labels == 1, 2] += 150
        return data.TensorData(images, [[""]] * n, labels, ("red", "blue"))

    pool = real(400, 1)

    class Classifier:
        head = [None, lambda f: f[:, [0, 2]]]  # logits: red, blue

        def features(self, x, t):
            return x.mean((2, 3))

    class DDPM(torch.nn.Module):
        cfg = type("cfg", (), {"num_classes": 2})

        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

        def sample(self, n, y, guidance_scale, steps, device):
            wanted = y if guidance_scale >= 1 else 0 * y
            index = torch.stack([(pool.labels == k).nonzero()[i, 0]
                                 for i, k in enumerate(wanted.tolist())])
            return pool.batch(index)[0]

    figures = evaluate.class_conditional_quality(DDPM(), Classifier(), real(200, 2), real(200, 3),
                                                 str(tmp_path), scales=(0, 1), per_class=20)
    assert figures["classifier_test_accuracy"] == 1.0
    assert figures["w1_accuracy"] == 1.0 and figures["w0_accuracy"] == 0.5
    floor = figures["real_train_vs_test_fd"]
    assert figures["w1_fd"] < 3 * floor < 100 * floor < figures["w0_fd"], figures


def test_development_set_script_scores_the_dev_stream_not_the_test_stream(cascade, capsys,
                                                                          monkeypatch):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))
    import dev_eval
    drawn, sample = [], dev_eval.unclip_sample
    monkeypatch.setattr(dev_eval, "unclip_sample",
                        lambda *args, **kwargs: drawn.append(args[4]) or sample(*args, **kwargs))
    dev_eval.main(["--models", str(cascade), "--n", "2", "--decoder-steps", "2",
                   "--upsampler-steps", "1"])
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("development set: seed 0's dev stream, n = 2 + 2")
    assert [line.split(":")[0] for line in printed[1:]] == ["32 px", "64 px"]
    assert drawn == [evaluate.evaluation_prompts(2, seed=0, stream="dev")]
    assert drawn[0] != evaluate.evaluation_prompts(2, seed=0)  # the test stream's
