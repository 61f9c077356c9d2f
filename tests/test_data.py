"""data.py: the loaders read the formats users have and fail in one line; grids."""
import hashlib
import json
import os
import pickle
import shutil
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

import data


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
    with pytest.warns(UserWarning, match="skipped 1 of 5 images.*notes.txt"):
        d = data.load_folder(str(tmp_path), resolution=16)
    assert d.images.shape == (4, 3, 16, 16)
    assert d.class_names == ("cat", "dog") and sorted(d.labels.tolist()) == [0, 0, 1, 1]
    assert [c[0] for c in d.captions] == [f"a photo of a {d.class_names[y]}" for y in d.labels]


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


FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")  # real bytes: see its README
SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


def _psnr(a, b):
    return 10 * torch.log10(255.0 ** 2 / (a.double() - b.double()).pow(2).mean()).item()


def test_real_cifar10_archive_and_its_jpeg_folders_agree(tmp_path):
    archive = os.path.join(FIXTURES, "cifar-10-mini.tar.gz")
    with pytest.warns(UserWarning, match="4 of 5 train batches missing.*data_batch_2"):
        train = data.load_cifar10(archive)
    test = data.load_cifar10(archive, "test")
    # The official first labels (the data README), the class names, our captions.
    assert train.labels[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert test.labels.tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert train.class_names[0] == "airplane" and len(train) == 20
    assert test.captions[3][0] == "a photo of an airplane"
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path, filter="data")
    with pytest.warns(UserWarning):
        assert torch.equal(data.load_cifar10(str(tmp_path)).images, train.images)
    # The same pictures as JPEG class folders (train/ and test/): within JPEG's loss of the
    # lossless pixels, and far from any other image.
    # test/airplane/0000.jpg is test_batch's image 3, test/cat/0000 and 0001 its images 0 and 8
    # (the official test labels start 3, 8, 8, 0, 6, 6, 1, 6, 3), train/cat/0000 and 0001 are
    # data_batch_1's images 9 and 17; the other JPEGs are not in the cut. Labels: airplane 0, cat 1.
    for split, lossless, expected, n in [("test", test, {0: 1, 3: 0, 8: 1}, 4),
                                         ("train", train, {9: 1, 17: 1}, 6)]:
        folders = data.load_data(f"folder:{FIXTURES}/cifar10-jpg-mini", split=split)
        assert folders.class_names == ("airplane", "cat") and len(folders) == n
        matches = {}
        for jpeg, label in zip(folders.images, folders.labels.tolist()):
            psnr = [_psnr(jpeg, image) for image in lossless.images]
            best = max(range(len(psnr)), key=psnr.__getitem__)
            if psnr[best] > 23:
                matches[best] = label
            assert sorted(psnr)[-2] < 15  # far from every other image
        assert matches == expected


def test_cifar10_without_a_batch_of_the_split_names_the_file(tmp_path):
    with tarfile.open(os.path.join(FIXTURES, "cifar-10-mini.tar.gz")) as tar:
        tar.extractall(tmp_path, filter="data")
    os.remove(tmp_path / "cifar-10-batches-py" / "test_batch")
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py.*no test_batch"):
        data.load_cifar10(str(tmp_path), "test")


def test_flickr8k_captions_as_json_and_as_csv_are_the_same_data():
    json_file, csv_file = (os.path.join(FIXTURES, "flickr8k-mini", f) for f in
                           ("captions_coco_style.json", "captions.txt"))
    splits = {}
    for split in ("train", "test"):
        a = data.load_data(f"captions:{json_file}", 32, split=split)
        b = data.load_data(f"captions:{csv_file}", 32, split=split)
        assert torch.equal(a.images, b.images) and a.captions == b.captions
        assert all(len(c) == 5 for c in a.captions) and a.images.shape[1:] == (3, 32, 32)
        splits[split] = {tuple(c) for c in a.captions}
    # No split in the data: a fixed half (at most 1,000 images) is held out, disjoint from train.
    assert len(splits["train"]) == len(splits["test"]) == 6
    assert not splits["train"] & splits["test"]
    first = [c for c in splits["train"] | splits["test"] if c[0].startswith("A child in a pink")]
    assert first == [("A child in a pink dress is climbing up a set of stairs in an entry way .",
                      "A girl going into a wooden building .",
                      "A little girl climbing into a wooden playhouse .",
                      "A little girl climbing the stairs to her playhouse .",
                      "A little girl in a pink dress going into a wooden cabin .")]


