"""The shapes world: scenes whose every caption word can be checked against the pixels.

The project's built-in data set (its specification: docs/shapes.md). A scene is one object at
a position ("a small red circle on the left") or two objects in a relation ("a large blue square
above a small green triangle"), drawn flat on white. Because the vocabulary is closed, a caption
can be parsed back into attributes and an image judged against it exactly: `check_image` finds
the objects by colour and measures their shape, size and place. That makes text-to-image
quality a number, not an impression.

Defines: the vocabulary (COLOURS, SHAPES, SIZES, POSITIONS, RELATIONS, PREFIXES, HOLDOUT_PAIRS),
the named seeds (STREAMS), caption_of, one_object_captions, scene_key, minimal_foils and
contrastive_targets (the caption grammar, and CLIP's hard negatives made from it), render,
ShapesDataset (scene i is a pure function of seed, stream and i), strip_prefix, parse_caption,
is_shapes_caption, find_objects, check_image, check_images, shape_judgements and
attribute_entropy (the checker). Run `python shapes.py` to draw a grid of scenes with their
captions and score the checker on 1,000 rendered scenes."""
import itertools
import math
import os

import numpy as np
import torch
from PIL import Image, ImageDraw

# ----------------------------------------------------------------------------------------------
# The shapes vocabulary (spec: "Vocabulary"). Coordinates live on a 64-pixel canvas.

COLOURS = {"red": (220, 40, 40), "orange": (245, 140, 30), "yellow": (235, 210, 40),
           "green": (40, 170, 70), "blue": (40, 90, 220), "purple": (150, 60, 190)}
SHAPES = ("circle", "square", "triangle")  # the class label is the index of object A's shape
SIZES = {"small": 16, "large": 28}
POSITIONS = {"on the left": (16, 32), "on the right": (48, 32), "at the top": (32, 16),
             "at the bottom": (32, 48), "in the center": (32, 32)}  # phrase -> anchor centre
RELATIONS = ("to the left of", "to the right of", "above", "below")
PREFIXES = ("", "a picture of ", "an image of ", "a drawing of ")
HOLDOUT_PAIRS = {("green", "triangle"), ("purple", "circle"), ("orange", "square")}
# The named seeds: training draws scenes from the "train" stream of --seed, settings are chosen
# on its "dev" stream and figures reported on its "test" stream (ShapesDataset).
STREAMS = ("train", "dev", "test")
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
    if rng.integers(2) == 0:  # one object, half the scenes
        obj = _object(rng, list(COLOURS)[rng.integers(6)])
        position = list(POSITIONS)[rng.integers(5)]
        return {"objects": [_place(obj, POSITIONS[position], rng)], "position": position}
    colour_a, colour_b = rng.choice(6, size=2, replace=False)  # two different colours
    a, b = _object(rng, list(COLOURS)[colour_a]), _object(rng, list(COLOURS)[colour_b])
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
    names = [f"a {o['size']} {o['colour']} {o['shape']}" for o in attributes["objects"]]
    if len(names) == 1:
        return f"{names[0]} {attributes['position']}"
    return f"{names[0]} {attributes['relation']} {names[1]}"


def one_object_captions(**fixed):
    """Every canonical one-object caption that agrees with the fixed attributes, e.g.
    one_object_captions(colour="red") -> the 30 captions of red objects."""
    choices = dict(size=SIZES, colour=COLOURS, shape=SHAPES, position=POSITIONS)
    choices.update({k: [v] for k, v in fixed.items()})
    return [f"a {s} {c} {sh} {p}" for s, c, sh, p in itertools.product(
        choices["size"], choices["colour"], choices["shape"], choices["position"])]


OPPOSITE = dict(zip(RELATIONS, ("to the right of", "to the left of", "below", "above")))


def scene_key(caption):
    """What a caption says, whatever its wording: without a prefix, and with "to the right of"
    and "below" turned round ("a X below a Y" -> "a Y above a X"). Two captions describe the
    same scenes exactly when their keys are equal."""
    scene = parse_caption(caption)
    if scene.get("relation") in ("to the right of", "below"):
        scene = {"objects": scene["objects"][::-1], "relation": OPPOSITE[scene["relation"]]}
    return caption_of(scene)


def minimal_foils(caption):
    """{kind: foil}, a two-object caption's minimal foils (one edit away, false of its scene): the
    relation reversed, the objects trading places, colours or shapes (left out when the two share
    it: the edit would change nothing). A model that prefers the true caption to each foil binds
    attributes to objects (Winoground / ARO style: Thrush et al. 2022, Yuksekgonul et al. 2023)."""
    scene = parse_caption(caption)
    a, b = scene["objects"]
    relation = scene["relation"]

    def text(first, rel, second):
        return caption_of({"objects": [first, second], "relation": rel})
    foils = {"relation": text(a, OPPOSITE[relation], b), "places": text(b, relation, a)}
    for attribute in ("colour", "shape"):
        if a[attribute] != b[attribute]:
            foils[attribute] = text({**a, attribute: b[attribute]}, relation,
                                    {**b, attribute: a[attribute]})
    return foils


