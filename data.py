"""Data: data sets held in memory, loaders for the formats users already have, image grids.

Every later file trains on what this one returns, so it fixes the conventions once: images are
float tensors (B, 3, H, W) in [-1, 1] (`to_unit_range` turns pixels into them); a data set in
memory is a `TensorData` (uint8 images, one or more captions per image, optional class labels).

- `shapes_data`: the built-in shapes scenes (shapes.py) rendered into a TensorData; `is_shapes`.
- Loaders: CIFAR-10's python archive (as downloaded, or extracted), image folders (class
  sub-folders, with or without train/ and test/, or a `metadata.jsonl` of captions), captions
  files (COCO-captions JSON or CSV, e.g. Flickr8k) and COCO's official layout.
  `load_data("cifar10:PATH", ...)` is how the command line names them.
- `grid`, `show_grid`, `save_grid` and `write_images`: many images as one picture, or as files.

Run `python data.py` to render shapes scenes into memory and save a grid of them."""
import csv
import hashlib
import json
import os
import pickle
import tarfile
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from shapes import SHAPES, ShapesDataset, caption_of, render


# ----------------------------------------------------------------------------------------------
# Data sets in memory, and loaders for the formats users have.

def to_unit_range(images):
    """uint8 pixels -> floats in [-1, 1], the range every model here takes."""
    return images.float() / 127.5 - 1


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
        picks = torch.randint(0, 1 << 30, (len(index),), generator=generator).tolist()
        captions = [self.captions[i][p % len(self.captions[i])]
                    for i, p in zip(index.tolist(), picks)]
        labels = None if self.labels is None else self.labels[index]
        return to_unit_range(self.images[index]), captions, labels


def is_shapes(data):
    """Whether a TensorData holds shapes scenes, whose captions the checker can read."""
    return data.class_names == SHAPES


def shapes_data(n, resolution=32, seed=0, split=None, prefixes=True, objects=None,
                stream="train"):
    """Render n shapes scenes of a stream (shapes.STREAMS) into a TensorData (about 0.2 ms per
    image at 32 px)."""
    ds = ShapesDataset(n, resolution, seed, split, prefixes, objects, stream)
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
    (w, h), side = img.size, min(img.size)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side))
    return np.array(img.resize((resolution, resolution), resample))


CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_TEMPLATES = ("a photo of {}", "a picture of {}", "an image of {}",
                     "a blurry photo of {}")  # {}: the class name with its article


def with_article(noun):
    """ "airplane" -> "an airplane", "cat" -> "a cat": class names as captions say them."""
    return ("an " if noun[:1].lower() in "aeiou" else "a ") + noun


def download_cifar10(root, url=CIFAR10_URL, md5=CIFAR10_MD5):
    """Opt-in download of the official archive into root; refuses a file whose MD5 differs."""
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, "cifar-10-python.tar.gz")
    with urllib.request.urlopen(url) as response:
        blob = response.read()
    if hashlib.md5(blob).hexdigest() != md5:
        raise ValueError(f"{url}: MD5 mismatch (expected {md5}); the download is corrupt, retry")
    Path(path + ".tmp").write_bytes(blob)
    os.replace(path + ".tmp", path)
    return path


def load_cifar10(path, split="train", resolution=32):
    """CIFAR-10 from `cifar-10-python.tar.gz` or its extracted `cifar-10-batches-py/` folder.
    Missing training batches are skipped with a warning that names them; none at all is an error."""
    wanted = ["data_batch_%d" % i for i in range(1, 6)] if split == "train" else ["test_batch"]
    if os.path.isdir(path) and os.path.isdir(os.path.join(path, "cifar-10-batches-py")):
        path = os.path.join(path, "cifar-10-batches-py")
    if os.path.isdir(path):
        blobs = {n: Path(path, n).read_bytes() for n in wanted + ["batches.meta"]
                 if Path(path, n).is_file()}
    elif os.path.isfile(path) and tarfile.is_tarfile(path):
        with tarfile.open(path) as tar:
            members = {os.path.basename(m.name): m for m in tar.getmembers() if m.isfile()}
            blobs = {n: tar.extractfile(members[n]).read()
                     for n in wanted + ["batches.meta"] if n in members}
    else:
        _fail(path, "expected cifar-10-python.tar.gz or a cifar-10-batches-py/ folder",
              f"Download {CIFAR10_URL} (or call data.download_cifar10) and pass its path")
    missing = [n for n in wanted if n not in blobs]
    if "batches.meta" not in blobs or len(missing) == len(wanted):
        _fail(path, f"not the CIFAR-10 python archive (no batches.meta or no {wanted[0]})",
              f"Download {CIFAR10_URL} or pass its extracted folder")
    if missing:
        warnings.warn(f"{path}: {len(missing)} of {len(wanted)} {split} batches missing "
                      f"({', '.join(missing)}): reading the others")
    meta = pickle.loads(blobs.pop("batches.meta"), encoding="bytes")
    classes = tuple(c.decode() if isinstance(c, bytes) else c for c in meta[b"label_names"])
    batches = [pickle.loads(blobs[n], encoding="bytes") for n in wanted if n in blobs]
    images = torch.from_numpy(np.concatenate([b[b"data"] for b in batches])).view(-1, 3, 32, 32)
    labels = torch.tensor(sum((list(b[b"labels"]) for b in batches), []))
    if resolution != 32:
        images = torch.nn.functional.interpolate(images.float(), size=resolution, mode="bicubic",
                                                 antialias=True).round().clamp(0, 255).byte()
    captions = [[t.format(with_article(classes[y])) for t in CIFAR10_TEMPLATES]
                for y in labels.tolist()]
    return TensorData(images, captions, labels, classes)


