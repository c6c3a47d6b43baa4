"""tools/compact_dataset.py: a small WebP copy of a dataset that reads back as the same dataset."""

import importlib.util
import zipfile
from pathlib import Path

from PIL import Image

from captioner.data.readers import load_dataset
from captioner.data.synth import make_synth

_spec = importlib.util.spec_from_file_location(
    "compact_dataset", Path(__file__).resolve().parents[1] / "tools" / "compact_dataset.py")
compact_dataset = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compact_dataset)


def test_compact_copy_keeps_splits_and_captions_and_reports_bad_images(tmp_path, capsys):
    data = make_synth(tmp_path / "synth", n_train=12, n_val=4, n_test=2, seed=1)
    broken = sorted((data / "images").iterdir())[0]
    broken.write_bytes(b"not an image")
    out = tmp_path / "small.zip"
    assert compact_dataset.main(["--data", str(data), "--out", str(out), "--size", "32", "--workers", "1"]) == 0
    assert f"{broken.name}: not an image" in capsys.readouterr().err

    with zipfile.ZipFile(out) as z:
        z.extractall(tmp_path / "unzipped")
    small = load_dataset(tmp_path / "unzipped" / "flickr8k")
    original = {Path(r.name).stem: r for r in load_dataset(data).records if r.split}
    copied = {Path(r.name).stem: r for r in small.records if r.split}
    assert set(copied) == set(original) - {broken.stem}  # every image of a split but the unreadable one
    for stem, r in copied.items():
        assert r.split == original[stem].split and r.captions_raw == original[stem].captions_raw
        with Image.open(r.image) as img:
            assert img.format == "WEBP" and img.size == (32, 32)


def test_parts_unzip_into_the_same_dataset(tmp_path):
    data = make_synth(tmp_path / "synth", n_train=9, n_val=3, n_test=0, seed=1)
    out = tmp_path / "small.zip"
    assert compact_dataset.main(["--data", str(data), "--out", str(out), "--size", "32", "--workers", "1",
                                 "--parts", "2"]) == 0
    parts = [tmp_path / "small.1of2.zip", tmp_path / "small.2of2.zip"]
    assert not out.exists() and all(p.exists() for p in parts)
    sizes = []
    for part in parts:
        with zipfile.ZipFile(part) as z:
            sizes.append(sum(name.startswith("flickr8k/images/") for name in z.namelist()))
            z.extractall(tmp_path / "unzipped")
    assert sizes == [6, 6]
    assert len([r for r in load_dataset(tmp_path / "unzipped" / "flickr8k").records if r.split]) == 12