def test_captions_skip_missing_images_unreadable_images_and_orphan_captions(tmp_path):
    shutil.copytree(os.path.join(FIXTURES, "flickr8k-mini"), tmp_path / "f")
    meta = json.loads((tmp_path / "f" / "captions_coco_style.json").read_text())
    names = sorted(im["file_name"] for im in meta["images"])
    os.remove(tmp_path / "f" / "images" / names[0])
    (tmp_path / "f" / "images" / names[1]).write_bytes(b"not a jpeg")
    meta["annotations"].append({"id": -1, "image_id": 999, "caption": "no such image"})
    (tmp_path / "f" / "captions_coco_style.json").write_text(json.dumps(meta))
    with pytest.warns(UserWarning) as caught:
        kept = [len(data.load_captions(str(tmp_path / "f" / "captions_coco_style.json"), split))
                for split in ("train", "test")]
    messages = " ".join(str(w.message) for w in caught)
    assert sum(kept) == 10 and "skipped 1 captions whose image_id" in messages
    assert "missing or not readable" in messages
    with pytest.raises(ValueError, match="not a COCO-captions JSON"):
        (tmp_path / "bad.json").write_text('{"images": []}')
        data.load_captions(str(tmp_path / "bad.json"))


def test_coco_official_layout_keeps_every_caption_and_centre_crops():
    root = os.path.join(FIXTURES, "coco-mini")
    val = data.load_coco(root, "val", resolution=32)
    meta = json.load(open(os.path.join(root, "annotations", "captions_val2017.json")))
    first = min(meta["images"], key=lambda im: im["id"])
    assert (first["width"], first["height"]) != (80, 80)  # not square
    assert val.captions[0] == [a["caption"].strip() for a in meta["annotations"]
                               if a["image_id"] == first["id"]]
    with Image.open(os.path.join(root, "val2017", first["file_name"])) as img:
        w, h = img.size
        side = min(w, h)
        crops = [np.array(img.convert("RGB").crop((x, y, x + side, y + side))
                          .resize((32, 32), Image.BICUBIC))
                 for x, y in [((w - side) // 2, (h - side) // 2), (0, 0)]]
    centre, corner = (torch.from_numpy(c).permute(2, 0, 1) for c in crops)
    # The loader lets the JPEG decoder downscale first (draft): a level or two off, no more.
    assert _psnr(val.images[0], centre) > 35 > _psnr(val.images[0], corner)
    assert len(data.load_data(f"coco:{root}", 16, split="train")) == 3


@pytest.mark.skipif(not os.path.isdir(SHARED), reason="the project's shared data is not here")
def test_the_shared_real_data_sets_load_whole(tmp_path):
    cifar = os.path.join(SHARED, "cifar-10-subset-python.tar.gz")
    with pytest.warns(UserWarning, match="4 of 5"):
        assert len(data.load_cifar10(cifar)) == 4000
    assert data.load_cifar10(cifar, "test").labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    with tarfile.open(os.path.join(SHARED, "flickr8k-64.tar.gz")) as tar:
        tar.extractall(tmp_path, filter="data")
    sizes = [data.load_captions(str(tmp_path / "captions.txt"), split, 16)
             for split in ("train", "test")]
    assert [len(d) for d in sizes] == [7091, 1000]
    assert sum(len(c) for d in sizes for c in d.captions) == 40455


def test_load_data_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        data.load_data(f"cifar10:{tmp_path}/nowhere")
    with pytest.raises(ValueError, match="unknown data set 'mnist'"):
        data.load_data("mnist")
    with pytest.raises(FileNotFoundError, match="captions_train2017.json"):
        data.load_data(f"coco:{tmp_path}")
