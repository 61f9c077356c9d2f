"""Data: data sets held in memory, loaders for the formats users already have, image grids.

Every later file trains on what this one returns, so it fixes the conventions once: images are
float tensors (B, 3, H, W) in [-1, 1]; a data set in memory is a `TensorData` (uint8 images, one
or more captions per image, optional class labels).

- `shapes_data`: the built-in shapes scenes (shapes.py) rendered into a TensorData.
- Loaders: CIFAR-10's python archive (as downloaded, or extracted), image folders (class
  sub-folders, or a `metadata.jsonl` of captions), COCO captions ("COCO-mini", cached once).
  `load_data("cifar10:PATH", ...)` is how the command line names them.
- `grid`, `show_grid` and `save_grid`: many images as one picture.

Run `python data.py` to render shapes scenes into memory and save a grid of them.
"""
import hashlib
import json
import os
import pickle
import tarfile
import urllib.request
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from shapes import SHAPES, ShapesDataset, caption_of, render


# ----------------------------------------------------------------------------------------------
# Data sets in memory, and loaders for the formats users have.

@dataclass
class TensorData:
    """A data set held in memory: what every training loop in this project consumes."""
    images: torch.Tensor           # (N, 3, H, W) uint8
    captions: list                 # N lists of strings (one or more captions per image)
    labels: torch.Tensor = None    # (N,) int64 class labels, or None
    class_names: tuple = ()

    def __len__(self):
        return len(self.images)

    def batch(self, index, generator=None):
        """Images in [-1, 1], one caption per image (drawn with generator), labels."""
        images = self.images[index].float() / 127.5 - 1
        picks = torch.randint(0, 1 << 30, (len(index),), generator=generator).tolist()
        captions = [self.captions[i][p % len(self.captions[i])]
                    for i, p in zip(index.tolist(), picks)]
        labels = None if self.labels is None else self.labels[index]
        return images, captions, labels


def shapes_data(n, resolution=32, seed=0, split=None, prefixes=True, objects=None):
    """Render n shapes scenes into a TensorData (about 0.2 ms per image at 32 px)."""
    ds = ShapesDataset(n, resolution, seed, split, prefixes, objects)
    scenes = [ds.attributes(i) for i in range(n)]
    images = torch.from_numpy(np.stack([render(s, resolution) for s, _ in scenes]))
    captions = [[p + caption_of(s)] for s, p in scenes]
    labels = torch.tensor([SHAPES.index(s["objects"][0]["shape"]) for s, _ in scenes])
    return TensorData(images.permute(0, 3, 1, 2).contiguous(), captions, labels, SHAPES)


def _fail(path, expected, fix):
    raise FileNotFoundError(f"{path}: {expected}. {fix}")


def square_image(img, resolution, resample=Image.BICUBIC):
    """A PIL image, centre-cropped to a square and resized -> (R, R, 3) uint8; grey, RGBA and
    palette images become RGB."""
    img = img.convert("RGB")
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side))
    return np.array(img.resize((resolution, resolution), resample))


CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_TEMPLATES = ("a photo of a {}", "a picture of a {}", "an image of a {}", "a small {}")


def download_cifar10(root, url=CIFAR10_URL, md5=CIFAR10_MD5):
    """Opt-in download of the official archive into root; refuses a file whose MD5 differs."""
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, "cifar-10-python.tar.gz")
    with urllib.request.urlopen(url) as response:
        blob = response.read()
    if hashlib.md5(blob).hexdigest() != md5:
        raise ValueError(f"{url}: MD5 mismatch (expected {md5}); the download is corrupt, retry")
    with open(path + ".tmp", "wb") as f:
        f.write(blob)
    os.replace(path + ".tmp", path)
    return path


