"""Data: the built-in `shapes` scenes, their caption checker, real-data loaders and a tokenizer.

Every later file trains on what this one returns, so it fixes the conventions once:
images are float tensors (B, 3, H, W) in [-1, 1]; a data set in memory is a `TensorData`
(uint8 images, one or more captions per image, optional class labels).

- `ShapesDataset`: procedural captioned scenes, as specified in `../shared/specs/shapes.md`.
  Every word of a caption can be checked against the pixels, so text-to-image quality is
  measured exactly by `check_image` / `check_images` (the caption checker).
- Loaders for the formats users already have: CIFAR-10's python archive, image folders
  (class sub-folders or a `metadata.jsonl` of captions), and COCO captions, cached once as
  "COCO-mini". `load_data("cifar10:PATH", ...)` is how the command line names them.
- `ByteTokenizer`: UTF-8 bytes plus start/end/padding tokens at a fixed context length.

Run `python data.py` to render a grid of shapes with their captions and score it with the checker.
"""
import hashlib
import itertools
import json
import math
import os
import pickle
import tarfile
import urllib.request
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

# ----------------------------------------------------------------------------------------------
# The shapes vocabulary (spec: "Vocabulary"). Coordinates live on a 64-pixel canvas.

COLOURS = {
    "red": (220, 40, 40), "orange": (245, 140, 30), "yellow": (235, 210, 40),
    "green": (40, 170, 70), "blue": (40, 90, 220), "purple": (150, 60, 190),
}
SHAPES = ("circle", "square", "triangle")  # the class label is the index of object A's shape
SIZES = {"small": 16, "large": 28}
POSITIONS = {  # position phrase -> anchor centre
    "on the left": (16, 32), "on the right": (48, 32), "at the top": (32, 16),
    "at the bottom": (32, 48), "in the center": (32, 32),
}
RELATIONS = ("to the left of", "to the right of", "above", "below")
PREFIXES = ("", "a picture of ", "an image of ", "a drawing of ")
HOLDOUT_PAIRS = {("green", "triangle"), ("purple", "circle"), ("orange", "square")}
CANVAS, JITTER = 64, 3


def _object(rng, colour):
    return {"shape": SHAPES[rng.integers(3)], "colour": colour,
            "size": ("small", "large")[rng.integers(2)]}


def _place(obj, anchor, rng):
    """Jitter an anchor by +-3 px (uniform) and clamp so the object stays on the canvas."""
    half = SIZES[obj["size"]] / 2
    x, y = (a + rng.uniform(-JITTER, JITTER) for a in anchor)
    obj["centre"] = (float(np.clip(x, half, CANVAS - half)), float(np.clip(y, half, CANVAS - half)))
    return obj


def _random_scene(rng):
    colour_names = list(COLOURS)
    if rng.integers(2) == 0:  # one object, half the scenes
        obj = _object(rng, colour_names[rng.integers(6)])
        position = list(POSITIONS)[rng.integers(5)]
        return {"objects": [_place(obj, POSITIONS[position], rng)], "position": position}
    colour_a, colour_b = rng.choice(6, size=2, replace=False)  # two different colours
    a, b = _object(rng, colour_names[colour_a]), _object(rng, colour_names[colour_b])
    relation = RELATIONS[rng.integers(4)]
    first, second = {"to the left of": ((16, 32), (48, 32)),
                     "to the right of": ((48, 32), (16, 32)),
                     "above": ((32, 16), (32, 48)), "below": ((32, 48), (32, 16))}[relation]
    return {"objects": [_place(a, first, rng), _place(b, second, rng)], "relation": relation}


def _in_split(scene, split):
    held = any((o["colour"], o["shape"]) in HOLDOUT_PAIRS for o in scene["objects"])
    return {None: True, "train": not held, "holdout": held}[split]


def caption_of(attributes):
    """The canonical caption (no prefix) of a scene's attributes."""
    def name(o):
        return f"a {o['size']} {o['colour']} {o['shape']}"
    objs = attributes["objects"]
    if len(objs) == 1:
        return f"{name(objs[0])} {attributes['position']}"
    return f"{name(objs[0])} {attributes['relation']} {name(objs[1])}"


