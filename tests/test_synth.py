"""Synthetic shapes dataset: deterministic files whose captions match the drawn objects."""

import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captioner.data.readers import load_dataset
from captioner.data.synth import COLOURS, GRID, SHAPES, load_objects, make_synth
from captioner.errors import CaptionerError

SMALL = {"n_train": 12, "n_val": 4, "n_test": 4}
CAPTION = re.compile(r"(?:there is )?a (\w+) (\w+) (?:is )?(above|below|to the left of|to the right of) a (\w+) (\w+)")


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files(tmp_path):
    a = make_synth(tmp_path / "a", **SMALL, seed=3)
    b = make_synth(tmp_path / "b", **SMALL, seed=3)
    files = _files(a)
    assert files == _files(b)
    assert {"captions.txt", "objects.json", "synth.json", "splits/train.txt", "images/00000.png"} <= set(files)
    assert _files(make_synth(tmp_path / "c", **SMALL, seed=4)) != files


def test_layout_reads_as_a_dataset(tmp_path):
    ds = load_dataset(make_synth(tmp_path / "s", **SMALL))
    assert ds.splits() == {"train": 12, "val": 4, "test": 4}
    assert [r.name for r in ds.records][:2] == ["00000.png", "00001.png"]
    assert all(len(r.captions) == 5 and len(set(r.captions_raw)) == 5 for r in ds.records)
    img = Image.open(ds.records[0].image)
    assert img.size == (64, 64) and img.mode == "RGB"


def _relation_holds(subject: dict, relation: str, other: dict) -> bool:
    """Grid geometry of ``subject <relation> other``: same column/row, on the named side."""
    (sx0, sy0, sx1, sy1), (ox0, oy0, ox1, oy1) = subject["box"], other["box"]
    same_column, same_row = sx0 // 16 == ox0 // 16, sy0 // 16 == oy0 // 16
    return {"above": same_column and sy1 <= oy0, "below": same_column and sy0 >= oy1,
            "to the left of": same_row and sx1 <= ox0, "to the right of": same_row and sx0 >= ox1}[relation]


def test_captions_match_the_objects(tmp_path):
    root = make_synth(tmp_path / "s", n_train=40, n_val=0, n_test=0, seed=5)
    objects = load_objects(root)
    relations = set()
    for line in (root / "captions.txt").read_text().splitlines():
        name, caption = line.split("\t")
        colour1, shape1, relation, colour2, shape2 = CAPTION.fullmatch(caption).groups()
        by_kind = {(o["color"], o["shape"]): o for o in objects[name]}
        assert set(by_kind) == {(colour1, shape1), (colour2, shape2)}, caption
        assert _relation_holds(by_kind[colour1, shape1], relation, by_kind[colour2, shape2]), caption
        relations.add(relation)
    assert relations == {"above", "below", "to the left of", "to the right of"}


def test_objects_are_drawn_inside_one_grid_cell(tmp_path):
    root = make_synth(tmp_path / "s", n_train=30, n_val=0, n_test=0, seed=2)
    cell = 64 // GRID
    for name, objs in load_objects(root).items():
        assert len(objs) == 2 and (objs[0]["color"], objs[0]["shape"]) != (objs[1]["color"], objs[1]["shape"])
        pixels = np.asarray(Image.open(root / "images" / name))
        x, y = next((x, y) for x, y in ((0, 0), (63, 0), (0, 63), (63, 63)) if not _covered(objs, x, y))
        background = pixels[y, x]
        assert 40 <= background[0] <= 60 and len(set(background)) == 1  # dark grey
        for obj in objs:
            x0, y0, x1, y1 = obj["box"]
            assert obj["color"] in COLOURS and obj["shape"] in SHAPES
            assert x0 // cell == (x1 - 1) // cell and y0 // cell == (y1 - 1) // cell  # one cell
            assert cell // 2 <= x1 - x0 <= cell
            centre = pixels[(y0 + y1) // 2 + 1, (x0 + x1) // 2]
            assert tuple(centre) == COLOURS[obj["color"]], (name, obj)


def _covered(objs: list[dict], x: int, y: int) -> bool:
    return any(o["box"][0] <= x < o["box"][2] and o["box"][1] <= y < o["box"][3] for o in objs)


def test_existing_dataset_with_same_parameters_is_reused(tmp_path):
    root = make_synth(tmp_path / "s", **SMALL)
    stamp = (root / "captions.txt").stat().st_mtime_ns
    assert make_synth(root, **SMALL) == root
    assert (root / "captions.txt").stat().st_mtime_ns == stamp
    make_synth(root, **{**SMALL, "n_train": 13})
    assert len(list((root / "images").iterdir())) == 21


def test_refuses_to_write_into_an_unrelated_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(CaptionerError, match="not a synthetic dataset"):
        make_synth(tmp_path / "mine", **SMALL)
    with pytest.raises(CaptionerError, match="objects.json"):
        load_objects(tmp_path / "mine")
    with pytest.raises(CaptionerError, match="size"):
        make_synth(tmp_path / "odd", size=30)


def test_generation_is_fast(tmp_path):
    start = time.perf_counter()
    make_synth(tmp_path / "s", n_train=160, n_val=20, n_test=20)
    assert time.perf_counter() - start < 1.25  # 800 images must take well under 5 s