def load_cifar10(path, split="train", resolution=32):
    """CIFAR-10 from `cifar-10-python.tar.gz` or its extracted `cifar-10-batches-py/` folder."""
    names = ["data_batch_%d" % i for i in range(1, 6)] if split == "train" else ["test_batch"]
    names.append("batches.meta")
    if os.path.isdir(path) and os.path.isdir(os.path.join(path, "cifar-10-batches-py")):
        path = os.path.join(path, "cifar-10-batches-py")
    if os.path.exists(os.path.join(path, "batches.meta")):
        blobs = {n: open(os.path.join(path, n), "rb").read() for n in names}
    elif os.path.isfile(path) and tarfile.is_tarfile(path):
        with tarfile.open(path) as tar:
            members = {os.path.basename(m.name): m for m in tar.getmembers()}
            if not all(n in members for n in names):
                _fail(path, "not the CIFAR-10 python archive (no cifar-10-batches-py/ batches)",
                      f"Download {CIFAR10_URL} or pass its extracted folder")
            blobs = {n: tar.extractfile(members[n]).read() for n in names}
    else:
        _fail(path, "expected cifar-10-python.tar.gz or a cifar-10-batches-py/ folder",
              f"Download {CIFAR10_URL} (or call data.download_cifar10) and pass its path")
    meta = pickle.loads(blobs.pop("batches.meta"), encoding="bytes")
    classes = tuple(c.decode() for c in meta[b"label_names"])
    batches = [pickle.loads(b, encoding="bytes") for b in blobs.values()]
    images = torch.from_numpy(np.concatenate([b[b"data"] for b in batches])).view(-1, 3, 32, 32)
    labels = torch.tensor(sum((list(b[b"labels"]) for b in batches), []))
    if resolution != 32:
        images = torch.nn.functional.interpolate(images.float(), size=resolution, mode="bicubic",
                                                 antialias=True).round().clamp(0, 255).byte()
    captions = [[t.format(classes[y]) for t in CIFAR10_TEMPLATES] for y in labels.tolist()]
    return TensorData(images, captions, labels, classes)


def _read_images(paths, resolution):
    """Read and square images; unreadable files are skipped with one warning that counts them."""
    kept, arrays, bad = [], [], 0
    for i, p in enumerate(paths):
        try:
            with Image.open(p) as img:
                arrays.append(square_image(img, resolution))
            kept.append(i)
        except (OSError, ValueError, Image.DecompressionBombError):
            bad += 1
    if bad:
        warnings.warn(f"skipped {bad} file(s) that are not readable images")
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous() if arrays else None
    return images, kept


def read_image(path, resolution, resample=Image.BICUBIC):
    """One image file -> (3, R, R) in [-1, 1], centre-cropped and resized; one-line errors."""
    try:
        with Image.open(path) as img:
            pixels = square_image(img, resolution, resample)
    except FileNotFoundError:
        raise FileNotFoundError(f"no image at {path}: check the path") from None
    except (OSError, ValueError, Image.DecompressionBombError):
        raise ValueError(f"{path} is not an image PIL can read (PNG, JPEG, ...)") from None
    return torch.from_numpy(pixels).permute(2, 0, 1).float() / 127.5 - 1


def load_folder(path, resolution=32):
    """An image folder: `metadata.jsonl` rows {"file_name", "text"} give captions; otherwise
    class sub-folders give labels (and captions "a photo of a {class}")."""
    if not os.path.isdir(path):
        _fail(path, "no such folder", "Pass a folder of class sub-folders or with metadata.jsonl")
    meta = os.path.join(path, "metadata.jsonl")
    if os.path.exists(meta):
        rows = []
        with open(meta) as f:
            for k, line in enumerate(f):
                if line.strip():
                    try:
                        row = json.loads(line)
                        rows.append((os.path.join(path, row["file_name"]), row["text"]))
                    except (json.JSONDecodeError, KeyError, TypeError):
                        raise ValueError(f"{meta}:{k + 1}: expected a JSON object with 'file_name' "
                                         "and 'text'; fix or remove that line") from None
        images, kept = _read_images([r[0] for r in rows], resolution)
        if images is None:
            _fail(path, "metadata.jsonl names no readable image", "Check the file_name entries")
        captions = [[t] if isinstance(t, str) else list(t) for t in (rows[i][1] for i in kept)]
        return TensorData(images, captions)
    classes = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
    files = [(os.path.join(path, c, f), y) for y, c in enumerate(classes)
             for f in sorted(os.listdir(os.path.join(path, c)))]
    if not files:
        _fail(path, "expected class sub-folders of images or a metadata.jsonl",
              "Arrange the images as PATH/CLASS/IMAGE.png or add metadata.jsonl")
    images, kept = _read_images([f for f, _ in files], resolution)
    if images is None:
        _fail(path, "no readable image in its class sub-folders", "Check the files")
    labels = torch.tensor([files[i][1] for i in kept])
    captions = [[f"a photo of a {classes[y]}"] for y in labels.tolist()]
    return TensorData(images, captions, labels, tuple(classes))