def _read_images(paths, resolution):
    """Read and square images; missing or unreadable files are skipped with one warning that
    counts them and names the first."""
    kept, arrays, bad = [], [], []
    for i, p in enumerate(paths):
        try:
            with Image.open(p) as img:
                img.draft("RGB", (resolution, resolution))  # a JPEG decodes at >= R, faster
                arrays.append(square_image(img, resolution))
            kept.append(i)
        except (OSError, ValueError, Image.DecompressionBombError):
            bad.append(p)
    if bad:
        warnings.warn(f"skipped {len(bad)} of {len(paths)} images that are missing or not "
                      f"readable (first: {bad[0]})")
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
    return to_unit_range(torch.from_numpy(pixels).permute(2, 0, 1))


def load_folder(path, resolution=32, split="train"):
    """An image folder: `metadata.jsonl` rows {"file_name", "text"} give captions; otherwise class
    sub-folders give labels (and captions "a photo of a cat", "... an airplane"). A folder with
    `train/` and `test/` (e.g. CIFAR-10 as JPEGs) has its own split: `split` picks one."""
    if not os.path.isdir(path):
        _fail(path, "no such folder", "Pass a folder of class sub-folders or with metadata.jsonl")
    if all(os.path.isdir(os.path.join(path, s)) for s in ("train", "test")):
        path = os.path.join(path, "test" if split == "test" else "train")
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
    # A fixed random order, not class after class: the first n images are then a sample of
    # every class (the evaluations take the first 1,000 test images).
    files = [files[i] for i in torch.randperm(len(files),
                                              generator=torch.Generator().manual_seed(0))]
    if not files:
        _fail(path, "expected class sub-folders of images or a metadata.jsonl",
              "Arrange the images as PATH/CLASS/IMAGE.png or add metadata.jsonl")
    images, kept = _read_images([f for f, _ in files], resolution)
    if images is None:
        _fail(path, "no readable image in its class sub-folders", "Check the files")
    labels = torch.tensor([files[i][1] for i in kept])
    captions = [[f"a photo of {with_article(classes[y])}"] for y in labels.tolist()]
    return TensorData(images, captions, labels, tuple(classes))


def read_caption_file(path):
    """A captions file -> [(image file name, [captions])], images in first-seen order. Two
    layouts: COCO-captions JSON (`images` with id and file_name, `annotations` with image_id and
    caption) and CSV with an `image,caption` header, one row per caption (Flickr8k's
    captions.txt). Captions naming an image id the JSON does not list are skipped with a count."""
    captions = {}
    try:
        if path.endswith(".json"):
            coco = json.loads(Path(path).read_text())
            names = {im["id"]: im["file_name"] for im in coco["images"]}
            orphans = sum(a["image_id"] not in names for a in coco["annotations"])
            if orphans:
                warnings.warn(f"{path}: skipped {orphans} captions whose image_id is not in "
                              "its images list")
            for im in sorted(coco["images"], key=lambda im: im["id"]):
                captions[im["file_name"]] = []
            for a in coco["annotations"]:
                if a["image_id"] in names:
                    captions[names[a["image_id"]]].append(a["caption"].strip())
        else:
            with open(path, newline="") as f:
                for row in csv.DictReader(f):
                    captions.setdefault(row["image"], []).append(row["caption"].strip())
    except FileNotFoundError:
        _fail(path, "no such captions file", "Pass a COCO-captions .json or an image,caption .csv")
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError(f"{path}: not a COCO-captions JSON (images: id, file_name; annotations: "
                         "image_id, caption) nor a CSV with an image,caption header") from None
    return [(name, c) for name, c in captions.items() if c]


