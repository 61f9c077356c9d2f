"""shapes.py: scenes that are pure functions of (seed, i), splits that hold, a checker that is
right on ground truth and catches each wrong attribute."""
import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import data
import shapes
from test_clip import _random_text
from shapes import (COLOURS, HOLDOUT_PAIRS, POSITIONS, SIZES, ShapesDataset, check_image,
                    check_images, render)


def test_shapes_item_has_documented_fields():
    item = ShapesDataset(4, resolution=32, seed=0)[1]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert -1 <= item["image"].min() and item["image"].max() <= 1
    assert item["caption"] == shapes.caption_of(item["attributes"])
    assert item["label"] == shapes.SHAPES.index(item["attributes"]["objects"][0]["shape"])


def test_shapes_pixels_match_attributes():
    ds = ShapesDataset(200, resolution=64, seed=3)
    for i in range(len(ds)):
        scene, _ = ds.attributes(i)
        image = render(scene, 64).astype(int)  # (64, 64, 3)
        outside = np.ones((64, 64), dtype=bool)
        for obj in scene["objects"]:
            cx, cy = obj["centre"]
            # The centre pixel is inside every shape (a triangle is half as wide at mid height).
            assert tuple(image[int(cy), int(cx)]) == COLOURS[obj["colour"]]
            # Area from coverage (a pixel is a * colour + (1 - a) * white) in the object's box.
            ink, extent = 255 - np.array(COLOURS[obj["colour"]]), SIZES[obj["size"]]
            h = extent / 2
            box = 255 - image[int(cy - h):int(np.ceil(cy + h)), int(cx - h):int(np.ceil(cx + h))]
            area = np.clip(box @ ink / (ink @ ink), 0, 1).sum()
            expected = {"square": 1.0, "circle": np.pi / 4, "triangle": 0.5}[obj["shape"]]
            assert abs(area / extent ** 2 - expected) < 0.03, (obj, area / extent ** 2)
            outside[int(cy - h):int(np.ceil(cy + h)), int(cx - h):int(np.ceil(cx + h))] = False
        assert (image[outside] == 255).all()  # white beyond the objects' extents
        objs = scene["objects"]
        if len(objs) == 1:
            anchor = POSITIONS[scene["position"]]
            assert max(abs(a - c) for a, c in zip(anchor, objs[0]["centre"])) <= 3
        else:
            (ax, ay), (bx, by) = objs[0]["centre"], objs[1]["centre"]
            assert objs[0]["colour"] != objs[1]["colour"]
            expect = {"to the left of": bx - ax > 24, "to the right of": ax - bx > 24,
                      "above": by - ay > 24, "below": ay - by > 24}
            assert expect[scene["relation"]]


def test_shapes_mix_and_prefixes():
    ds = ShapesDataset(2000, seed=1, prefixes=True)
    scenes = [ds.attributes(i) for i in range(len(ds))]
    one = sum(len(s["objects"]) == 1 for s, _ in scenes) / len(scenes)
    assert 0.45 < one < 0.55
    counts = {p: sum(pre == p for _, pre in scenes) for p in shapes.PREFIXES}
    assert all(400 < c < 600 for c in counts.values()), counts


def _digest(n):
    ds = ShapesDataset(n, resolution=32, seed=7)
    h = hashlib.sha256()
    for i in range(n):
        item = ds[i]
        h.update(item["image"].numpy().tobytes() + item["caption"].encode())
    return h.hexdigest()


def test_shapes_deterministic_across_processes():
    code = ("import sys; sys.path[:0] = ['.', 'tests']; from test_shapes import _digest; "
            "print(_digest(20))")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    other = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                           check=True).stdout.strip()
    assert other == _digest(20)
    # Item i does not depend on which other items were drawn, or in which order.
    ds = ShapesDataset(10, seed=7)
    assert ds[5]["caption"] == ShapesDataset(10, seed=7)[5]["caption"]


def test_holdout_pairs_never_in_train():
    def pairs(scene):
        return {(o["colour"], o["shape"]) for o in scene["objects"]}
    train = ShapesDataset(1500, split="train", seed=0)
    holdout = ShapesDataset(300, split="holdout", seed=0)
    assert all(not pairs(train.attributes(i)[0]) & HOLDOUT_PAIRS for i in range(len(train)))
    assert all(pairs(holdout.attributes(i)[0]) & HOLDOUT_PAIRS for i in range(len(holdout)))


@pytest.mark.parametrize("resolution,target", [(32, 0.97), (64, 0.99)])
def test_checker_exact_match_on_ground_truth(resolution, target):
    d = data.shapes_data(400, resolution, seed=11, prefixes=False)
    summary = check_images(d.images, [c[0] for c in d.captions])
    assert summary["exact"] >= target, summary


