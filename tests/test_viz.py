"""Drawing: caption wrapping, captioned images of any size and mode, attention figures, `caption --out`."""

import json

import numpy as np
import pytest
from PIL import Image

from captioner.cli import main
from captioner.viz import draw
from captioner.viz.attention import attention_figure, grid_side, save_attention_figure, smooth_map
from captioner.viz.draw import BAND, captioned_image, load_font, wrap_text
from conftest import untrained_model_file

LONG = "a man in a bright red jacket is climbing up the side of a very steep rock face above a lake"


@pytest.mark.parametrize("width", [40, 150, 400])
def test_wrapped_lines_fit_and_keep_every_word_in_order(width):
    font = load_font(16)
    lines = wrap_text(LONG, font, width)
    assert all(font.getlength(line) <= width for line in lines)
    assert "".join(lines).replace(" ", "") == LONG.replace(" ", "")
    if all(font.getlength(w) <= width for w in LONG.split()):  # no word needed splitting
        assert " ".join(lines).split() == LONG.split()
    assert len(lines) > 1


def test_a_word_longer_than_a_line_is_split_not_overflowing():
    font = load_font(16)
    word = "pneumonoultramicroscopicsilicovolcanoconiosis"
    lines = wrap_text(f"a {word} b", font, 80)
    assert all(font.getlength(line) <= 80 for line in lines)
    assert "".join(lines).replace(" ", "") == f"a{word}b"
    assert wrap_text("", font, 80) == [""]


def test_font_is_scalable_and_falls_back_when_no_font_file_exists(monkeypatch):
    assert load_font(20).size == 20  # DejaVu Sans from matplotlib: present on any fresh install
    load_font.cache_clear()
    monkeypatch.setattr(draw, "font_path", lambda: None)
    try:
        fallback = load_font(22)
        assert fallback.getlength("wide words") > fallback.getlength("w")  # Pillow's built-in font draws
        img = captioned_image(Image.new("RGB", (300, 200), "white"), LONG)
        assert img.height > 200
    finally:
        load_font.cache_clear()


def _image(mode: str, size: tuple[int, int]) -> Image.Image:
    if mode == "I;16":
        return Image.fromarray((np.arange(size[0] * size[1]).reshape(size[1], size[0]) % 65536).astype(np.uint16))
    if mode == "P":
        return Image.new("RGB", size, (10, 200, 30)).convert("P")
    return Image.new(mode, size)


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "LA", "P", "CMYK", "I;16", "1"])
@pytest.mark.parametrize("size", [(1, 1), (2000, 40), (40, 900), (333, 222)])
def test_captioned_image_any_mode_and_shape(mode, size):
    img = captioned_image(_image(mode, size), LONG)
    assert img.mode == "RGB"
    assert img.width >= max(size[0], 240)  # tiny images are scaled up so the caption has room
    scale = img.width / size[0]
    assert img.height > round(size[1] * scale)  # a caption band below the photo


@pytest.mark.parametrize("colour", [(255, 255, 255), (0, 0, 0), (128, 128, 128)])
def test_caption_band_has_the_same_contrast_on_light_and_dark_photos(colour):
    img = np.asarray(captioned_image(Image.new("RGB", (400, 300), colour), "a dog runs on the grass"))
    band = img[300:]
    assert np.abs(band[0].astype(int) - BAND).max() <= 2  # the band's own colour, not the photo's
    assert band.max() > 200 and band.mean() < 80  # light text on a dark band


def test_smoothed_map_peaks_in_the_attended_cell():
    alpha = np.full(16, 0.01)
    alpha[2 * 4 + 3] = 1.0  # row 2, column 3 of a 4x4 grid
    up = smooth_map(alpha, width=200, height=100)
    assert up.shape == (100, 200) and up.max() == pytest.approx(1.0) and up.min() >= 0
    y, x = np.unravel_index(up.argmax(), up.shape)
    assert 150 <= x < 200 and 50 <= y < 75
    with pytest.raises(ValueError):
        grid_side(10)


def test_attention_figures_soft_hard_and_odd_inputs(tmp_path):
    import matplotlib.pyplot as plt

    words = ["a", "dog", "runs", "on", "the", "grass", "today"]
    alphas = np.random.default_rng(0).dirichlet(np.ones(49), size=len(words))
    photo = Image.new("RGB", (1200, 300), (90, 140, 60))
    soft = attention_figure(photo, words, alphas, caption=" ".join(words))
    assert sum(ax.get_title() in words for ax in soft.axes) == len(words)  # one panel per word
    hard = attention_figure(photo, words, alphas, locs=[3, 10, 48, 0, 7, 21, 30])
    assert sum(ax.get_title() in words for ax in hard.axes) == len(words)
    assert sum(ax.get_title() == "α" for ax in hard.axes) == len(words)  # the α map beside each location
    empty = attention_figure(Image.new("L", (5, 700)), [], [])
    assert any(ax.get_title() == "(empty caption)" for ax in empty.axes)
    for fig in (soft, hard, empty):
        plt.close(fig)
    with pytest.raises(ValueError, match="one attention map per word"):
        attention_figure(photo, words, alphas[:3])
    path = save_attention_figure(tmp_path / "f.png", Image.new("RGBA", (64, 64)),
                                 {"tokens": words, "attention": alphas.tolist(), "caption": "x"})
    assert Image.open(path).size[0] > 400


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    models = {kind: untrained_model_file(root / f"{kind}.pt", kind) for kind in ("nic", "soft", "hard", "adaptive")}
    models["hard_argmax"] = untrained_model_file(root / "hard_argmax.pt", "hard", hard_inference="argmax")
    return models


@pytest.mark.parametrize("kind", ["nic", "soft", "hard", "hard_argmax", "adaptive"])
def test_caption_out_writes_figures_for_a_batch(models, kind, tmp_path, capsys):
    photos = tmp_path / "photos"
    (photos / "more").mkdir(parents=True)
    Image.new("RGB", (300, 120), (200, 30, 30)).save(photos / "wide.png")
    Image.new("LA", (40, 200), (90, 255)).save(photos / "more" / "wide.png")  # same stem, other folder
    Image.new("L", (1, 1), 128).save(photos / "dot.gif")
    (photos / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stopped:  # exit code 3: some images could not be captioned
        main(["caption", "--model", str(models[kind]), "--beam-size", "2", "--out", str(out),
              str(photos / "wide.png"), str(photos / "more" / "wide.png"), str(photos / "dot.gif"),
              str(photos / "broken.jpg")])
    assert stopped.value.code == 3
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "1 of 4 images skipped" in err
    report = json.loads((out / "captions.json").read_text())
    assert [c["image"].rsplit("/", 1)[-1] for c in report["captions"]] == ["wide.png", "wide.png", "dot.gif"]
    for stem in ("wide", "wide-2", "dot"):
        assert Image.open(out / f"{stem}.jpg").mode == "RGB"
        assert (out / f"{stem}.attention.png").exists() == (kind != "nic")
    if kind == "nic":
        assert "no attention map" in err
    if kind == "hard_argmax":  # the cell used for each word; with the expected context (default) none
        assert all(len(c["locations"]) == len(c["tokens"]) for c in report["captions"])
    else:
        assert all("locations" not in c for c in report["captions"])
    # adaptive attention: how much each word looked at the image (1 - beta_t), the sum of the word's map
    assert all(("looked" in c) == (kind == "adaptive") for c in report["captions"])
    for c in report["captions"] if kind == "adaptive" else []:
        assert all(abs(sum(m) - v) < 1e-3 for m, v in zip(c["attention"], c["looked"], strict=True))
