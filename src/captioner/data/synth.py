"""A synthetic scene dataset with known captions: two coloured shapes, one above or beside the other.

Each ``size x size`` image has a dark-grey background and exactly two objects of different
(colour, shape), each inside one cell of a 4 x 4 grid, either in the same column (one above the
other) or in the same row (one left of the other).  Five captions per image state that relation in
equivalent ways ("a red circle above a blue square", "there is a blue square below a red circle").
``objects.json`` records every object's colour, shape and pixel box, so tests can check what a model
says and where its attention looks.  Same parameters -> byte-identical files.
"""

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from captioner.errors import CaptionerError, file_error
from captioner.io import write_json_atomic, write_text_atomic

COLOURS = {"red": (220, 50, 50), "green": (50, 190, 70), "blue": (60, 100, 235), "yellow": (235, 215, 50)}
SHAPES = ("circle", "square", "triangle")
GRID = 4  # cells per side
INVERSE = {"above": "below", "below": "above", "to the left of": "to the right of",
           "to the right of": "to the left of"}
TEMPLATES = ("a {x} {rel} a {y}", "a {x} is {rel} a {y}", "there is a {x} {rel} a {y}")
CAPTIONS_PER_IMAGE = 5
FORMAT = "captioner-synth/1"


def make_synth(out_dir: str | Path, n_train: int = 1200, n_val: int = 100, n_test: int = 100, size: int = 64,
               seed: int = 0) -> Path:
    """Write the dataset to ``out_dir`` (reference layout) unless it is already there with these parameters."""
    out_dir = Path(out_dir)
    params = {"format": FORMAT, "n_train": n_train, "n_val": n_val, "n_test": n_test, "size": size, "seed": seed}
    _check_params(params)
    if _is_synth(out_dir) and _stored_params(out_dir) == params:
        return out_dir
    if out_dir.exists() and any(out_dir.iterdir()) and not _is_synth(out_dir):
        raise file_error(out_dir, "exists and is not a synthetic dataset; choose an empty or new folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    tmp.chmod(0o755)  # mkdtemp makes it private
    try:
        _write_dataset(tmp, params)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def load_objects(data_dir: str | Path) -> dict[str, list[dict]]:
    """``objects.json``: image name -> ``[{"color", "shape", "box": [x0, y0, x1, y1]}, ...]``."""
    path = Path(data_dir) / "objects.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise file_error(path, "no such file (not a synthetic dataset?)") from None
    except (OSError, ValueError) as e:
        raise file_error(path, f"cannot read objects ({e})") from None


# -- parameters -------------------------------------------------------------------------------------


def _check_params(params: dict) -> None:
    if min(params["n_train"], params["n_val"], params["n_test"]) < 0:
        raise CaptionerError("synthetic dataset: image counts must not be negative")
    if params["size"] < 16 or params["size"] % GRID:
        raise CaptionerError(f"synthetic dataset: size must be a multiple of {GRID}, at least 16")


def _is_synth(out_dir: Path) -> bool:
    return all((out_dir / f).is_file() for f in ("synth.json", "captions.txt", "objects.json"))


def _stored_params(out_dir: Path) -> dict | None:
    try:
        return json.loads((out_dir / "synth.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# -- one scene --------------------------------------------------------------------------------------


def _random_scene(rng: np.random.Generator, size: int) -> tuple[list[dict], str]:
    """Two different (colour, shape) objects in one row or column; returns (objects, relation).

    The first object is the top (or left) one: ``objects[0] <relation> objects[1]``.
    """
    kinds = [(c, s) for c in COLOURS for s in SHAPES]
    first, second = (kinds[i] for i in rng.choice(len(kinds), size=2, replace=False))
    line, (a, b) = int(rng.integers(GRID)), sorted(rng.choice(GRID, size=2, replace=False).tolist())
    vertical = bool(rng.integers(2))
    cells = [(line, a), (line, b)] if vertical else [(a, line), (b, line)]  # (column, row)
    objects = [_place(kind, cell, rng, size) for kind, cell in zip((first, second), cells, strict=True)]
    return objects, "above" if vertical else "to the left of"


def _place(kind: tuple[str, str], cell: tuple[int, int], rng: np.random.Generator, size: int) -> dict:
    """An object about 3/4 of a cell wide, jittered a few pixels inside its cell."""
    step = size // GRID
    width = step * 3 // 4
    x0 = cell[0] * step + int(rng.integers(step - width + 1))
    y0 = cell[1] * step + int(rng.integers(step - width + 1))
    return {"color": kind[0], "shape": kind[1], "box": [x0, y0, x0 + width, y0 + width]}


def _captions(objects: list[dict], relation: str, rng: np.random.Generator) -> list[str]:
    """Five of the six (template x direction) phrasings of ``objects[0] <relation> objects[1]``."""
    names = [f"{o['color']} {o['shape']}" for o in objects]
    facts = [(names[0], relation, names[1]), (names[1], INVERSE[relation], names[0])]
    options = [t.format(x=x, rel=rel, y=y) for t in TEMPLATES for x, rel, y in facts]
    chosen = sorted(rng.choice(len(options), size=CAPTIONS_PER_IMAGE, replace=False).tolist())
    return [options[i] for i in chosen]


def _render(objects: list[dict], size: int, rng: np.random.Generator) -> np.ndarray:
    """``[size, size, 3]`` uint8: grey background with a little per-image brightness noise, then the shapes."""
    grey = 50 + int(rng.integers(-8, 9))
    pixels = np.full((size, size, 3), grey, dtype=np.uint8)
    for obj in objects:
        x0, y0, x1, y1 = obj["box"]
        pixels[y0:y1, x0:x1][_mask(obj["shape"], x1 - x0)] = COLOURS[obj["color"]]
    return pixels


def _mask(shape: str, width: int) -> np.ndarray:
    """Boolean ``[width, width]`` mask of a filled square, circle or upward triangle."""
    centres = np.arange(width) + 0.5
    ys, xs = np.meshgrid(centres, centres, indexing="ij")
    if shape == "square":
        return np.ones((width, width), dtype=bool)
    if shape == "circle":
        return (xs - width / 2) ** 2 + (ys - width / 2) ** 2 <= (width / 2) ** 2
    return np.abs(xs - width / 2) <= ys / 2  # apex at the top centre, base along the bottom


# -- writing ----------------------------------------------------------------------------------------


def _write_dataset(out: Path, params: dict) -> None:
    rng = np.random.default_rng(params["seed"])
    counts = {"train": params["n_train"], "val": params["n_val"], "test": params["n_test"]}
    (out / "images").mkdir(parents=True)
    (out / "splits").mkdir()
    caption_lines, objects_by_name, split_names = [], {}, {s: [] for s in counts}
    index = 0
    for split, count in counts.items():
        for _ in range(count):
            name = f"{index:05d}.png"
            objects, relation = _random_scene(rng, params["size"])
            caption_lines += [f"{name}\t{c}\n" for c in _captions(objects, relation, rng)]
            Image.fromarray(_render(objects, params["size"], rng)).save(out / "images" / name, format="PNG")
            objects_by_name[name] = objects
            split_names[split].append(name)
            index += 1
    write_text_atomic(out / "captions.txt", "".join(caption_lines))
    for split, names in split_names.items():
        write_text_atomic(out / "splits" / f"{split}.txt", "".join(f"{n}\n" for n in names))
    write_json_atomic(out / "objects.json", objects_by_name)
    write_json_atomic(out / "synth.json", params)  # last: marks the folder complete
