"""Read caption datasets in the common layouts into one :class:`CaptionDataset`.

Recognised (``load_dataset`` detects which from the path):

a. the reference layout: ``captions.txt`` (``image<TAB>caption``), ``images/``, ``splits/NAME.txt``;
b. original Flickr8k: ``Flickr8k.token.txt`` (``IMAGE#N<TAB>caption``), ``Flickr_8k.{train,dev,test}Images.txt``
   and the ``Flicker8k_Dataset/`` image folder;
c. Kaggle: ``captions.txt`` as CSV with an ``image,caption`` header and ``Images/`` (no split lists: a
   deterministic 80/10/10 split is derived from the image names unless ``splits/`` exists);
d. Karpathy's ``dataset_{flickr8k,flickr30k,coco}.json``.

Captions keep their raw text and are tokenised with :func:`captioner.data.tokenize.tokenize`.
Problems in the annotations are reported as one-line :class:`CaptionerError` s naming the file, or,
when they can be worked around (empty captions, duplicate ids, images missing on disk), as warnings
on the ``captioner`` logger.
"""

import csv
import hashlib
import io
import json
import logging
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from captioner.data.records import CaptionDataset, ImageRecord
from captioner.data.tokenize import tokenize
from captioner.errors import file_error

logger = logging.getLogger("captioner")

SPLITS = {"train": "train", "val": "val", "dev": "val", "test": "test", "restval": "restval"}
FLICKR8K_SPLIT_FILES = {"train": "Flickr_8k.trainImages.txt", "val": "Flickr_8k.devImages.txt",
                        "test": "Flickr_8k.testImages.txt"}
FLICKR8K_IMAGE_DIRS = ("Flicker8k_Dataset", "Flickr8k_Dataset", "images", "Images")
EXPECTED_LAYOUTS = ("captions.txt with images/ and splits/, Flickr8k.token.txt, a Kaggle captions.txt CSV "
                    "with Images/, or a Karpathy dataset_*.json")


def load_dataset(path: str | Path, images: str | Path | None = None) -> CaptionDataset:
    """Read the dataset at ``path`` (a folder or its annotation file); ``images`` overrides the image folder."""
    path = Path(path).expanduser()
    if not path.exists():
        raise file_error(path, "no such file or folder")
    images_dir = Path(images).expanduser() if images is not None else None
    if images_dir is not None and not images_dir.is_dir():
        raise file_error(images_dir, "no such image folder")
    fmt, annotations = detect_format(path)
    return _READERS[fmt](annotations, images_dir)


def dataset_fingerprint(ds: CaptionDataset) -> str:
    """12 hex digits identifying the images of ``ds``: names, splits and file sizes (for the feature cache)."""
    lines = sorted(f"{r.name}\t{r.split}\t{_file_size(r.image)}\n" for r in ds.records)
    return hashlib.sha1("".join(lines).encode("utf-8")).hexdigest()[:12]


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


# -- which layout -------------------------------------------------------------------------------------


def detect_format(path: Path) -> tuple[str, Path]:
    """``(format, annotation file)`` with format one of reference, flickr8k, kaggle, karpathy."""
    if path.is_file():
        return _sniff(path), path
    captions = path / "captions.txt"
    if captions.is_file():
        return _sniff(captions), captions
    for token in (path / "Flickr8k.token.txt", path / "Flickr8k_text" / "Flickr8k.token.txt"):
        if token.is_file():
            return "flickr8k", token
    for karpathy in [*sorted(path.glob("dataset_*.json")), path / "dataset.json"]:
        if karpathy.is_file():
            return "karpathy", karpathy
    raise file_error(path, f"unrecognised dataset layout: expected {EXPECTED_LAYOUTS}")