def render(attributes, resolution=32):
    """Draw a scene: at 4x for anti-aliasing, box-filtered down; below 64 px from the 64 px image.

    Returns a uint8 array (H, W, 3)."""
    draw_res = max(resolution, CANVAS)
    scale = 4 * draw_res / CANVAS  # canvas pixels -> drawing pixels
    img = Image.new("RGB", (4 * draw_res,) * 2, (255, 255, 255))
    pen = ImageDraw.Draw(img)
    for o in attributes["objects"]:
        (cx, cy), h = o["centre"], SIZES[o["size"]] / 2
        # PIL's boxes include their far edge: stop one drawing pixel short so the extent is exact.
        box = [(cx - h) * scale, (cy - h) * scale, (cx + h) * scale - 1, (cy + h) * scale - 1]
        colour = COLOURS[o["colour"]]
        if o["shape"] == "circle":
            pen.ellipse(box, fill=colour)
        elif o["shape"] == "square":
            pen.rectangle(box, fill=colour)
        else:  # isosceles, apex up, base = height
            pen.polygon([(cx * scale, box[1]), (box[2], box[3]), (box[0], box[3])], fill=colour)
    img = img.resize((draw_res,) * 2, Image.BOX)
    if resolution < draw_res:
        img = img.resize((resolution,) * 2, Image.BOX)
    return np.array(img)


class ShapesDataset(torch.utils.data.Dataset):
    """n captioned scenes; item i is a pure function of (seed, i, split).

    split: None (all colour-shape pairs), "train" (never a HOLDOUT_PAIRS pair) or "holdout" (at
    least one). prefixes=True puts one of PREFIXES (uniformly) before the caption, for training.
    objects=1 or 2 keeps only scenes with that many objects (a filtered view of the spec's mix).
    """

    def __init__(self, n, resolution=32, seed=0, split=None, prefixes=False, objects=None):
        if split not in (None, "train", "holdout"):
            raise ValueError(f"split must be None, 'train' or 'holdout', got {split!r}")
        if resolution < 8 or resolution & (resolution - 1):
            raise ValueError(f"shapes resolution must be a power of two >= 8, got {resolution}")
        if objects not in (None, 1, 2):
            raise ValueError(f"objects must be None (both), 1 or 2, got {objects!r}")
        self.n, self.resolution, self.seed, self.split, self.prefixes, self.objects = (
            n, resolution, seed, split, prefixes, objects)

    def __len__(self):
        return self.n

    def attributes(self, i):
        # A generator of its own, seeded from (seed, i): never the global random state.
        rng = np.random.default_rng([self.seed, i, 0 if self.split is None else len(self.split)])
        while True:  # rejection keeps the distribution within the split uniform
            scene = _random_scene(rng)
            count_ok = self.objects in (None, len(scene["objects"]))
            if count_ok and _in_split(scene, self.split):
                prefix = PREFIXES[rng.integers(4)] if self.prefixes else ""
                return scene, prefix

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        scene, prefix = self.attributes(i)
        image = torch.from_numpy(render(scene, self.resolution)).permute(2, 0, 1)  # (3, H, W)
        return {"image": image.float() / 127.5 - 1, "caption": prefix + caption_of(scene),
                "attributes": scene, "label": SHAPES.index(scene["objects"][0]["shape"])}


# ----------------------------------------------------------------------------------------------
# The caption checker: judge an image against a canonical caption, attribute by attribute.

def parse_caption(caption):
    """Canonical caption -> {"objects": [{size, colour, shape}, ...], "position" | "relation"}."""
    words = caption.strip().lower()
    for prefix in PREFIXES[1:]:
        words = words[len(prefix):] if words.startswith(prefix) else words

    def obj(text):
        parts = text.split()
        if (len(parts) != 4 or parts[0] != "a" or parts[1] not in SIZES
                or parts[2] not in COLOURS or parts[3] not in SHAPES):
            raise ValueError(f"not a shapes caption: {caption!r} (expected e.g. "
                             "'a small red circle on the left')")
        return {"size": parts[1], "colour": parts[2], "shape": parts[3]}

    for relation in RELATIONS:
        if f" {relation} a " in words:
            a, b = words.split(f" {relation} ", 1)
            return {"objects": [obj(a), obj(b)], "relation": relation}
    for position in POSITIONS:
        if words.endswith(" " + position):
            return {"objects": [obj(words[: -len(position) - 1])], "position": position}
    raise ValueError(f"not a shapes caption: {caption!r} (no position or relation phrase)")


