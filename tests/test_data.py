"""data.py: the shapes spec, the caption checker, the loaders and the tokenizer."""
import hashlib
import json
import os
import pickle
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

import data
from data import (COLOURS, HOLDOUT_PAIRS, POSITIONS, SIZES, ByteTokenizer, ShapesDataset,
                  check_image, check_images, render)


def test_shapes_item_has_documented_fields():
    item = ShapesDataset(4, resolution=32, seed=0)[1]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert -1 <= item["image"].min() and item["image"].max() <= 1
    assert item["caption"] == data.caption_of(item["attributes"])
    assert item["label"] == data.SHAPES.index(item["attributes"]["objects"][0]["shape"])


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
    counts = {p: sum(pre == p for _, pre in scenes) for p in data.PREFIXES}
    assert all(400 < c < 600 for c in counts.values()), counts


def _digest(n):
    ds = ShapesDataset(n, resolution=32, seed=7)
    h = hashlib.sha256()
    for i in range(n):
        item = ds[i]
        h.update(item["image"].numpy().tobytes() + item["caption"].encode())
    return h.hexdigest()


def test_shapes_deterministic_across_processes():
    code = ("import sys; sys.path.insert(0, '.'); from tests.test_data import _digest; "
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


def _tiny_cifar(root, n=10):
    """Write the official layout: cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}."""
    rng = np.random.default_rng(0)
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder)
    names = [f"class{i}".encode() for i in range(10)]
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({b"label_names": names, b"num_vis": 3072}, f)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, n).tolist(), b"batch_label": name.encode()}
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(batch, f)
    archive = os.path.join(root, "cifar-10-python.tar.gz")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    return folder, archive


def test_cifar10_loads_archive_and_folder(tmp_path):
    folder, archive = _tiny_cifar(str(tmp_path))
    from_tar = data.load_cifar10(archive)
    from_dir = data.load_cifar10(str(tmp_path))
    assert from_tar.images.shape == (50, 3, 32, 32) and from_tar.images.dtype == torch.uint8
    assert torch.equal(from_tar.images, from_dir.images)
    raw = pickle.load(open(os.path.join(folder, "data_batch_1"), "rb"))
    assert torch.equal(from_tar.images[0].flatten(), torch.from_numpy(raw[b"data"][0]))
    assert from_tar.captions[0][0] == f"a photo of a class{raw[b'labels'][0]}"
    assert len(data.load_cifar10(archive, split="test")) == 10
    assert data.load_data(f"cifar10:{archive}", 16).images.shape[-1] == 16


def test_cifar10_download_verifies_md5(tmp_path):
    _, archive = _tiny_cifar(str(tmp_path / "src"))
    url = "file://" + archive
    md5 = hashlib.md5(open(archive, "rb").read()).hexdigest()
    path = data.download_cifar10(str(tmp_path / "dst"), url=url, md5=md5)
    assert len(data.load_cifar10(path)) == 50
    with pytest.raises(ValueError, match="MD5 mismatch"):
        data.download_cifar10(str(tmp_path / "bad"), url=url, md5="0" * 32)


def test_cifar10_wrong_format_names_path_and_fix(tmp_path):
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tar")
    with pytest.raises(FileNotFoundError, match="junk.tar.gz.*cifar-10-python.tar.gz"):
        data.load_cifar10(str(junk))


def _save(path, mode):
    img = Image.new(mode, (40, 30), 128 if mode in ("L", "P") else (10, 200, 30, 255)[:len(mode)])
    img.save(path)


def test_folder_of_class_subfolders(tmp_path):
    for cls, mode in [("cat", "L"), ("dog", "RGBA"), ("dog", "P"), ("cat", "RGB")]:
        os.makedirs(tmp_path / cls, exist_ok=True)
        _save(tmp_path / cls / f"{mode}.png", mode)
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    with pytest.warns(UserWarning, match="skipped 1 file"):
        d = data.load_folder(str(tmp_path), resolution=16)
    assert d.images.shape == (4, 3, 16, 16)
    assert d.class_names == ("cat", "dog") and d.labels.tolist() == [0, 0, 1, 1]
    assert d.captions[2] == ["a photo of a dog"]


