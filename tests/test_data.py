"""Data layer: tokeniser parity with COCO's PTBTokenizer, vocabulary, image loading, dataset readers."""

import json
import logging
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from captioner.data.images import image_to_tensor, load_image
from captioner.data.readers import dataset_fingerprint, hash_split, load_dataset
from captioner.data.tokenize import tokenize
from captioner.data.vocab import Vocab
from captioner.errors import CaptionerError

# -- tokenizer --------------------------------------------------------------------------------------

PARITY_SENTENCES = [
    "A dog's ball is red.",
    "Two dogs' toys are on the floor .",
    "The man doesn't want to go .",
    "A child can't reach the shelf, so he climbs.",
    "The cat won't come down from the tree!",
    "They're playing in the park; it's sunny.",
    "I'm sure she'll catch the frisbee.",
    "We've seen the girl who'd won the race.",
    'A woman says "hello" to a friend.',
    "The sign reads 'STOP' in red letters.",
    "A man (wearing a hat) walks by.",
    "A boy [in blue] and a girl {in red}.",
    "A girl in a t-shirt rides a skate-board.",
    "A black-and-white dog jumps over a 3-foot fence.",
    "A five-year-old boy holds 2 balloons.",
    "The pizza is 3.5 inches thick and costs $12.99 .",
    "About 1,000 people watch the game at 10:30 .",
    "Tom & Jerry, AT&T and A&W signs.",
    "A dog runs...   fast.",
    "Is that a dog? Yes!",
    "A man -- tired -- sits on a bench - alone.",
    "A woman in a pink dress , holding a bag .",
    "  Leading and trailing spaces   ",
    "Multiple    spaces   between    words.",
    "He cannot swim, he's gonna sink.",
    "The U.S. flag flies over St. Louis.",
    "Mr. Smith and Dr. Jones meet at 5 p.m.",
    "A man's hands are covered in paint.",
    "\u201cCurly quotes\u201d and \u2018single ones\u2019 appear here.",
    "It\u2019s a dog\u2019s life.",
    "A sign says 50% off and/or buy 1/2 price.",
    "A dog, a cat, and a bird.",
    "The kids' shoes are muddy.",
    "A 10-year-old girl's birthday cake.",
    "An e-mail on a laptop screen.",
    "There are 2 dogs: one brown, one white.",
    "A surfer rides a wave ; the sky is blue .",
    "A ROCK'N'ROLL BAND PLAYS ON STAGE.",
    "The dog's owner isn't happy.",
    "A group of people standing next to each other",
]


@pytest.mark.parametrize("text, expected", [
    ("A dog's ball, isn't it?", "a dog 's ball is n't it"),
    ("I can't; they won't.", "i ca n't they wo n't"),
    ("A man in a t-shirt holds 3.5 kg (approx).", "a man in a t-shirt holds 3.5 kg -lrb- approx -rrb-"),
    ("  Two   DOGS  run . ", "two dogs run"),
    ("He cannot -- he's gonna fall!", "he can not he 's gon na fall"),
    ("", ""),
    (" . , ! ", ""),
])
def test_tokenize_examples(text, expected):
    assert " ".join(tokenize(text)) == expected


def test_tokenize_matches_coco_ptbtokenizer():
    """Exact agreement with pycocoevalcap's (Java) PTBTokenizer on contractions, quotes, hyphens, numbers..."""
    if shutil.which("java") is None:
        pytest.skip("java is not installed (needed by pycocoevalcap's PTBTokenizer)")
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    reference = PTBTokenizer().tokenize({i: [{"caption": s}] for i, s in enumerate(PARITY_SENTENCES)})
    for i, sentence in enumerate(PARITY_SENTENCES):
        assert " ".join(tokenize(sentence)) == reference[i][0], sentence


# -- vocabulary -------------------------------------------------------------------------------------


def test_vocab_build_orders_by_frequency_then_alphabet_and_applies_min_freq():
    captions = [["a", "dog", "runs"], ["a", "cat", "runs"], ["a", "bird"], ["zebra"]]
    vocab = Vocab.build(captions)
    assert vocab.itos == ["<pad>", "<start>", "<end>", "<unk>", "a", "runs", "bird", "cat", "dog", "zebra"]
    assert (vocab.pad_id, vocab.start_id, vocab.end_id, vocab.unk_id) == (0, 1, 2, 3)
    assert Vocab.build(captions, min_freq=2).itos[4:] == ["a", "runs"]
    assert len(Vocab.build(captions, max_size=6)) == 6
    assert Vocab.build(reversed(captions)).itos == vocab.itos  # deterministic