def find_objects(image):
    """Detect flat-coloured objects on white: one per palette colour present.

    A pixel p is read as a blend a * c + (1 - a) * white of the nearest palette colour c, so the
    anti-aliased edges count fractionally. Returns a list of dicts with colour, shape, size and
    centre (canvas coordinates, i.e. scaled to 64 px)."""
    x = image.float() if image.dtype == torch.uint8 else (image.float().clamp(-1, 1) + 1) * 127.5
    res = x.shape[-1]
    d = (255 - x).reshape(3, -1).T.double()                                 # (HW, 3) ink
    e = 255 - torch.tensor(list(COLOURS.values()), dtype=torch.float64)      # (6, 3)
    a = (d @ e.T / (e * e).sum(1)).clamp(0, 1)                               # (HW, 6) coverage
    residual = (d[:, None, :] - a[:, :, None] * e[None]).norm(dim=-1)        # (HW, 6)
    best = residual.argmin(1)
    coverage = a.gather(1, best[:, None])[:, 0]
    coverage[(residual.min(1).values > 60) | (d.norm(dim=1) < 40)] = 0  # not ink of our palette
    min_area = 0.3 * (SIZES["small"] * res / CANVAS) ** 2 * 0.5  # 30% of a small triangle
    objects = []
    for k, colour in enumerate(COLOURS):
        cov = torch.where(best == k, coverage, 0.0).reshape(res, res)       # (H, W)
        area = cov.sum().item()
        if area < min_area:
            continue
        cols, rows = cov.max(0).values, cov.max(1).values  # soft extent along x and y
        width, height = cols.sum().item(), rows.sum().item()
        grid = torch.arange(res, dtype=torch.float64) + 0.5
        cx, cy = (cols * grid).sum().item() / width, (rows * grid).sum().item() / height
        fill = area / max(width * height, 1e-9)
        upper = cov[grid[:, None].expand(res, res) < cy].sum().item() / area  # mass above centre
        shape = "triangle" if upper < 0.37 else ("square" if fill > 0.89 else "circle")
        s = CANVAS / res
        objects.append({"colour": colour, "shape": shape, "area": area,
                        "size": "large" if (width + height) / 2 * s > 22 else "small",
                        "centre": (cx * s, cy * s)})
    return objects


def _position_of(centre):
    return min(POSITIONS, key=lambda p: math.dist(POSITIONS[p], centre))


def _relation_of(a, b):
    dx, dy = b["centre"][0] - a["centre"][0], b["centre"][1] - a["centre"][1]
    if abs(dx) >= abs(dy):
        return "to the left of" if dx > 0 else "to the right of"
    return "above" if dy > 0 else "below"


def check_image(image, caption):
    """Judge one image (3, H, W; uint8 or [-1, 1]) against one canonical caption.

    Returns {attribute: bool}: colour/shape/size of each named object (a_colour, b_shape, ...),
    position (one object) or relation (two objects), no_stray (no other object), and exact (all)."""
    want = parse_caption(caption)
    found = find_objects(image)
    n = len(want["objects"])
    best = None
    # Match detected objects to named ones by the assignment that agrees on most attributes.
    for order in itertools.permutations(found, min(n, len(found))):
        order = list(order)
        result = {}
        for name, w, f in zip("ab", want["objects"], order + [None] * (n - len(order))):
            for key in ("colour", "shape", "size"):
                result[f"{name}_{key}"] = f is not None and f[key] == w[key]
        if n == 1:
            result["position"] = (bool(order)
                                  and _position_of(order[0]["centre"]) == want["position"])
        else:
            result["relation"] = (len(order) == 2
                                  and _relation_of(order[0], order[1]) == want["relation"])
        if best is None or sum(result.values()) > sum(best.values()):
            best = result
    best["no_stray"] = len(found) == n
    best["exact"] = all(best.values())
    return best


