"""data.py: the loaders read the formats users have and fail in one line; grids."""
import hashlib
import json
import os
import pickle
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