def split_indices(n, split, holdout, seed=0):
    """A fixed random split of n items: `holdout` of them are "test", the rest "train"."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    test = order[:min(holdout, n // 2)].sort().values
    return test if split == "test" else order[len(test):].sort().values


def load_captions(path, split="train", resolution=64, holdout=1000):
    """Captioned images from a captions file (read_caption_file), several captions an image, found
    next to the file or in its `images/` folder (missing or unreadable ones skipped with a count).
    The data has no split: a fixed random `holdout` images (at most half) are the test split."""
    rows, folder = read_caption_file(path), os.path.dirname(path)
    if rows and not os.path.exists(os.path.join(folder, rows[0][0])):
        folder = os.path.join(folder, "images")
    rows = [rows[i] for i in split_indices(len(rows), split, holdout).tolist()]
    images, kept = _read_images([os.path.join(folder, r[0]) for r in rows], resolution)
    if images is None:
        _fail(folder, f"no readable image named by {path}", "Put the images next to the file "
              "or in an images/ folder beside it")
    return TensorData(images, [rows[i][1] for i in kept])


def load_coco(path, split="train", resolution=64, n=10000, seed=None):
    """COCO captions in the official layout (annotations/captions_{split}2017.json and the
    {split}2017/ images): n images (the first n by id, or a seeded sample), centre-cropped and
    resized, all their captions kept."""
    ann = os.path.join(path, "annotations", f"captions_{split}2017.json")
    if not os.path.exists(ann):
        _fail(ann, "missing COCO captions file",
              f"Pass the COCO root that holds annotations/ and {split}2017/")
    rows = read_caption_file(ann)
    if seed is not None:
        rows = [rows[i] for i in torch.randperm(
            len(rows), generator=torch.Generator().manual_seed(seed)).tolist()]
    rows, folder = rows[:n], os.path.join(path, f"{split}2017")
    images, kept = _read_images([os.path.join(folder, r[0]) for r in rows], resolution)
    if images is None:
        _fail(folder, "no readable COCO image", "Check the image folder")
    return TensorData(images, [rows[i][1] for i in kept])


def load_data(spec, resolution=32, n=20000, seed=0, split="train"):
    """Name -> TensorData: "shapes" ("shapes:1", "shapes:2": only one- or only two-object scenes),
    "cifar10:PATH", "folder:PATH", "coco:PATH" or "captions:FILE" (a COCO-captions .json or an
    image,caption .csv, e.g. Flickr8k). split: "train", "dev" or "test" (shapes: the seed's stream
    of that name, shapes.STREAMS, its scenes free of the held-out colour-shape pairs; only
    training captions carry prefixes), or "holdout" (shapes only: test scenes each holding a
    colour-shape pair never seen in training). Other data has no development split; a folder
    without train/ and test/ has no test split and returns the same images."""
    kind, _, path = spec.partition(":")
    if kind != "shapes" and split == "holdout":
        raise ValueError(f"{kind} data has no held-out compositions: they are shapes' alone")
    if kind == "shapes" and path in ("", "1", "2"):
        return shapes_data(n, resolution, seed, "holdout" if split == "holdout" else "train",
                           prefixes=split == "train", objects=int(path) if path else None,
                           stream="test" if split == "holdout" else split)
    if kind in ("cifar10", "folder", "coco", "captions") and path:
        path = os.path.expanduser(path)
        if not os.path.exists(path):
            _fail(path, f"no such file or folder for --data {kind}:PATH",
                  "Check the path (see the README for the expected layout)")
        if split == "dev":
            raise ValueError(f"{kind} data has no development split: choose settings on shapes, "
                             "or hold out part of the training data yourself")
        if kind == "coco":
            return load_coco(path, "train" if split == "train" else "val", resolution, n)
        load = {"cifar10": load_cifar10, "folder": load_folder, "captions": load_captions}[kind]
        return load(path, split="train" if split == "train" else "test", resolution=resolution)
    raise ValueError(f"unknown data set {spec!r}: use shapes (or shapes:1, shapes:2), "
                     "cifar10:PATH, folder:PATH, coco:PATH or captions:FILE")


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


def write_images(images, out, names=None):
    """A grid to FILE.png, or one PNG per image into a folder (named names[j] or 0000 ...)."""
    if out.lower().endswith(".png"):
        save_grid(images, out, scale=2)
        return out
    names = names or [f"{j:04d}" for j in range(len(images))]
    for name, image in zip(names, images):
        save_grid(image[None], f"{out}/{name}.png", nrow=1)
    return f"{out}/{names[0]}.png ..."


if __name__ == "__main__":
    import time
    tic = time.time()
    data = shapes_data(1000, 32, seed=0)
    print(f"rendered {len(data)} scenes at 32 px in {time.time() - tic:.1f} s: images "
          f"{tuple(data.images.shape)} {data.images.dtype}, e.g. {data.captions[0][0]!r}")
    save_grid(data.batch(torch.arange(32))[0], "out/data_demo.png", scale=2)
    print("wrote out/data_demo.png")
