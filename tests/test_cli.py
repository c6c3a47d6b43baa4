"""The command line: --help everywhere, and bad input as one line naming the file, never a traceback."""

import subprocess
import sys

import pytest
from PIL import Image

from captioner.checkpoint import CaptionModel, save_model
from captioner.cli import build_parser, main
from captioner.config import load_config
from captioner.data.vocab import Vocab
from captioner.decoders import build_decoder
from captioner.encoders import create_encoder

COMMANDS = ["synth", "prepare", "features", "train", "evaluate", "caption"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "captioner.cli", *args], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_explains_its_options(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: captioner" in out
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    for action in sub._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, f"{command} {action.option_strings} has no help text"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """An untrained soft-attention model on the tiny encoder: enough to exercise the caption command."""
    cfg = load_config("synth_soft")
    vocab = Vocab.build([["a", "red", "circle", "above", "a", "blue", "square"]])
    enc = create_encoder("tiny", weights="none")
    decoder = build_decoder(cfg.model, len(vocab), enc.global_dim, enc.grid_dim).eval()
    path = tmp_path_factory.mktemp("model") / "model.pt"
    return save_model(path, CaptionModel(decoder, vocab, cfg, enc.describe()))


def test_caption_reports_bad_images_and_captions_the_rest(model_file, tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (80, 50), (200, 30, 30)).save(good)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"<html>not an image</html>")
    result = run_cli("caption", "--model", str(model_file), str(good), str(tmp_path / "missing.jpg"), str(corrupt))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{good}: ")
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert any("missing.jpg" in line and "no such file" in line for line in lines)
    assert any("corrupt.jpg" in line for line in lines)
    assert lines[-1] == "2 of 3 images skipped"


def test_only_bad_images_exit_nonzero(model_file, tmp_path):
    result = run_cli("caption", "--model", str(model_file), str(tmp_path / "missing.jpg"))
    assert result.returncode == 2 and "Traceback" not in result.stderr


@pytest.mark.parametrize("content, expected", [
    (b"", "empty"),
    (b"this line has no tab\n", "unrecognised"),
    (b"a.jpg\tA dog runs .\nb.jpg\tA cat sleeps .\nbroken line\n", "line 3"),
])
def test_bad_annotation_files_give_one_line(tmp_path, content, expected):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "captions.txt").write_bytes(content)
    result = run_cli("prepare", "--data", str(data))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "captions.txt" in result.stderr and expected in result.stderr


def test_bad_model_and_config_give_one_line(tmp_path):
    junk = tmp_path / "model.pt"
    junk.write_bytes(b"junk")
    for args, needle in [(["caption", "--model", str(junk), "x.jpg"], "model.pt"),
                         (["train", "--config", "no_such_config", "--data", str(tmp_path)], "no_such_config"),
                         (["prepare", "--data", str(tmp_path / "nowhere")], "nowhere")]:
        result = run_cli(*args)
        assert result.returncode == 2, args
        assert result.stderr.startswith("error: ") and needle in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