def contrastive_targets(captions, hard_negatives):
    """(foils, keys) for CLIP's loss on a batch (clip.CLIP.loss): what each caption describes
    (scene_key: "a X below a Y" and "a Y above a X" are one scene, so neither is the other's
    negative) and up to hard_negatives minimal foils of each two-object caption, drawn at random,
    none describing an image of the batch. Other data's captions: no foils, the captions as keys."""
    if not all(is_shapes_caption(c) for c in captions):
        return (), None
    keys = [scene_key(c) for c in captions]
    foils, described = [], set(keys)
    for caption, key in zip(captions, keys):
        if hard_negatives and "relation" in parse_caption(key):
            options = [f for f in minimal_foils(caption).values() if scene_key(f) not in described]
            order = torch.randperm(len(options)).tolist()  # the step's seed: resume is exact
            foils += [options[i] for i in order[:hard_negatives]]
    return foils, keys


def render(attributes, resolution=32):
    """Draw a scene -> uint8 (H, W, 3): at 4x for anti-aliasing, box-filtered down; below 64 px
    from the 64 px image."""
    draw_res = max(resolution, CANVAS)
    scale = 4 * draw_res / CANVAS  # canvas pixels -> drawing pixels
    img = Image.new("RGB", (4 * draw_res,) * 2, (255, 255, 255))
    pen = ImageDraw.Draw(img)
    for o in attributes["objects"]:
        (cx, cy), h = o["centre"], SIZES[o["size"]] / 2
        # PIL's boxes include their far edge: stop one drawing pixel short so the extent is exact.
        box = [(cx - h) * scale, (cy - h) * scale, (cx + h) * scale - 1, (cy + h) * scale - 1]
        colour = COLOURS[o["colour"]]
        if o["shape"] in ("circle", "square"):
            (pen.ellipse if o["shape"] == "circle" else pen.rectangle)(box, fill=colour)
        else:  # isosceles, apex up, base = height
            pen.polygon([(cx * scale, box[1]), (box[2], box[3]), (box[0], box[3])], fill=colour)
    img = img.resize((draw_res,) * 2, Image.BOX)
    if resolution < draw_res:
        img = img.resize((resolution,) * 2, Image.BOX)
    return np.array(img)


class ShapesDataset(torch.utils.data.Dataset):
    """n captioned scenes; item i is a pure function of (seed, stream, split, i). stream: one of
    STREAMS, independent draws for one seed (no development or test scene is a training scene,
    whatever the seed). split: None (all colour-shape pairs), "train" (no HOLDOUT_PAIRS pair) or
    "holdout" (at least one). prefixes=True: one of PREFIXES (uniformly) before the caption, for
    training. objects=1 or 2: only scenes with that many objects (the spec's mix, filtered)."""

    def __init__(self, n, resolution=32, seed=0, split=None, prefixes=False, objects=None,
                 stream="train"):
        if split not in (None, "train", "holdout"):
            raise ValueError(f"split must be None, 'train' or 'holdout', got {split!r}")
        if stream not in STREAMS:
            raise ValueError(f"stream must be one of {', '.join(STREAMS)}, got {stream!r}")
        if resolution < 8 or resolution & (resolution - 1):
            raise ValueError(f"shapes resolution must be a power of two >= 8, got {resolution}")
        if objects not in (None, 1, 2):
            raise ValueError(f"objects must be None (both), 1 or 2, got {objects!r}")
        self.n, self.resolution, self.seed, self.split, self.prefixes, self.objects, self.stream = (
            n, resolution, seed, split, prefixes, objects, stream)

    def __len__(self):
        return self.n

    def attributes(self, i):
        # A generator of its own, seeded from (seed, i, split, stream): never the global random
        # state. (numpy pads a key with zeros, so the "train" stream's key is [seed, i, split].)
        split = 0 if self.split is None else len(self.split)
        rng = np.random.default_rng([self.seed, i, split, STREAMS.index(self.stream)])
        while True:  # rejection keeps the distribution within the split uniform
            scene = _random_scene(rng)
            if self.objects in (None, len(scene["objects"])) and _in_split(scene, self.split):
                return scene, (PREFIXES[rng.integers(4)] if self.prefixes else "")

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        scene, prefix = self.attributes(i)
        image = torch.from_numpy(render(scene, self.resolution)).permute(2, 0, 1)  # (3, H, W)
        return {"image": image.float() / 127.5 - 1, "caption": prefix + caption_of(scene),
                "attributes": scene, "label": SHAPES.index(scene["objects"][0]["shape"])}


