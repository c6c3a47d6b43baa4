"""Beam size and caption length: --beam-size / --max-len when given, else --set decode.beam_size / max_len, else
the model file's stored decode settings, else the config defaults."""

import json

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

import captioner.captioning as captioning
from captioner.checkpoint import load_model, save_model
from captioner.cli import main
from captioner.config import Config
from conftest import untrained_model_file

STORED_BEAM, STORED_LEN = 2, 4  # unlike every default (5, 30) and the synth configs' (3, 16)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """An untrained soft model whose file stores decode.beam_size=2, decode.max_len=4."""
    root = tmp_path_factory.mktemp("decode")
    model = load_model(untrained_model_file(root / "plain.pt", "soft"))
    model.config.decode.beam_size, model.config.decode.max_len = STORED_BEAM, STORED_LEN
    return save_model(root / "model.pt", model)


@pytest.fixture
def searches(monkeypatch):
    """The (beam_size, max_len) of every beam search the commands run."""
    seen = []
    real = captioning.beam_search

    def spy(*args, **kwargs):
        seen.append((kwargs["beam_size"], kwargs["max_len"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(captioning, "beam_search", spy)
    return seen


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "photo.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(path)
    return path


@pytest.mark.parametrize("flags, expected", [
    ([], (STORED_BEAM, STORED_LEN)),  # the model file's own
    (["--set", "decode.beam_size=3", "--set", "decode.max_len=6"], (3, 6)),  # --set over the file
    (["--beam-size", "1"], (1, STORED_LEN)),  # the flag over the file
    (["--beam-size", "1", "--max-len", "7", "--set", "decode.beam_size=3", "--set", "decode.max_len=6"], (1, 7)),
])
def test_caption_decodes_with_the_models_stored_settings_unless_told(model_file, image, searches, capsys, flags,
                                                                     expected):
    main(["caption", "--model", str(model_file), *flags, str(image)])
    words = capsys.readouterr().out.split()
    assert searches and set(searches) == {expected}
    assert 0 < len(words) <= expected[1]


def test_evaluate_decodes_and_reports_the_models_stored_beam_size(model_file, tmp_path, searches, capsys):
    from captioner.data.synth import make_synth

    data = make_synth(tmp_path / "synth", n_train=4, n_val=3, n_test=1, size=32)
    common = ["evaluate", "--model", str(model_file), "--data", str(data), "--no-meteor", "--tokenizer", "python",
              "--cache", str(tmp_path / "cache"), "--no-progress"]
    main([*common, "--out", str(tmp_path / "stored.json")])
    assert f"beam {STORED_BEAM}" in capsys.readouterr().out  # the table's title
    assert json.loads((tmp_path / "stored.json").read_text())["beam_size"] == STORED_BEAM
    assert set(searches) == {(STORED_BEAM, STORED_LEN)}
    searches.clear()
    main([*common, "--beam-size", "1", "--set", "decode.beam_size=3", "--out", str(tmp_path / "flag.json")])
    assert json.loads((tmp_path / "flag.json").read_text())["beam_size"] == 1
    assert set(searches) == {(1, STORED_LEN)}


def test_export_set_stores_the_decode_settings_the_model_then_uses(model_file, tmp_path, image, searches, capsys):
    out = tmp_path / "wide.pt"
    main(["export", str(model_file), str(out), "--set", "decode.beam_size=6"])
    assert load_model(out).config.decode.beam_size == 6
    main(["caption", "--model", str(out), str(image)])
    assert set(searches) == {(6, STORED_LEN)}


def test_a_model_file_without_the_settings_decodes_with_the_config_defaults(model_file, tmp_path):
    obj = torch.load(model_file, weights_only=True)
    del obj["config"]["decode"]["beam_size"], obj["config"]["decode"]["max_len"]  # a file that never stored them
    old = tmp_path / "old.pt"
    torch.save(obj, old)
    defaults = Config().decode
    assert captioning.search_size(load_model(old)) == (defaults.beam_size, defaults.max_len)


def test_the_demo_api_uses_the_models_beam_size_unless_the_request_gives_one(model_file):
    from captioner.serve.app import create_app

    with TestClient(create_app({"m": model_file})) as client:
        for fields, beam in (({}, STORED_BEAM), ({"beam_size": ""}, STORED_BEAM), ({"beam_size": "3"}, 3)):
            r = client.post("/api/caption", data={"sample": "cat.jpg", **fields})
            assert r.status_code == 200, r.text
            assert r.json()["beam_size"] == beam


@pytest.mark.parametrize("args, needle", [
    (["--beam-size", "0"], "must be at least 1"),
    (["--set", "decode.beam_size=0"], "decode.beam_size and decode.max_len must be >= 1"),
])
def test_a_beam_of_nothing_is_refused(model_file, image, capsys, args, needle):
    with pytest.raises(SystemExit) as exit_info:
        main(["caption", "--model", str(model_file), *args, str(image)])
    assert exit_info.value.code == 2 and needle in capsys.readouterr().err
