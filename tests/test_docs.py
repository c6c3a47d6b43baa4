"""The user docs stay short and current, and the README's newcomer path works as written."""

import json
import re
from pathlib import Path

import pytest

from captioner.cli import main
from captioner.data.synth import make_synth
from conftest import as_original_flickr8k

ROOT = Path(__file__).resolve().parents[1]
GUIDES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PRODUCT = [p for p in (ROOT / "src" / "captioner").rglob("*")
           if p.suffix in {".py", ".md", ".yaml", ".html", ".js", ".css"}]

# machine-local paths, dates, and accounts of how the work was organised
LOCAL_PATH = re.compile(r"/root\b|/tmp\b|~/|/home/\w")
DATE = re.compile(r"\b20\d\d-\d\d-\d\d\b")
WORK_ACCOUNT = re.compile(r"\b(sessions?|issue \d+|issues? #\d+|GPU loans?|device time)\b", re.IGNORECASE)


def test_readme_and_results_stay_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 150
    assert len((ROOT / "docs" / "results.md").read_text().splitlines()) <= 300


@pytest.mark.parametrize("path", GUIDES + PRODUCT, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_local_paths_dates_or_work_notes(path):
    text = path.read_text(errors="replace")
    for pattern in (LOCAL_PATH, DATE) + ((WORK_ACCOUNT,) if path.suffix == ".md" else ()):
        hits = [m.group(0) for m in pattern.finditer(text)]
        assert not hits, f"{path.relative_to(ROOT)}: {hits[:5]}"


def test_relative_links_in_the_guides_resolve():
    for page in GUIDES + [ROOT / "src" / "captioner" / "pretrained" / "MODEL.md"]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.relative_to(ROOT)} links to missing {target}"


@pytest.mark.slow
def test_the_readme_train_evaluate_caption_commands(tmp_path, monkeypatch, capsys):
    """README, "Train the paper's models on your Flickr8k": the three commands on an original-layout folder
    (the tiny synthetic config stands in for soft_resnet101, whose weights are a download)."""
    readme = (ROOT / "README.md").read_text()
    for command in ("captioner train --config soft_resnet101 --data Flickr8k/ --out runs/soft_resnet101",
                    "captioner evaluate --model runs/soft_resnet101/model.pt --data Flickr8k/ --split test",
                    "captioner caption --model runs/soft_resnet101/model.pt photo.jpg --out shown/"):
        assert command in readme
    monkeypatch.setenv("CAPTIONER_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    synth = make_synth(tmp_path / "synth", n_train=60, n_val=10, n_test=10)
    data = as_original_flickr8k(synth, tmp_path / "Flickr8k")
    photo = next((data / "Flicker8k_Dataset").iterdir())

    main(["train", "--config", "synth_soft", "--data", "Flickr8k/", "--out", "runs/soft", "--no-progress",
          "--set", "train.max_epochs=1"])
    main(["evaluate", "--model", "runs/soft/model.pt", "--data", "Flickr8k/", "--split", "test",
          "--no-meteor", "--tokenizer", "python", "--no-progress", "--out", "test.json"])
    capsys.readouterr()
    main(["caption", "--model", "runs/soft/model.pt", str(photo), "--out", "shown/"])
    caption = capsys.readouterr().out.strip()
    assert caption and (tmp_path / "shown" / f"{photo.stem}.jpg").is_file()
    report = json.loads((tmp_path / "test.json").read_text())
    assert report["split"] == "test" and report["images"] == 10 and "CIDEr-D" in report["metrics"]