# ----------------------------------------------------------------------------------------------
# The caption checker: judge an image against a canonical caption, attribute by attribute.

def strip_prefix(caption):
    """"a picture of a red circle on the left" -> "a red circle on the left"."""
    return next((caption[len(p):] for p in PREFIXES[1:] if caption.startswith(p)), caption)


def parse_caption(caption):
    """Canonical caption -> {"objects": [{size, colour, shape}, ...], "position" | "relation"}."""
    words = strip_prefix(caption.strip().lower())

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


def is_shapes_caption(caption):
    """Whether the checker can read a caption: true of shapes captions, false of other data's."""
    try:
        parse_caption(caption)
    except ValueError:
        return False
    return True


def find_objects(image):
    """Detect flat-coloured objects on white, one per palette colour present -> [{colour, shape,
    area, size, centre}] (centre in 64 px canvas coordinates). A pixel p is read as a blend
    a * c + (1 - a) * white of its nearest palette colour c, so anti-aliased edges count in part."""
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
    grid, s, objects = torch.arange(res, dtype=torch.float64) + 0.5, CANVAS / res, []
    for k, colour in enumerate(COLOURS):
        cov = torch.where(best == k, coverage, 0.0).reshape(res, res)       # (H, W)
        area = cov.sum().item()
        if area < min_area:
            continue
        cols, rows = cov.max(0).values, cov.max(1).values  # soft extent along x and y
        width, height = cols.sum().item(), rows.sum().item()
        cx, cy = (cols * grid).sum().item() / width, (rows * grid).sum().item() / height
        fill = area / max(width * height, 1e-9)
        upper = cov[grid[:, None].expand(res, res) < cy].sum().item() / area  # mass above centre
        shape = "triangle" if upper < 0.37 else ("square" if fill > 0.89 else "circle")
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
    """Judge one image (3, H, W; uint8 or [-1, 1]) against one canonical caption -> {attribute:
    bool}: colour/shape/size of each named object (a_colour, b_shape, ...), position (one object)
    or relation (two objects), no_stray (no other object), and exact (all)."""
    want, found = parse_caption(caption), find_objects(image)
    n, best = len(want["objects"]), None
    # Match detected objects to named ones by the assignment that agrees on most attributes.
    for order in itertools.permutations(found, min(n, len(found))):
        padded = list(order) + [None] * (n - len(order))  # a named object left unmatched: None
        result = {f"{name}_{key}": f is not None and f[key] == w[key]
                  for name, w, f in zip("ab", want["objects"], padded)
                  for key in ("colour", "shape", "size")}
        place = "position" if n == 1 else "relation"
        result[place] = len(order) == n and want[place] == (
            _position_of(order[0]["centre"]) if n == 1 else _relation_of(*order))
        if best is None or sum(result.values()) > sum(best.values()):
            best = result
    best["no_stray"] = len(found) == n
    best["exact"] = all(best.values())
    return best


def check_images(images, captions):
    """Summary over many: exact-match and per-attribute rates, one- and two-object prompts apart."""
    everything = [check_image(image, caption) for image, caption in zip(images, captions)]
    summary = {}
    for group, place in (("one", "position"), ("two", "relation")):
        results = [r for r in everything if place in r]
        if results:
            summary[group] = {k: sum(r[k] for r in results) / len(results) for k in results[0]}
            summary[group]["n"] = len(results)
    summary["exact"] = sum(r["exact"] for r in everything) / max(len(everything), 1)
    return summary


def shape_judgements(images, shapes):
    """For class-conditional samples: per image, the attributes of the single object found
    (None when there is not exactly one) and whether its shape is the requested one."""
    objects = [objs[0] if len(objs) == 1 else None for objs in map(find_objects, images)]
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


if __name__ == "__main__":
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(4, 4, figsize=(12, 13))
    for ax, item in zip(axes.flat, ShapesDataset(16, resolution=64, seed=0)):
        ax.imshow((item["image"].permute(1, 2, 0) + 1) / 2)
        ax.set_title(item["caption"].replace(" a ", "\na ", 1), fontsize=8)
        ax.axis("off")
    os.makedirs("out", exist_ok=True)
    fig.savefig("out/shapes.png", dpi=80, bbox_inches="tight")
    for res in (32, 64):
        dataset = ShapesDataset(1000, resolution=res, seed=0, stream="test")
        scenes = [dataset.attributes(i)[0] for i in range(len(dataset))]
        images = torch.from_numpy(np.stack([render(s, res) for s in scenes])).permute(0, 3, 1, 2)
        summary = check_images(images, [caption_of(s) for s in scenes])
        print(f"checker on 1000 rendered scenes at {res} px: exact match {summary['exact']:.3f}")
    print("wrote out/shapes.png")