def check_images(images, captions):
    """Summary over many: exact-match and per-attribute rates, one- and two-object prompts apart."""
    groups = {"one": [], "two": []}
    for image, caption in zip(images, captions):
        result = check_image(image, caption)
        groups["one" if "position" in result else "two"].append(result)
    summary = {}
    for group, results in groups.items():
        if results:
            summary[group] = {key: sum(r[key] for r in results) / len(results)
                              for key in results[0]}
            summary[group]["n"] = len(results)
    everything = groups["one"] + groups["two"]
    summary["exact"] = sum(r["exact"] for r in everything) / max(len(everything), 1)
    return summary


def shape_judgements(images, shapes):
    """For class-conditional samples: per image, the attributes of the single object found
    (None when there is not exactly one) and whether its shape is the requested one."""
    found = [find_objects(image) for image in images]
    objects = [objs[0] if len(objs) == 1 else None for objs in found]
    return objects, [o is not None and o["shape"] == s for o, s in zip(objects, shapes)]


def attribute_entropy(objects):
    """Diversity of single-object samples: the summed entropies (bits) of their colour, size and
    position. Uniform attributes give log2(6) + 1 + log2(5) = 5.9 bits; one fixed scene gives 0."""
    objects = [o for o in objects if o is not None]
    total = 0.0
    for key in ("colour", "size", "position"):
        values = [_position_of(o["centre"]) if key == "position" else o[key] for o in objects]
        for v in set(values):
            p = values.count(v) / len(values)
            total -= p * math.log2(p)
    return total


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


def _square(img, resolution):
    """Centre-crop to a square and resize; grey, RGBA and palette images become RGB."""
    img = img.convert("RGB")
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side))
    return np.array(img.resize((resolution, resolution), Image.BICUBIC))


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


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _read_images(paths, resolution):
    """Read and square images; unreadable files are skipped with one warning that counts them."""
    kept, arrays, bad = [], [], 0
    for i, p in enumerate(paths):
        try:
            with Image.open(p) as img:
                arrays.append(_square(img, resolution))
            kept.append(i)
        except (OSError, ValueError, Image.DecompressionBombError):
            bad += 1
    if bad:
        warnings.warn(f"skipped {bad} file(s) that are not readable images")
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous() if arrays else None
    return images, kept


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


# ----------------------------------------------------------------------------------------------
# Tokenizer: UTF-8 bytes, so no text is ever out of vocabulary.

class ByteTokenizer:
    """Bytes 0..255, then start-of-text, end-of-text and padding; a fixed context length.

    Text longer than the context is truncated (with a warning) so the end token always fits."""

    def __init__(self, context_length=80):
        self.context_length = context_length
        self.sot, self.eot, self.pad = 256, 257, 258
        self.vocab_size = 259

    def encode(self, text):
        body = list(text.encode("utf-8", errors="replace"))  # a lone surrogate becomes "?"
        if len(body) > self.context_length - 2:
            warnings.warn(f"caption truncated to {self.context_length - 2} bytes: {text[:40]!r}...")
            body = body[: self.context_length - 2]
        tokens = [self.sot] + body + [self.eot]
        return tokens + [self.pad] * (self.context_length - len(tokens))

    def __call__(self, texts):
        """list of str -> (B, context_length) int64."""
        return torch.tensor([self.encode(t) for t in texts], dtype=torch.long)

    def decode(self, tokens):
        body = [t for t in list(tokens) if t < 256]
        return bytes(body).decode("utf-8", errors="replace")


if __name__ == "__main__":
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ds = ShapesDataset(16, resolution=64, seed=0)
    fig, axes = plt.subplots(4, 4, figsize=(12, 13))
    for ax, item in zip(axes.flat, ds):
        ax.imshow((item["image"].permute(1, 2, 0) + 1) / 2)
        ax.set_title(item["caption"].replace(" a ", "\na ", 1), fontsize=8)
        ax.axis("off")
    os.makedirs("out", exist_ok=True)
    fig.savefig("out/shapes.png", dpi=80, bbox_inches="tight")
    for res in (32, 64):
        data = shapes_data(1000, res, seed=1, prefixes=False)
        summary = check_images(data.images, [c[0] for c in data.captions])
        print(f"checker on 1000 rendered scenes at {res} px: exact match {summary['exact']:.3f}")
    print("wrote out/shapes.png")