def test_vocab_encode_decode():
    vocab = Vocab.build([["a", "dog"], ["a", "cat"]])
    ids = vocab.encode(["a", "dog", "zebra"])
    assert ids == [vocab.start_id, vocab.stoi["a"], vocab.stoi["dog"], vocab.unk_id, vocab.end_id]
    assert vocab.encode(["a"], add_special=False) == [vocab.stoi["a"]]
    assert vocab.decode(ids + [vocab.stoi["cat"]]) == ["a", "dog", "<unk>"]  # stops at <end>
    assert vocab.decode([vocab.pad_id, vocab.stoi["cat"], vocab.pad_id]) == ["cat"]
    assert vocab.decode(torch.tensor(ids)) == ["a", "dog", "<unk>"]


def test_vocab_round_trip(tmp_path):
    vocab = Vocab.build([["a", "dog"], ["a", "cat"]], min_freq=1)
    data = json.loads(json.dumps(vocab.to_dict()))
    assert data["format"] == "captioner-vocab/1" and Vocab.from_dict(data).itos == vocab.itos
    loaded = Vocab.load(vocab.save(tmp_path / "vocab.json"))
    assert loaded.itos == vocab.itos and loaded.stoi == vocab.stoi and loaded.min_freq == 1


@pytest.mark.parametrize("content, message", [
    ("{not json", "malformed JSON"),
    ('{"format": "something-else", "itos": []}', "not a vocabulary"),
    (b"\xff\xfe", "not UTF-8"),
])
def test_vocab_load_errors_name_the_file(tmp_path, content, message):
    path = tmp_path / "vocab.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(CaptionerError, match=message) as err:
        Vocab.load(path)
    assert "vocab.json" in str(err.value)


# -- images: odd but valid --------------------------------------------------------------------------


def _save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


def test_load_image_rgba_and_la_are_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    img = load_image(_save(rgba, tmp_path / "rgba.png"))
    assert img.mode == "RGB" and img.getpixel((0, 0)) == (255, 0, 0) and img.getpixel((3, 3)) == (255, 255, 255)
    la = load_image(_save(Image.new("LA", (3, 3), (0, 0)), tmp_path / "la.png"))
    assert la.getpixel((1, 1)) == (255, 255, 255)


def test_load_image_palette_with_transparency(tmp_path):
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    pal.putpixel((1, 1), 1)
    img = load_image(_save(pal, tmp_path / "pal.png", transparency=0))
    assert img.getpixel((0, 0)) == (255, 255, 255) and img.getpixel((1, 1)) == (0, 255, 0)