def load_coco(path, split="train", resolution=64, n=10000, seed=None):
    """COCO captions as "COCO-mini": n images (the first n, or a seeded sample), centre-cropped and
    resized, all their captions kept; built once into a cache file next to the annotations."""
    ann = os.path.join(path, "annotations", f"captions_{split}2017.json")
    cache = os.path.join(path, f"coco-mini-{split}-{n}-{resolution}px-{seed}.pt")
    if os.path.exists(cache):
        blob = torch.load(cache, weights_only=True)
        return TensorData(blob["images"], blob["captions"])
    if not os.path.exists(ann):
        _fail(ann, "missing COCO captions file",
              f"Pass the COCO root that holds annotations/ and {split}2017/")
    with open(ann) as f:
        coco = json.load(f)
    captions = {}
    for a in coco["annotations"]:
        captions.setdefault(a["image_id"], []).append(a["caption"].strip())
    entries = sorted((im for im in coco["images"] if im["id"] in captions), key=lambda im: im["id"])
    if seed is not None:
        order = torch.randperm(len(entries), generator=torch.Generator().manual_seed(seed))
        entries = [entries[i] for i in order.tolist()]
    entries = entries[:n]
    files = [os.path.join(path, f"{split}2017", im["file_name"]) for im in entries]
    images, kept = _read_images(files, resolution)
    if images is None:
        _fail(os.path.join(path, f"{split}2017"), "no readable COCO image",
              "Check the image folder")
    blob = {"images": images, "captions": [captions[entries[i]["id"]] for i in kept]}
    torch.save(blob, cache + ".tmp")
    os.replace(cache + ".tmp", cache)
    return TensorData(blob["images"], blob["captions"])


def load_data(spec, resolution=32, n=20000, seed=0, split="train"):
    """Name -> TensorData: "shapes", "cifar10:PATH", "folder:PATH" or "coco:PATH".
    "shapes:1" and "shapes:2" hold only one- or only two-object scenes.

    split: "train" or "test" (shapes: both draw from the "train" split, so pass test data another
    seed; only training captions carry prefixes; a folder has no test split and returns the same
    images), or "holdout" (shapes only)."""
    kind, _, path = spec.partition(":")
    if kind == "shapes" and path in ("", "1", "2"):
        return shapes_data(n, resolution, seed, "holdout" if split == "holdout" else "train",
                           prefixes=split == "train", objects=int(path) if path else None)
    if kind in ("cifar10", "folder", "coco") and path:
        path = os.path.expanduser(path)
        if not os.path.exists(path):
            _fail(path, f"no such file or folder for --data {kind}:PATH",
                  "Check the path (see the README for the expected layout)")
        if kind == "cifar10":
            return load_cifar10(path, "train" if split == "train" else "test", resolution)
        if kind == "folder":
            return load_folder(path, resolution)
        return load_coco(path, "train" if split == "train" else "val", resolution, n)
    raise ValueError(f"unknown data set {spec!r}: use shapes (or shapes:1, shapes:2), "
                     "cifar10:PATH, folder:PATH or coco:PATH")


def grid(images, nrow=8):
    """Images (B, 3, H, W) in [-1, 1] -> one (rows H, nrow W, 3) uint8 array, padded white."""
    b, _, h, w = images.shape
    nrow = min(nrow, b)
    rows = -(-b // nrow)
    pad = torch.ones(rows * nrow - b, 3, h, w, device=images.device)
    x = torch.cat([images.detach().float().clamp(-1, 1), pad])
    x = x.view(rows, nrow, 3, h, w).permute(0, 3, 1, 4, 2).reshape(rows * h, nrow * w, 3)
    return ((x + 1) * 127.5).round().byte().cpu().numpy()


def show_grid(images, title, nrow=8, ax=None):
    """Draw images (B, 3, H, W) in [-1, 1] as a titled grid on a matplotlib axis (notebooks)."""
    import matplotlib.pyplot as plt
    if ax is None:
        ax = plt.figure(figsize=(min(12, 1.2 * min(nrow, len(images))),
                                 1.3 * -(-len(images) // nrow) + 0.4)).gca()
    ax.imshow(grid(images, nrow), interpolation="nearest")
    ax.set_title(title)
    ax.axis("off")
    return ax


def save_grid(images, path, nrow=8, scale=1):
    """Write images (B, 3, H, W) in [-1, 1] as one PNG grid, nrow images per row."""
    img = Image.fromarray(grid(images, nrow))
    if scale != 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    img.save(path)


if __name__ == "__main__":
    import time
    tic = time.time()
    data = shapes_data(1000, 32, seed=0)
    print(f"rendered {len(data)} scenes at 32 px in {time.time() - tic:.1f} s: images "
          f"{tuple(data.images.shape)} {data.images.dtype}, e.g. {data.captions[0][0]!r}")
    save_grid(data.batch(torch.arange(32))[0], "out/data_demo.png", scale=2)
    print("wrote out/data_demo.png")
