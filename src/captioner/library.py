"""Captioning a photo library: the images of files, folders and lists, captioned in batches, each caption
written to a JSONL or CSV file as soon as its batch is done, so that a run killed at any point loses nothing
and goes on where it stopped (``resume``).

    paths, folders, a list file --find_images--> image paths --Captioner, a batch at a time--> RecordFile

One record per image: ``{"path", "caption", "score", "model", "error"}`` (``error`` null when captioned;
``tokens`` and ``attention`` too when asked for).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from captioner.errors import CaptionerError, file_error
from captioner.io import file_sha256

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
CSV_FIELDS = ["path", "caption", "score", "model", "error"]


def find_images(paths: Iterable[str | Path], glob: str = "*", from_list: str | Path | None = None) -> Iterator[str]:
    """The image files to caption, in order: each path given, each folder's images (recursively, those whose
    names match ``glob`` and end in an image extension, sorted), then the lines of ``from_list``. A path that
    does not exist is passed on as it is, to be recorded with its error."""
    for path in paths:
        p = Path(path)
        if p.is_dir():
            yield from (str(f) for f in sorted(p.rglob(glob)) if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
        else:
            yield str(path)
    if from_list is not None:
        listing = Path(from_list)
        try:
            lines = listing.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise file_error(listing, f"cannot read the list of images ({e})") from None
        yield from (line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#"))


def model_digest(paths: Iterable[str | Path]) -> str:
    """12 hex digits of the model file(s)' SHA-256 (several files: joined with +): which model wrote a record."""
    return "+".join(file_sha256(path)[:12] for path in paths)


class RecordFile:
    """The output file, JSONL (``.jsonl``, ``.json``) or CSV (``.csv``), appended to one whole record at a
    time and synced to the disk after every batch. ``resume``: the images it already holds are skipped (a
    last line cut off by a kill is dropped first); without it, an existing file is an error."""

    def __init__(self, path: str | Path, resume: bool = False):
        self.path = Path(path)
        self.kind = "csv" if self.path.suffix.lower() == ".csv" else "jsonl"
        if self.path.is_dir():
            raise file_error(self.path, "is a folder; --output names the file to write (.jsonl or .csv)")
        self.done: set[str] = set()
        if self.path.exists() and self.path.stat().st_size > 0:
            if not resume:
                raise file_error(self.path, "exists; add --resume to go on with it, or choose another --output")
            self.done = self._read_done()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._file = open(self.path, "a", encoding="utf-8", newline="")
        if new and self.kind == "csv":
            self._write_line(_csv_line(CSV_FIELDS))

    def _read_done(self) -> set[str]:
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # a record cut off in mid-write: drop it, it is written again
            with open(self.path, "r+b") as f:
                f.truncate(end)
        text = data[:end].decode("utf-8", errors="replace")
        if self.kind == "csv":
            rows = list(csv.DictReader(io.StringIO(text)))
            if rows and "path" not in rows[0]:
                raise file_error(self.path, "is not a captions CSV (no 'path' column)")
            return {row["path"] for row in rows}
        done = set()
        for n, line in enumerate(text.splitlines(), start=1):
            try:
                done.add(json.loads(line)["path"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise file_error(self.path, f"line {n} is not a caption record; choose another --output") from None
        return done

    def write(self, record: dict) -> None:
        if self.kind == "csv":
            self._write_line(_csv_line([record.get(k) for k in CSV_FIELDS]))
        else:
            self._write_line(json.dumps(record, ensure_ascii=False) + "\n")
        self.done.add(record["path"])

    def _write_line(self, line: str) -> None:
        self._file.write(line)  # one call per record: a line is whole or, after a kill, cut off and dropped
        self._file.flush()

    def sync(self) -> None:
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self.sync()
        self._file.close()


def _csv_line(values: list) -> str:
    buf = io.StringIO()
    csv.writer(buf).writerow(["" if v is None else v for v in values])
    return buf.getvalue()


def caption_library(cap, paths: Iterable[str], out: RecordFile, model: str, *, batch_size: int = 16,
                    attention: bool = False, progress=None, **settings) -> tuple[int, int]:
    """Caption every image of ``paths`` not in ``out`` yet and write its record there as its batch finishes.
    ``progress``: called with each record. Returns (captioned, failed)."""
    todo = (p for p in paths if p not in out.done)
    captioned = failed = 0
    for i, (path, _image, result) in enumerate(cap.caption_iter(todo, batch_size=batch_size, **settings)):
        record = {"path": str(path), "caption": result.text if result.error is None else None,
                  "score": None if result.error is not None else round(result.score, 4), "model": model,
                  "error": result.error}
        if attention and result.error is None:
            record |= {"tokens": result.tokens, "attention": result.to_dict().get("attention")}
        out.write(record)
        captioned, failed = captioned + (result.error is None), failed + (result.error is not None)
        if (i + 1) % batch_size == 0:
            out.sync()
        if progress is not None:
            progress(record)
    return captioned, failed


def check_output_name(path: str | Path) -> None:
    if Path(path).suffix.lower() not in (".jsonl", ".json", ".csv"):
        raise CaptionerError(f"{path}: --output must end in .jsonl or .csv")
