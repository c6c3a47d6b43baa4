"""The Python API: captioner.load() and its Captioner, as the README and docs/usage.md show it, captioning as the
CLI does; and the captioning path stays free of Lightning."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import captioner
from captioner.cli import main
from captioner.data.synth import make_synth
from conftest import as_original_flickr8k, untrained_model_file

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "src" / "captioner" / "samples"


@pytest.fixture(scope="module")
def shipped():
    return captioner.load(device="cpu")


def _cli_captions(capsys, *args) -> list[str]:
    capsys.readouterr()
    main(["caption", "--device", "cpu", *map(str, args)])
    return [line.rsplit(": ", 1)[-1] for line in capsys.readouterr().out.splitlines()]


def test_the_readme_example_runs_as_written(tmp_path, monkeypatch, capsys):
    block = re.search(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    assert "captioner.load()" in block and 'cap("photo.jpg")' in block
    shutil.copy(SAMPLES / "cat.jpg", tmp_path / "photo.jpg")
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})
    printed = capsys.readouterr().out.strip()
    assert printed and printed == _cli_captions(capsys, "photo.jpg")[0]


def test_every_kind_of_input_gives_the_same_caption_as_the_cli(shipped, capsys):
    photos = sorted(SAMPLES.glob("*.jpg"))[:3]
    cli = _cli_captions(capsys, *photos)
    pil = [Image.open(p) for p in photos]
    arrays = [np.asarray(img.convert("RGB")) for img in pil]
    tensors = [torch.tensor(a).permute(2, 0, 1).float() / 255 for a in arrays]  # [3, H, W] in 0..1
    for given in (photos, [str(p) for p in photos], pil, arrays, tensors):
        results = shipped(given)
        assert [r.text for r in results] == cli
    one = shipped(photos[0])
    assert isinstance(one, captioner.Caption) and one.text == cli[0] and one.error is None
    assert one.attention.shape == (len(one.tokens), 7, 7) and np.allclose(one.attention.sum(axis=(1, 2)), 1, atol=1e-3)


def test_a_bad_item_in_a_list_gets_an_error_and_the_rest_are_captioned(shipped, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8 not really a jpeg")
    photos = sorted(SAMPLES.glob("*.jpg"))[:2]
    results = shipped([photos[0], corrupt, "nowhere.png", np.zeros((2, 2, 7)), photos[1]])
    assert [r.error is None for r in results] == [True, False, False, False, True]
    assert str(corrupt) in results[1].error and "nowhere.png" in results[2].error and "image 4" in results[3].error
    assert [results[0].text, results[4].text] == _cli_captions(capsys, *photos)
    assert all("\n" not in r.error for r in results if r.error)


def test_settings_hold_for_one_call_only(shipped, capsys):
    photo = SAMPLES / "astronaut.jpg"
    before = shipped(photo)
    greedy = shipped(photo, beam_size=1, block_ngram=0)
    assert greedy.text == _cli_captions(capsys, "--beam-size", "1", "--set", "decode.block_ngram=0", photo)[0]
    assert shipped(photo).text == before.text and shipped.settings["beam_size"] == 5
    with pytest.raises(captioner.CaptionerError, match="unknown decoding setting"):
        shipped(photo, beam=3)
    with pytest.raises(captioner.CaptionerError, match="no hard-attention decoder"):
        shipped(photo, hard_inference="argmax")
    assert shipped(photo).text == before.text


def test_an_ensemble_captions_as_the_cli_does(tmp_path, capsys):
    soft = untrained_model_file(tmp_path / "soft.pt", "soft")
    hard = untrained_model_file(tmp_path / "hard.pt", "hard")
    photos = sorted((make_synth(tmp_path / "synth", n_train=4, n_val=2, n_test=2) / "images").glob("*.png"))[:3]
    ensemble = captioner.load([soft, hard], device="cpu", hard_inference="argmax", ensemble_mean="logprob")
    assert ensemble.kind == "ensemble of 2: soft + hard"
    cli = _cli_captions(capsys, "--model", soft, "--model", hard, "--set", "model.hard_inference=argmax",
                        "--set", "decode.ensemble_mean=logprob", *photos)
    assert [r.text for r in ensemble(photos)] == cli


def test_save_and_figure(shipped, tmp_path):
    photo = SAMPLES / "cat.jpg"
    results = shipped([photo, tmp_path / "missing.jpg"])
    out = shipped.save(results, tmp_path / "shown")
    assert sorted(p.name for p in out.iterdir()) == ["captions.json", "cat.attention.png", "cat.jpg"]
    figure = shipped.figure(results[0], photo)
    assert len([ax for ax in figure.axes if ax.images]) == len(results[0].tokens)


def test_help_reads_well():
    doc = captioner.load.__doc__
    for word in ("model:", "device:", "consensus:", "settings:", "Returns:", "Example:"):
        assert word in doc
    assert captioner.Captioner.__call__.__doc__ and captioner.evaluate.__doc__ and captioner.train.__doc__


@pytest.mark.parametrize("code", [
    "import captioner; captioner.load()",
    "from captioner.cli import main; main(['caption', 'src/captioner/samples/cat.jpg'])",
    "from captioner.cli import main; main(['evaluate', '--model', 'M', '--data', 'D', '--split', 'test', "
    "'--no-meteor', '--tokenizer', 'python', '--no-progress'])",
], ids=["load", "caption", "evaluate"])
def test_captioning_and_evaluating_do_not_import_lightning(code, tmp_path):
    data = make_synth(tmp_path / "synth", n_train=4, n_val=2, n_test=2)
    model = untrained_model_file(tmp_path / "m.pt")
    code = code.replace("'M'", repr(str(model))).replace("'D'", repr(str(data)))
    check = f"{code}\nimport sys\nassert 'lightning' not in sys.modules, 'lightning imported'"
    run = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "CAPTIONER_CACHE": str(tmp_path / "cache")})
    assert run.returncode == 0, run.stderr[-2000:]


@pytest.mark.slow
def test_the_usage_docs_python_examples_run(tmp_path, monkeypatch, capsys):
    """docs/usage.md "From Python", every block in order, on small stand-ins: the photo is a sample photo, the
    two runs are untrained tiny models, Flickr8k/ is the generated shapes in Flickr8k's layout, and training
    uses the tiny synthetic config for one epoch."""
    text = (ROOT / "docs" / "usage.md").read_text()
    section = text.split("## From Python", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 3
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CAPTIONER_CACHE", str(tmp_path / "cache"))
    shutil.copy(SAMPLES / "cat.jpg", tmp_path / "photo.jpg")
    for name, kind in (("soft", "soft"), ("hard", "hard")):
        (tmp_path / "runs" / name).mkdir(parents=True)
        untrained_model_file(tmp_path / "runs" / name / "model.pt", kind)
    as_original_flickr8k(make_synth(tmp_path / "synth", n_train=20, n_val=6, n_test=4), tmp_path / "Flickr8k")
    stand_ins = {'"soft_lite0"': '"synth_soft"', '"train.max_epochs": 10': '"train.max_epochs": 1'}
    scope: dict = {}
    for block in blocks:
        for written, used in stand_ins.items():
            block = block.replace(written, used)
        exec(compile(block, "docs/usage.md", "exec"), scope)
    assert (tmp_path / "shown" / "captions.json").is_file() and (tmp_path / "shown" / "photo.attention.png").is_file()
    assert 0 <= scope["report"]["metrics"]["CIDEr-D"] and (scope["run"] / "model.pt").is_file()
    assert "missing.jpg" in capsys.readouterr().out