def test_checker_catches_each_wrong_attribute():
    scene = {"objects": [{"shape": "circle", "colour": "red", "size": "small", "centre": (16, 32)},
                         {"shape": "square", "colour": "blue", "size": "large",
                          "centre": (48, 32)}],
             "relation": "to the left of"}
    image = torch.from_numpy(render(scene, 32)).permute(2, 0, 1)
    right = "a small red circle to the left of a large blue square"
    assert check_image(image, right)["exact"]
    assert check_image(image.float() / 127.5 - 1, right)["exact"]  # [-1, 1] input works too
    wrong = {"a_colour": "a small green circle to the left of a large blue square",
             "a_shape": "a small red triangle to the left of a large blue square",
             "b_size": "a small red circle to the left of a small blue square",
             "relation": "a small red circle above a large blue square"}
    for attribute, caption in wrong.items():
        result = check_image(image, caption)
        assert not result[attribute] and not result["exact"], attribute
    one = "a small red circle on the left"
    result = check_image(image, one)
    assert result["a_colour"] and result["position"] and not result["no_stray"]
    blank = torch.full((3, 32, 32), 255, dtype=torch.uint8)
    assert not any(check_image(blank, one).values())


def test_checker_rejects_non_captions():
    with pytest.raises(ValueError, match="not a shapes caption"):
        check_image(torch.zeros(3, 32, 32), "a photo of a dog")


def test_checker_fuzz_only_raises_its_documented_error():
    import random
    rng = random.Random(1)
    g = torch.Generator().manual_seed(1)
    captions = [c[0] for c in data.shapes_data(50, 32, seed=2, prefixes=False).captions]
    for i in range(50):
        image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=g)
        if i % 2:  # flat blocks of random colours, which look more like objects
            image = torch.randint(0, 256, (3, 4, 4), dtype=torch.uint8, generator=g)
            image = image.repeat_interleave(8, 1).repeat_interleave(8, 2)
        result = shapes.check_image(image, captions[i])
        assert all(isinstance(v, bool) for v in result.values())
        try:
            shapes.check_image(image, _random_text(rng, 60))
        except ValueError as e:
            assert "not a shapes caption" in str(e)


def test_one_object_captions_enumerate_every_filler():
    red = shapes.one_object_captions(colour="red")
    assert len(red) == len(set(red)) == 2 * 3 * 5
    assert all(shapes.parse_caption(c)["objects"][0]["colour"] == "red" for c in red)


def test_minimal_foils_each_make_the_one_edit_they_name():
    data_set = data.shapes_data(300, 32, seed=3, objects=2)
    same_shape = 0
    for (caption,) in data_set.captions:
        scene = shapes.parse_caption(caption)
        (a, b), relation = scene["objects"], scene["relation"]
        foils = shapes.minimal_foils(caption)
        parsed = {kind: shapes.parse_caption(foil) for kind, foil in foils.items()}  # valid
        assert all(foil != caption for foil in foils.values())
        assert parsed["relation"] == {"objects": [a, b], "relation": shapes.OPPOSITE[relation]}
        assert parsed["places"] == {"objects": [b, a], "relation": relation}
        for attribute in ("colour", "shape"):
            if a[attribute] == b[attribute]:
                assert attribute not in foils  # the edit would change nothing
                same_shape += attribute == "shape"
                continue
            swapped = [dict(a, **{attribute: b[attribute]}), dict(b, **{attribute: a[attribute]})]
            assert parsed[attribute] == {"objects": swapped, "relation": relation}
    assert 60 < same_shape < 140  # a third of the pairs share a shape
    with pytest.raises(ValueError, match="not a shapes caption"):
        shapes.minimal_foils("a red circle")


def test_contrastive_targets_key_captions_by_scene_and_add_foils_true_of_no_image_in_the_batch():
    torch.manual_seed(0)
    captions = ["a picture of a small red circle on the left", "a small red circle on the left",
                "a large blue square above a small green circle",
                "a small green circle below a large blue square",   # the scene before, reworded
                "a small green circle above a large blue square"]   # its objects trading places
    foils, keys = shapes.contrastive_targets(captions, hard_negatives=4)
    assert keys[0] == keys[1] == "a small red circle on the left" and keys[2] == keys[3]
    # Of each two-object caption's four foils, relation reversed and trading places describe
    # the scene of another image in the batch: left out. Trading colours and shapes remain.
    assert len(foils) == 3 * 2
    assert {shapes.scene_key(f) for f in foils}.isdisjoint(keys)
    assert "a large green square above a small blue circle" in foils  # captions[2], colours
    assert len(shapes.contrastive_targets(captions, hard_negatives=1)[0]) == 3
    assert shapes.contrastive_targets(["a photo of a cat", "a dog"], 2) == ((), None)  # not shapes
