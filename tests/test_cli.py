"""The command line: --help everywhere, and bad input as one line naming the file, never a traceback."""

import subprocess
import sys

import pytest
import torch
from PIL import Image

from captioner.cli import build_parser, main
from conftest import untrained_model_file

COMMANDS = ["synth", "prepare", "features", "train", "evaluate", "compare", "caption", "serve", "export"]


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
    return untrained_model_file(tmp_path_factory.mktemp("model") / "model.pt", "soft")


def test_caption_reports_bad_images_and_captions_the_rest(model_file, tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (80, 50), (200, 30, 30)).save(good)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"<html>not an image</html>")
    result = run_cli("caption", "--model", str(model_file), str(good), str(tmp_path / "missing.jpg"), str(corrupt))
    assert result.returncode == 3, result.stderr  # some images failed
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


def test_export_half_then_caption_with_the_default_model(model_file, tmp_path, monkeypatch, capsys):
    """`captioner export --half` halves the file; `caption` with no --model uses the shipped model file."""
    import captioner.checkpoint as checkpoint
    from captioner.checkpoint import load_model

    small = tmp_path / "pretrained" / "model.pt"
    small.parent.mkdir()
    main(["export", str(model_file), str(small), "--half", "--set", "decode.length_penalty=0.7"])
    assert "float16" in capsys.readouterr().out
    assert load_model(small).config.decode.length_penalty == 0.7  # decoding defaults travel with the model
    assert load_model(model_file).config.decode.length_penalty == 0.0
    assert small.stat().st_size < 0.6 * model_file.stat().st_size
    full, half = load_model(model_file), load_model(small)
    for name, value in full.decoder.state_dict().items():
        torch.testing.assert_close(half.decoder.state_dict()[name], value, atol=1e-3, rtol=1e-3)
    image = tmp_path / "photo.png"
    Image.new("RGB", (80, 50), (20, 30, 200)).save(image)

    monkeypatch.setattr(checkpoint, "PRETRAINED", small)
    main(["caption", str(image)])
    assert capsys.readouterr().out.strip()  # one caption line
    monkeypatch.setattr(checkpoint, "PRETRAINED", tmp_path / "nothing.pt")
    with pytest.raises(SystemExit) as exit_info:
        main(["caption", str(image)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nothing.pt" in err and "--model" in err


def test_config_name_is_not_hidden_by_a_folder_of_that_name(tmp_path, monkeypatch):
    """`--config soft_lite0` run from a folder holding a run called soft_lite0 still means the shipped config."""
    from captioner.config import CONFIG_DIR, resolve_config_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "soft_lite0").mkdir()
    assert resolve_config_path("soft_lite0") == CONFIG_DIR / "soft_lite0.yaml"
    (tmp_path / "mine.yaml").write_text("model: {type: soft}\n")
    assert resolve_config_path("mine.yaml").resolve() == tmp_path / "mine.yaml"


def test_evaluate_scores_the_readable_images_and_names_the_rest(model_file, tmp_path):
    from captioner.data.synth import make_synth

    data = make_synth(tmp_path / "synth", n_train=8, n_val=6, n_test=2, size=32)
    val = (data / "splits" / "val.txt").read_text().split()
    (data / "images" / val[0]).write_bytes(b"\xff\xd8\xff\xe0 truncated")
    result = run_cli("evaluate", "--model", str(model_file), "--data", str(data), "--split", "val", "--no-meteor",
                     "--cache", str(tmp_path / "cache"), "--no-progress", "--out", str(tmp_path / "r.json"))
    assert result.returncode == 0, result.stderr
    assert "CIDEr-D" in result.stdout and "Traceback" not in result.stderr
    assert f"1 images could not be read and are not scored: {val[0]}" in result.stderr
    import json

    assert json.loads((tmp_path / "r.json").read_text())["images"] == len(val) - 1


def test_set_values_take_their_field_types(tmp_path):
    from captioner.config import load_config

    cfg = load_config("synth_soft", ["train.lr=5e-4", "train.max_epochs=3", "model.glove=null", "train.devices=2"])
    assert cfg.train.lr == 5e-4 and isinstance(cfg.train.lr, float) and cfg.train.devices == 2
    result = run_cli("train", "--config", "synth_soft", "--set", "train.max_epochs=2.5", "--data", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip().endswith("train.max_epochs must be int, not 2.5")


def test_decoding_settings_for_one_run(model_file, tmp_path, capsys):
    image = tmp_path / "photo.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(image)
    main(["caption", "--model", str(model_file), "--max-len", "12", str(image)])
    plain = capsys.readouterr().out.split()
    main(["caption", "--model", str(model_file), "--max-len", "12", "--set", "decode.block_ngram=2", str(image)])
    blocked = capsys.readouterr().out.split()
    bigrams = list(zip(blocked, blocked[1:], strict=False))
    assert len(bigrams) == len(set(bigrams)) and blocked != plain  # the untrained model repeats itself
    with pytest.raises(SystemExit):
        main(["caption", "--model", str(model_file), "--set", "train.lr=1", str(image)])
    assert "only decode.KEY=VALUE settings" in capsys.readouterr().err


def test_hard_attention_context_can_be_chosen_per_run(model_file, tmp_path, capsys):
    """--set model.hard_inference reaches every hard-attention decoder of an ensemble (decoder and config, so an
    export keeps it); a model with no hard decoder, or an unknown mode, is a one-line error."""
    from captioner.checkpoint import load_model, load_models
    from captioner.model import with_settings

    hard_file = untrained_model_file(tmp_path / "hard.pt", "hard")
    assert load_model(hard_file).decoder.hard_inference == "expected"  # the default
    model = with_settings(load_models([model_file, hard_file]), ["model.hard_inference=argmax",
                                                                 "decode.block_ngram=3"])
    soft, hard = model.decoder.members
    assert hard.hard_inference == "argmax" and not hasattr(soft, "hard_inference")
    assert [c.model.hard_inference for c in model.member_configs] == ["expected", "argmax"]
    assert model.config.decode.block_ngram == 3
    out = tmp_path / "argmax.pt"
    main(["export", str(model_file), str(hard_file), str(out), "--set", "model.hard_inference=argmax"])
    assert load_model(out).decoder.members[1].hard_inference == "argmax"
    image = tmp_path / "photo.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(image)
    for bad, message in (("argmax", "has no hard-attention decoder"),
                         ("nearest", "model.hard_inference must be argmax, expected or sample")):
        with pytest.raises(SystemExit):
            main(["caption", "--model", str(model_file), "--set", f"model.hard_inference={bad}", str(image)])
        assert message in capsys.readouterr().err


def test_models_saved_before_the_expected_context_default_keep_argmax():
    from captioner.config import Config

    old = Config().to_dict()
    old["model"].pop("hard_inference")  # a config written before the setting existed
    assert Config.from_saved(old).model.hard_inference == "argmax"
    assert Config().model.hard_inference == "expected"


def test_export_embeds_a_local_weights_encoder_and_stores_it_in_int8(model_file, tmp_path, capsys):
    """`export --embed-encoder --int8-encoder`: a model trained on a local weights file's features runs without
    that file, its encoder weights in int8 (one scale per output channel) giving the same features closely."""
    from captioner.checkpoint import load_model, save_model
    from captioner.encoders import create_encoder
    from captioner.model import model_encoder

    weights = tmp_path / "tuned.pth"
    tuned = create_encoder("tiny", weights="none")
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(0.05 * torch.randn_like(p))  # weights unlike the built-in ones
    torch.save(tuned.state_dict(), weights)
    model = load_model(model_file)
    model.config.encoder.weights = str(weights)
    on_file = save_model(tmp_path / "on_file.pt", model)

    with pytest.raises(SystemExit) as exit_info:  # nothing to store in int8 without the encoder's weights
        main(["export", str(on_file), str(tmp_path / "x.pt"), "--int8-encoder"])
    assert exit_info.value.code == 2 and "--embed-encoder" in capsys.readouterr().err

    main(["export", str(on_file), str(tmp_path / "f32.pt"), "--embed-encoder"])
    main(["export", str(on_file), str(tmp_path / "int8.pt"), "--embed-encoder", "--int8-encoder", "--half"])
    assert "int8 encoder" in capsys.readouterr().out
    expected = create_encoder("tiny", weights=weights).eval()
    weights.unlink()  # the exported models no longer need the file
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        want = expected(images)[1]  # [B, L, C]
        exact = model_encoder(load_model(tmp_path / "f32.pt")).eval()(images)[1]
        int8 = model_encoder(load_model(tmp_path / "int8.pt")).eval()(images)[1]
    torch.testing.assert_close(exact, want)
    torch.testing.assert_close(int8, want, atol=0.05 * float(want.abs().max()), rtol=0.05)
    assert (tmp_path / "int8.pt").stat().st_size < (tmp_path / "f32.pt").stat().st_size


def test_export_writes_an_ensemble_as_one_file_that_captions_like_the_two(model_file, tmp_path, capsys):
    """`export A B OUT`: one file with both decoders (here int8), captioning as `--model A --model B` does."""
    image = tmp_path / "photo.png"
    Image.new("RGB", (80, 50), (200, 30, 20)).save(image)
    ens = tmp_path / "ens.pt"
    main(["export", str(model_file), str(model_file), str(ens), "--int8-decoder"])
    assert "2 decoders" in capsys.readouterr().out
    main(["caption", "--model", str(model_file), "--model", str(model_file), str(image)])
    from_two = capsys.readouterr().out
    main(["caption", "--model", str(ens), str(image)])
    assert capsys.readouterr().out == from_two and from_two.strip()
    from captioner.captioning import Captioner
    from captioner.checkpoint import load_model

    result = Captioner(load_model(ens))(image, beam_size=2)
    assert result.attention_of == "the mean map of 2 decoders"  # the attention figure's title says so
    with pytest.raises(SystemExit) as exit_info:  # nothing to read
        main(["export", str(ens)])
    assert exit_info.value.code == 2 and "needs a model file" in capsys.readouterr().err