def _sniff(file: Path) -> str:
    """Guess an annotation file's format from its name and first non-blank line."""
    if file.suffix.lower() == ".json":
        return "karpathy"
    with file.open("rb") as f:
        head = f.read(65536).decode("utf-8-sig", errors="replace")
    first = next((line for line in head.splitlines() if line.strip()), "")
    if re.fullmatch(r"\s*image\s*,\s*caption\s*", first, re.IGNORECASE):
        return "kaggle"
    if "\t" in first:
        return "flickr8k" if re.search(r"#\d+\s*$", first.split("\t", 1)[0]) else "reference"
    if not first:  # empty: let the reader report it
        return "flickr8k" if file.name.endswith(".token.txt") else "reference"
    raise file_error(file, f"unrecognised annotation file: expected 'image<TAB>caption' lines, "
                           f"'IMAGE#N<TAB>caption' lines or a CSV header 'image,caption' (got {first[:60]!r})")


# -- reading text ---------------------------------------------------------------------------------------


def _decode(path: Path) -> str:
    """The whole file as UTF-8 text (BOM dropped); errors name the file."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise file_error(path, f"cannot read ({e.strerror or e})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise file_error(path, f"not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})") from None


def _read_text(path: Path) -> str:
    """An annotation file's text; an empty file is an error."""
    text = _decode(path)
    if not text.strip():
        raise file_error(path, "empty annotation file")
    return text