def test_load_image_grey_cmyk_and_16_bit(tmp_path):
    assert load_image(_save(Image.new("L", (5, 5), 77), tmp_path / "grey.png")).getpixel((2, 2)) == (77, 77, 77)
    cmyk = load_image(_save(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), tmp_path / "cmyk.jpg", quality=95))
    r, g, b = cmyk.getpixel((4, 4))
    assert cmyk.mode == "RGB" and r > 200 and g < 60 and b < 60
    deep = np.array([[0, 32896, 65535]], dtype=np.uint16)
    img = load_image(_save(Image.fromarray(deep), tmp_path / "deep.png"))
    assert [img.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_load_image_applies_exif_rotation(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img = load_image(_save(Image.new("RGB", (40, 20), (0, 0, 255)), tmp_path / "rotated.jpg", exif=exif.tobytes()))
    assert img.size == (20, 40)


def test_load_image_tiny_wide_animated_and_webp(tmp_path):
    assert load_image(_save(Image.new("RGB", (1, 1), (1, 2, 3)), tmp_path / "one.png")).size == (1, 1)
    assert load_image(_save(Image.new("RGB", (3000, 2), (9, 9, 9)), tmp_path / "wide.png")).size == (3000, 2)
    frames = [Image.new("RGB", (6, 6), c) for c in ((255, 0, 0), (0, 0, 255))]
    gif = _save(frames[0], tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    first = load_image(gif).getpixel((3, 3))
    assert first[0] > 200 and first[2] < 50
    webp = load_image(_save(Image.new("RGB", (7, 5), (0, 200, 0)), tmp_path / "x.webp", lossless=True))
    assert webp.size == (7, 5) and webp.getpixel((3, 2)) == (0, 200, 0)


# -- images: bad files ------------------------------------------------------------------------------


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares ``width x height`` (no pixel data at all)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def _truncated_jpeg(path: Path) -> Path:
    noise = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, quality=90)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _bad_file(path: Path, kind: str) -> Path:
    """Write one kind of broken image file at ``path``."""
    if kind == "directory":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not a picture")
    elif kind == "random":
        path.write_bytes(np.random.default_rng(1).bytes(300))
    elif kind == "truncated":
        _truncated_jpeg(path)
    elif kind == "bomb":
        path.write_bytes(_png_header_only(100_000, 100_000))
    return path


@pytest.mark.parametrize("name, kind, message", [
    ("missing.jpg", "missing", "no such file"),
    ("folder.jpg", "directory", "directory"),
    ("empty.jpg", "empty", "empty file"),
    ("text.jpg", "text", "not an image"),
    ("random.png", "random", "not an image"),
    ("truncated.jpg", "truncated", "truncated"),
    ("bomb.png", "bomb", "too large"),
])
def test_load_image_bad_files_raise_one_clear_error(tmp_path, name, kind, message):
    path = _bad_file(tmp_path / name, kind)
    with pytest.raises(CaptionerError, match=message) as err:
        load_image(path)
    assert name in str(err.value)


def test_load_image_respects_a_lowered_pixel_limit(tmp_path, monkeypatch):
    path = _save(Image.new("RGB", (30, 30)), tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    with pytest.raises(CaptionerError, match="too large") as err:
        load_image(path)
    assert "big.png" in str(err.value)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can read any file")
def test_load_image_unreadable_file(tmp_path):
    path = _save(Image.new("RGB", (2, 2)), tmp_path / "secret.png")
    path.chmod(0)
    with pytest.raises(CaptionerError, match="secret.png: permission denied"):
        load_image(path)


def test_load_image_permission_error_is_reported(tmp_path, monkeypatch):
    """The same check where the test runs as root (who can read anything): Pillow's open is refused."""
    path = _save(Image.new("RGB", (2, 2)), tmp_path / "secret.png")

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Image, "open", refuse)
    with pytest.raises(CaptionerError, match="secret.png: permission denied"):
        load_image(path)


def test_image_to_tensor_resizes_to_a_square_and_normalises():
    x = image_to_tensor(Image.new("RGB", (50, 20), (255, 0, 128)), 16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    assert torch.allclose(x[:, 8, 8], torch.tensor([1.0, -1.0, 128 / 255 * 2 - 1]), atol=1e-4)
    grey = image_to_tensor(Image.new("L", (8, 8), 255), 8, mean=(0, 0, 0), std=(1, 1, 1))
    assert torch.allclose(grey, torch.ones(3, 8, 8))


# -- dataset readers --------------------------------------------------------------------------------


def _touch_images(folder: Path, names) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")  # readers only check that image files exist


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _reference_layout(root: Path) -> Path:
    _touch_images(root / "images", ["a.jpg", "b.jpg", "c.jpg"])
    _write(root / "captions.txt", "a.jpg\tA dog runs.\na.jpg\tA brown dog's running!\n"
                                  "b.jpg\tTwo cats .\nc.jpg\tA bird\n")
    _write(root / "splits" / "train.txt", "a.jpg\nb.jpg\n")
    _write(root / "splits" / "dev.txt", "c.jpg\n")
    return root


def test_reference_layout(tmp_path):
    ds = load_dataset(_reference_layout(tmp_path / "ref"))
    assert [(r.name, r.split) for r in ds.records] == [("a.jpg", "train"), ("b.jpg", "train"), ("c.jpg", "val")]
    a = ds.records[0]
    assert a.image.is_absolute() and a.image == (tmp_path / "ref" / "images" / "a.jpg").absolute()
    assert a.captions_raw == ["A dog runs.", "A brown dog's running!"]
    assert a.captions == [["a", "dog", "runs"], ["a", "brown", "dog", "'s", "running"]]
    assert load_dataset(tmp_path / "ref" / "captions.txt").records == ds.records  # the file itself works too


def test_flickr8k_original_layout(tmp_path, caplog):
    text = tmp_path / "Flickr8k_text"
    lines = [f"{img}#{i}\t{img[0].upper()} caption {i} ." for img in ("1.jpg", "2.jpg", "3.jpg") for i in range(5)]
    lines.insert(3, "1.jpg#0\tA duplicate of caption zero .")
    _write(text / "Flickr8k.token.txt", "\n".join(lines) + "\n")
    _write(text / "Flickr_8k.trainImages.txt", "1.jpg\nnot_captioned.jpg\n")
    _write(text / "Flickr_8k.devImages.txt", "2.jpg\n")
    _write(text / "Flickr_8k.testImages.txt", "3.jpg\n")
    _touch_images(tmp_path / "Flicker8k_Dataset", ["1.jpg", "2.jpg", "3.jpg"])
    with caplog.at_level(logging.WARNING, logger="captioner"):
        ds = load_dataset(tmp_path)
    assert [(r.name, r.split, len(r.captions)) for r in ds.records] == [
        ("1.jpg", "train", 5), ("2.jpg", "val", 5), ("3.jpg", "test", 5)]
    assert ds.records[0].captions_raw[0] == "1 caption 0 ."
    assert "duplicate caption id" in caplog.text and "1.jpg#0" in caplog.text
    assert "no captions" in caplog.text and "not_captioned.jpg" in caplog.text


def test_flickr8k_token_file_with_images_argument(tmp_path):
    token = _write(tmp_path / "ann" / "Flickr8k.token.txt", "x.jpg#0\tA cat .\nx.jpg#1\tA kitten .\n")
    _touch_images(tmp_path / "pics", ["x.jpg"])
    ds = load_dataset(token, images=tmp_path / "pics")
    assert [r.split for r in ds.records] == [""] and ds.records[0].captions == [["a", "cat"], ["a", "kitten"]]


def test_kaggle_csv_with_commas_and_hash_splits(tmp_path, caplog):
    rows = ["image,caption", 'a.jpg,"A dog, a cat, and a bird ."', "a.jpg,A dog , unquoted , commas .",
            'b.jpg,"He said ""hi"" ."']
    _write(tmp_path / "kaggle" / "captions.txt", "\n".join(rows) + "\n")
    _touch_images(tmp_path / "kaggle" / "Images", ["a.jpg", "b.jpg"])
    with caplog.at_level(logging.WARNING, logger="captioner"):
        ds = load_dataset(tmp_path / "kaggle")
    assert ds.records[0].captions_raw == ["A dog, a cat, and a bird .", "A dog , unquoted , commas ."]
    assert ds.records[0].captions[0] == ["a", "dog", "a", "cat", "and", "a", "bird"]
    assert ds.records[1].captions == [["he", "said", "hi"]]
    assert [r.split for r in ds.records] == [hash_split("a.jpg"), hash_split("b.jpg")]
    assert "no split lists" in caplog.text


def test_hash_split_is_about_80_10_10():
    splits = [hash_split(f"{i}.jpg") for i in range(2000)]
    assert 0.75 < splits.count("train") / 2000 < 0.85 and 0.07 < splits.count("test") / 2000 < 0.13


def test_kaggle_uses_a_splits_folder_when_present(tmp_path):
    _write(tmp_path / "captions.txt", "image,caption\na.jpg,A dog .\nb.jpg,A cat .\n")
    _write(tmp_path / "splits" / "test.txt", "b.jpg\n")
    _touch_images(tmp_path / "images", ["a.jpg", "b.jpg"])
    assert [r.split for r in load_dataset(tmp_path).records] == ["", "test"]


def test_karpathy_json(tmp_path):
    data = {"dataset": "coco", "images": [
        {"filepath": "val2014", "filename": "v1.jpg", "split": "restval",
         "sentences": [{"raw": "A man's hat.", "tokens": ["a", "mans", "hat"]}, {"raw": "  "}]},
        {"filepath": "train2014", "filename": "t1.jpg", "split": "train", "sentences": [{"tokens": ["two", "dogs"]}]},
        {"filepath": "val2014", "filename": "v2.jpg", "split": "test", "sentences": [{"raw": "A cat (sleeping)."}]},
    ]}
    _write(tmp_path / "dataset_coco.json", json.dumps(data))
    _touch_images(tmp_path / "images" / "val2014", ["v1.jpg", "v2.jpg"])
    _touch_images(tmp_path / "images" / "train2014", ["t1.jpg"])
    ds = load_dataset(tmp_path)
    assert [(r.name, r.split) for r in ds.records] == [("v1.jpg", "restval"), ("t1.jpg", "train"), ("v2.jpg", "test")]
    assert ds.records[0].image == (tmp_path / "images" / "val2014" / "v1.jpg").absolute()
    assert ds.records[0].captions == [["a", "man", "'s", "hat"]]  # our tokenizer on "raw", empty one skipped
    assert ds.records[1].captions == [["two", "dogs"]]
    assert ds.records[2].captions == [["a", "cat", "-lrb-", "sleeping", "-rrb-"]]
    moved = shutil.move(tmp_path / "images", tmp_path / "elsewhere")
    assert load_dataset(tmp_path / "dataset_coco.json", images=moved).records[0].image.parent.name == "val2014"


def test_missing_images_are_skipped_with_one_summary_warning(tmp_path, caplog):
    _write(tmp_path / "captions.txt", "".join(f"{i}.jpg\tA dog number {i} .\n" for i in range(6)))
    _write(tmp_path / "splits" / "train.txt", "0.jpg\n")
    _touch_images(tmp_path / "images", ["0.jpg", "5.jpg"])
    with caplog.at_level(logging.WARNING, logger="captioner"):
        ds = load_dataset(tmp_path)
    assert [r.name for r in ds.records] == ["0.jpg", "5.jpg"]
    missing = [r for r in caplog.records if "missing" in r.getMessage()]
    assert len(missing) == 1 and "4 of 6" in missing[0].getMessage() and "1.jpg, 2.jpg, 3.jpg" in missing[0].getMessage()
    for i in (0, 5):
        (tmp_path / "images" / f"{i}.jpg").unlink()
    with pytest.raises(CaptionerError, match="none of the 6 images"):
        load_dataset(tmp_path)


def test_empty_captions_are_skipped_with_a_warning(tmp_path, caplog):
    _write(tmp_path / "captions.txt", "a.jpg\tA dog .\na.jpg\t   \na.jpg\t.\n")
    _write(tmp_path / "splits" / "train.txt", "a.jpg\n")
    _touch_images(tmp_path / "images", ["a.jpg"])
    with caplog.at_level(logging.WARNING, logger="captioner"):
        ds = load_dataset(tmp_path)
    assert ds.records[0].captions == [["a", "dog"]]
    assert "skipped 2 empty caption(s) (first at line 2)" in caplog.text


@pytest.mark.parametrize("files, message", [
    ({"captions.txt": ""}, "captions.txt: empty annotation file"),
    ({"captions.txt": "a.jpg\tA dog .\nb.jpg A cat without a tab\n"}, "captions.txt: line 2: expected 'image<TAB>caption'"),
    ({"Flickr8k.token.txt": "a.jpg#0\tA dog .\na.jpg\tno number\n"}, "Flickr8k.token.txt: line 2: expected 'IMAGE#N<TAB>caption'"),
    ({"dataset_flickr8k.json": '{"images": [\n  {"filename": "a.jpg",}\n]}'}, "dataset_flickr8k.json: malformed JSON at line 2 column"),
    ({"dataset_flickr8k.json": '{"images": {}}'}, "expected a JSON object with an 'images' list"),
    ({"dataset_flickr8k.json": '{"images": [{"filename": "a.jpg"}]}'}, r"images\[0\]: expected"),
    ({"captions.txt": b"a.jpg\tA caf\xe9 .\n"}, r"captions.txt: not UTF-8 text \(byte 0xe9 at offset 11\)"),
    ({"notes.md": "hello"}, "unrecognised dataset layout: expected captions.txt"),
    ({"captions.txt": "just some words\n"}, "unrecognised annotation file"),
])
def test_bad_annotation_files(tmp_path, files, message):
    for name, content in files.items():
        (tmp_path / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    _touch_images(tmp_path / "images", ["a.jpg"])
    with pytest.raises(CaptionerError, match=message):
        load_dataset(tmp_path)


def test_missing_path_and_image_folder(tmp_path):
    with pytest.raises(CaptionerError, match="nope: no such file or folder"):
        load_dataset(tmp_path / "nope")
    _write(tmp_path / "captions.txt", "a.jpg\tA dog .\n")
    with pytest.raises(CaptionerError, match="no image folder found"):
        load_dataset(tmp_path)


def test_dataset_fingerprint(tmp_path):
    ds = load_dataset(_reference_layout(tmp_path / "ref"))
    fp = dataset_fingerprint(ds)
    assert len(fp) == 12 and int(fp, 16) >= 0
    assert dataset_fingerprint(load_dataset(tmp_path / "ref")) == fp
    ds.records[0].split = "test"
    assert dataset_fingerprint(ds) != fp