def test_folder_with_metadata_jsonl(tmp_path):
    for i in range(3):
        _save(tmp_path / f"{i}.png", "RGB")
    rows = [{"file_name": f"{i}.png", "text": f"caption {i}"} for i in range(3)]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    d = data.load_data(f"folder:{tmp_path}", resolution=8)
    assert d.images.shape == (3, 3, 8, 8) and d.captions == [["caption 0"], ["caption 1"],
                                                             ["caption 2"]]
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "0.png"}\n')
    with pytest.raises(ValueError, match="metadata.jsonl:1"):
        data.load_folder(str(tmp_path))


def test_coco_mini_is_built_once_and_cached(tmp_path):
    os.makedirs(tmp_path / "annotations")
    os.makedirs(tmp_path / "val2017")
    images, annotations = [], []
    for i in range(4):
        _save(tmp_path / "val2017" / f"{i:012d}.jpg", "RGB")
        images.append({"id": 10 + i, "file_name": f"{i:012d}.jpg", "width": 40, "height": 30})
        annotations += [{"id": 2 * i, "image_id": 10 + i, "caption": f"thing {i} "},
                        {"id": 2 * i + 1, "image_id": 10 + i, "caption": f"other {i}"}]
    (tmp_path / "annotations" / "captions_val2017.json").write_text(
        json.dumps({"images": images, "annotations": annotations}))
    d = data.load_coco(str(tmp_path), "val", resolution=16, n=3)
    assert d.images.shape == (3, 3, 16, 16) and d.captions[1] == ["thing 1", "other 1"]
    for f in os.listdir(tmp_path / "val2017"):
        os.remove(tmp_path / "val2017" / f)
    again = data.load_coco(str(tmp_path), "val", resolution=16, n=3)  # from the cache alone
    assert torch.equal(again.images, d.images) and again.captions == d.captions


def test_load_data_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        data.load_data(f"cifar10:{tmp_path}/nowhere")
    with pytest.raises(ValueError, match="unknown data set 'mnist'"):
        data.load_data("mnist")
    with pytest.raises(FileNotFoundError, match="captions_train2017.json"):
        data.load_data(f"coco:{tmp_path}")


def test_tokenizer_round_trip_and_padding():
    tok = ByteTokenizer(context_length=32)
    tokens = tok(["a small red circle", "é"])
    assert tokens.shape == (2, 32)
    assert tokens[0, 0] == tok.sot and tokens[0, 19] == tok.eot
    assert (tokens[0, 20:] == tok.pad).all()
    assert tok.decode(tokens[0]) == "a small red circle" and tok.decode(tokens[1]) == "é"


def test_tokenizer_truncates_with_warning():
    tok = ByteTokenizer(context_length=10)
    with pytest.warns(UserWarning, match="truncated"):
        tokens = tok(["a large purple triangle"])
    assert tokens[0, -1] == tok.eot and tok.decode(tokens[0]) == "a large "


def _random_text(rng, max_len=120):
    """Any code points, lone surrogates included (what pasting from anywhere can produce)."""
    return "".join(chr(rng.randint(1, 0x10FFFF)) if rng.random() < 0.3 else
                   chr(rng.randint(32, 126)) for _ in range(rng.randint(0, max_len)))


def test_tokenizer_fuzz_never_raises_and_keeps_its_shape():
    import random
    import warnings
    rng = random.Random(0)
    tok = ByteTokenizer(context_length=40)
    texts = [_random_text(rng) for _ in range(500)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the documented truncation warning
        tokens = tok(texts)
    assert tokens.shape == (500, 40) and tokens.min() >= 0 and tokens.max() < tok.vocab_size
    assert ((tokens == tok.eot).sum(1) == 1).all()      # one end token, always kept
    for t, row in zip(texts, tokens):
        if len(t.encode("utf-8", errors="replace")) <= 38:
            assert tok.decode(row) == t.encode("utf-8", errors="replace").decode("utf-8")


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
        result = data.check_image(image, captions[i])
        assert all(isinstance(v, bool) for v in result.values())
        try:
            data.check_image(image, _random_text(rng, 60))
        except ValueError as e:
            assert "not a shapes caption" in str(e)