def _numbered_lines(text: str) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` for the non-blank lines."""
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield number, line


class _Captions:
    """Captions per image key, in order of first appearance, with their tokens (each caption is tokenised
    once, here).  Empty captions are counted, not kept."""

    def __init__(self, source: Path):
        self.source = source
        self.by_image: dict[str, list[str]] = {}
        self.tokens: dict[str, list[list[str]]] = {}  # by_image's captions tokenised
        self.empty: list[str] = []  # where each skipped caption was

    def add(self, image: str, caption: str, where: str) -> None:
        caption = caption.strip()
        tokens = tokenize(caption)
        if not tokens:
            self.empty.append(where)
            return
        self.by_image.setdefault(image, []).append(caption)
        self.tokens.setdefault(image, []).append(tokens)

    def warn_empty(self) -> None:
        if self.empty:
            logger.warning("%s: skipped %d empty caption(s) (first at %s)", self.source, len(self.empty),
                           self.empty[0])


# -- the four readers ---------------------------------------------------------------------------------


def read_reference(captions_file: Path, images_dir: Path | None = None) -> CaptionDataset:
    """Layout (a): ``captions.txt`` with ``image<TAB>caption`` lines, ``images/``, ``splits/*.txt``."""
    captions = _Captions(captions_file)
    for number, line in _numbered_lines(_read_text(captions_file)):
        image, sep, caption = line.partition("\t")
        if not sep or not image.strip():
            raise file_error(captions_file, f"line {number}: expected 'image<TAB>caption', got {line[:60]!r}")
        captions.add(image.strip(), caption, f"line {number}")
    folder = captions_file.parent
    if (folder / "splits").is_dir():
        splits = _read_split_folder(folder / "splits", captions.by_image)
    else:
        logger.warning("%s: no splits/ folder, so no image is in a split", folder)
        splits = {}
    images_dir = images_dir or _find_dir([folder], ("images", "Images"), captions_file)
    return _assemble(captions, splits, images_dir)


def read_flickr8k(token_file: Path, images_dir: Path | None = None) -> CaptionDataset:
    """Original Flickr8k: ``Flickr8k.token.txt`` with ``IMAGE#N<TAB>caption`` lines and the split lists."""
    captions = _Captions(token_file)
    seen: set[tuple[str, str]] = set()
    duplicates: list[str] = []
    for number, line in _numbered_lines(_read_text(token_file)):
        match = re.fullmatch(r"\s*(.+)#(\d+)\t(.*)", line)
        if match is None:
            raise file_error(token_file, f"line {number}: expected 'IMAGE#N<TAB>caption', got {line[:60]!r}")
        image, index, caption = match.groups()
        if (image, index) in seen:
            duplicates.append(f"{image}#{index} (line {number})")
            continue
        seen.add((image, index))
        captions.add(image, caption, f"line {number}")
    if duplicates:
        logger.warning("%s: %d duplicate caption id(s) ignored, kept the first: %s", token_file, len(duplicates),
                       ", ".join(duplicates[:3]))
    folder = token_file.parent
    splits: dict[str, str] = {}
    for split, name in FLICKR8K_SPLIT_FILES.items():
        if (folder / name).is_file():
            _read_split_list(folder / name, split, captions.by_image, splits)
    images_dir = images_dir or _find_dir([folder, folder.parent], FLICKR8K_IMAGE_DIRS, token_file)
    return _assemble(captions, splits, images_dir)


def read_kaggle(captions_file: Path, images_dir: Path | None = None) -> CaptionDataset:
    """Kaggle's Flickr8k/30k: ``captions.txt`` as CSV (``image,caption`` header) and ``Images/``."""
    captions = _Captions(captions_file)
    reader = csv.reader(io.StringIO(_read_text(captions_file), newline=""))
    for row in reader:
        if not any(field.strip() for field in row):
            continue
        if [f.strip().lower() for f in row] == ["image", "caption"]:
            continue  # the header
        if len(row) < 2 or not row[0].strip():
            raise file_error(captions_file, f"line {reader.line_num}: expected 'image,caption', got {row!r}")
        # unquoted commas inside a caption split it into more fields: join them back
        captions.add(row[0].strip(), ",".join(row[1:]), f"line {reader.line_num}")
    folder = captions_file.parent
    if (folder / "splits").is_dir():
        splits = _read_split_folder(folder / "splits", captions.by_image)
    else:
        logger.warning("%s: no split lists, so images were split about 80/10/10 into train/val/test "
                       "by a hash of their names", captions_file)
        splits = {name: hash_split(name) for name in captions.by_image}
    images_dir = images_dir or _find_dir([folder], ("Images", "images"), captions_file)
    return _assemble(captions, splits, images_dir)


def read_karpathy(json_file: Path, images_dir: Path | None = None) -> CaptionDataset:
    """Karpathy's ``dataset_*.json``: images (``filepath``/``filename``, ``split``, ``sentences``)."""
    entries = _karpathy_entries(json_file)
    captions = _Captions(json_file)
    splits: dict[str, str] = {}
    for i, entry in enumerate(entries):
        key = str(Path(str(entry.get("filepath") or "")) / str(entry["filename"]))
        splits[key] = SPLITS.get(str(entry.get("split", "")).lower(), str(entry.get("split", "")))
        for j, sentence in enumerate(entry["sentences"]):
            captions.add(key, _sentence_text(sentence), f"images[{i}].sentences[{j}]")
    candidates = [images_dir] if images_dir else [json_file.parent / "images", json_file.parent / "Images",
                                                  json_file.parent]
    return _assemble(captions, splits, _best_root(candidates, list(captions.by_image)[:50]))


def _karpathy_entries(json_file: Path) -> list[dict]:
    """The ``images`` list of a Karpathy JSON, checked enough to give clear errors."""
    try:  # each sentence becomes its text as it is parsed: COCO's 600k sentence objects are never all held
        data = json.loads(_read_text(json_file), object_hook=_slim_object)
    except json.JSONDecodeError as e:
        raise file_error(json_file, f"malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    entries = data.get("images") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise file_error(json_file, "expected a JSON object with an 'images' list (Karpathy format)")
    for i, entry in enumerate(entries):
        if not (isinstance(entry, dict) and entry.get("filename") and isinstance(entry.get("sentences"), list)):
            raise file_error(json_file, f"images[{i}]: expected an object with 'filename' and a 'sentences' list")
    return entries


def _slim_object(obj: dict):
    """A parsed JSON object as read_karpathy needs it: a sentence as its text, an image as its four keys."""
    if "sentences" in obj:
        return {key: obj[key] for key in ("filepath", "filename", "split", "sentences") if key in obj}
    if "images" not in obj and ("raw" in obj or "tokens" in obj):
        return _sentence_text(obj)
    return obj


def _sentence_text(sentence) -> str:
    """A Karpathy sentence's raw text (its tokens joined, if it has no ``raw``)."""
    if isinstance(sentence, str):
        return sentence
    if isinstance(sentence, dict):
        if isinstance(sentence.get("raw"), str):
            return sentence["raw"]
        if isinstance(sentence.get("tokens"), list):
            return " ".join(map(str, sentence["tokens"]))
    return ""


_READERS = {"reference": read_reference, "flickr8k": read_flickr8k, "kaggle": read_kaggle,
            "karpathy": read_karpathy}


# -- splits -------------------------------------------------------------------------------------------


def hash_split(name: str) -> str:
    """A fixed pseudo-random split for an image name: about 80% train, 10% val, 10% test."""
    bucket = int(hashlib.sha1(name.encode("utf-8")).hexdigest(), 16) % 10
    return "train" if bucket < 8 else "val" if bucket == 8 else "test"


def _read_split_folder(folder: Path, known: dict[str, list[str]]) -> dict[str, str]:
    """``splits/NAME.txt`` lists (``dev`` means val); other file names are ignored with a warning."""
    splits: dict[str, str] = {}
    for file in sorted(folder.glob("*.txt")):
        split = SPLITS.get(file.stem.lower())
        if split is None:
            logger.warning("%s: not a split name (%s), ignored", file, ", ".join(SPLITS))
            continue
        _read_split_list(file, split, known, splits)
    return splits


def _read_split_list(file: Path, split: str, known: Iterable[str], splits: dict[str, str]) -> None:
    """Add the images listed in ``file`` to ``splits``; names without captions are reported, not kept."""
    names = [line.strip() for _, line in _numbered_lines(_decode(file))]
    unknown = [n for n in names if n not in known]
    if unknown:
        logger.warning("%s: %d image(s) have no captions, ignored: %s", file, len(unknown), ", ".join(unknown[:3]))
    clashes = [n for n in names if n in known and splits.get(n, split) != split]
    if clashes:
        logger.warning("%s: %d image(s) already in another split, kept there: %s", file, len(clashes),
                       ", ".join(clashes[:3]))
    for name in names:
        if name in known:
            splits.setdefault(name, split)


# -- images on disk -----------------------------------------------------------------------------------


def _find_dir(parents: list[Path], names: Iterable[str], source: Path) -> Path:
    """The first ``parent/name`` folder that exists."""
    names = list(names)
    for parent in parents:
        for name in names:
            if (parent / name).is_dir():
                return parent / name
    raise file_error(source.parent, f"no image folder found (looked for {', '.join(names)}); "
                                    "pass the image folder explicitly")


def _best_root(candidates: list[Path], sample: list[str]) -> Path:
    """The candidate folder holding most of the sample images (the first one on a tie)."""
    existing = [c for c in candidates if c.is_dir()]
    if not existing:
        raise file_error(candidates[0], "no such image folder")
    return max(existing, key=lambda root: sum((root / key).is_file() for key in sample))


def _assemble(captions: _Captions, splits: dict[str, str], images_dir: Path) -> CaptionDataset:
    """Records for the images that exist; one warning summarises the missing ones."""
    captions.warn_empty()
    source = captions.source
    if not captions.by_image:
        raise file_error(source, "no captions found")
    records, missing = [], []
    for key, raw in captions.by_image.items():
        image = images_dir / key
        if not image.is_file():
            missing.append(key)
            continue
        records.append(ImageRecord(image=image.absolute(), split=splits.get(key, ""), captions_raw=raw,
                                   captions=captions.tokens[key]))
    if missing and not records:
        raise file_error(images_dir, f"none of the {len(missing)} images listed in {source.name} is here")
    if missing:
        logger.warning("%s: %d of %d images listed in %s are missing, skipped: %s", images_dir, len(missing),
                       len(captions.by_image), source.name, ", ".join(missing[:3]))
    return CaptionDataset(source=source, records=records)
