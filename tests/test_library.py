"""Captioning a photo library: folders and lists in, JSONL/CSV records out as they are captioned, resumable
after a kill, bad files recorded and the run going on."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from captioner.data.synth import make_synth
from conftest import untrained_model_file


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """A folder of photos in subfolders, a corrupt one among them, and a model."""
    root = tmp_path_factory.mktemp("library")
    photos = sorted((make_synth(root / "synth", n_train=30, n_val=2, n_test=2, size=32) / "images").glob("*.png"))
    for i, photo in enumerate(photos[:30]):
        target = root / "photos" / ("2023" if i % 2 else "2024/summer") / f"p{i:02d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(photo.read_bytes())
    (root / "photos" / "2023" / "p15.png").write_bytes(b"not an image")  # in the middle
    (root / "photos" / "notes.txt").write_text("not an image file: not picked from a folder")
    return root, untrained_model_file(root / "model.pt")


def _caption(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "captioner.cli", "caption", "--no-progress", *map(str, args)],
                          capture_output=True, text=True, timeout=300, cwd=cwd)


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_folder_to_jsonl_records_the_bad_file_and_goes_on(library, tmp_path):
    root, model = library
    out = tmp_path / "captions.jsonl"
    run = _caption("--model", model, root / "photos", "--output", out)
    assert run.returncode == 3 and "Traceback" not in run.stderr  # some failed
    records = _records(out)
    assert len(records) == 30 and len({r["path"] for r in records}) == 30
    bad = [r for r in records if r["error"]]
    assert [r["path"] for r in bad] == [str(root / "photos" / "2023" / "p15.png")] and bad[0]["caption"] is None
    good = [r for r in records if not r["error"]]
    assert all(r["caption"] and isinstance(r["score"], float) and len(r["model"]) == 12 for r in good)
    assert "attention" not in good[0]
    # the same captions as captioning the files one by one on the command line
    one = _caption("--model", model, good[0]["path"])
    assert one.stdout.strip() == good[0]["caption"]


def test_glob_lists_csv_and_attention(library, tmp_path):
    root, model = library
    listing = tmp_path / "list.txt"
    listing.write_text(f"# my picks\n{root / 'photos' / '2023' / 'p01.png'}\n\n{tmp_path / 'gone.png'}\n")
    out = tmp_path / "picks.csv"
    run = _caption("--model", model, root / "photos" / "2024", "--glob", "p0*.png", "--from-list", listing,
                   "--output", out)
    assert run.returncode == 3, run.stderr
    rows = list(csv.DictReader(out.open()))
    assert [r["path"].rsplit("/", 1)[1] for r in rows] == ["p00.png", "p02.png", "p04.png", "p06.png", "p08.png",
                                                           "p01.png", "gone.png"]
    assert rows[-1]["error"] and not rows[-1]["caption"] and rows[0]["caption"]
    with_maps = tmp_path / "maps.jsonl"
    assert _caption("--model", model, root / "photos" / "2023" / "p01.png", "--output", with_maps,
                    "--attention").returncode == 0
    (record,) = _records(with_maps)
    assert len(record["attention"]) == len(record["tokens"]) and len(record["attention"][0]) == 16


def test_an_existing_output_needs_resume(library, tmp_path):
    root, model = library
    out = tmp_path / "c.jsonl"
    assert _caption("--model", model, root / "photos" / "2023" / "p01.png", "--output", out).returncode == 0
    again = _caption("--model", model, root / "photos" / "2023" / "p01.png", "--output", out)
    assert again.returncode == 2 and again.stderr.strip().count("\n") == 0 and "--resume" in again.stderr
    resumed = _caption("--model", model, root / "photos", "--output", out, "--resume")
    assert resumed.returncode == 3 and len(_records(out)) == 30


def test_a_run_killed_half_way_resumes_and_holds_every_image_once(library, tmp_path):
    root, model = library
    many = tmp_path / "many"
    photos = sorted((root / "photos").rglob("p*.png"))
    for i in range(300):  # the same photos under other names
        (many / f"{i % 7}").mkdir(parents=True, exist_ok=True)
        os.link(photos[i % len(photos)], many / f"{i % 7}" / f"img{i:04d}.png")
    out = tmp_path / "big.jsonl"
    cmd = [sys.executable, "-m", "captioner.cli", "caption", "--no-progress", "--model", str(model), str(many),
           "--output", str(out), "--batch-size", "4"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out.exists() and out.read_text().count("\n") >= 20):
        assert proc.poll() is None and time.time() < deadline, "finished before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    with out.open("a") as f:
        f.write('{"path": "half a rec')  # as if killed in mid-write
    done_before = out.read_text().count("\n")
    assert 20 <= done_before < 300
    resumed = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode in (0, 3), resumed.stderr
    paths = [r["path"] for r in _records(out)]
    assert len(paths) == len(set(paths)) == 300
