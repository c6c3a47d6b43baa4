"""What ``captioner caption --out DIR`` writes for each image: the captioned image and its attention figure."""

import io
from pathlib import Path

from PIL import Image

from captioner.io import write_bytes_atomic
from captioner.viz.attention import save_attention_figure
from captioner.viz.draw import captioned_image


def unique_stem(path: str | Path, taken: set[str]) -> str:
    """The file's stem, made unique within one batch (photos/a.jpg and other/a.png -> a, a-2)."""
    stem = Path(path).stem or "image"
    name, n = stem, 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}"
    taken.add(name)
    return name


def save_jpeg_atomic(path: Path, image: Image.Image, quality: int = 90) -> Path:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return write_bytes_atomic(path, buf.getvalue())


def write_outputs(out_dir: str | Path, stem: str, image: Image.Image, result: dict,
                  attention: bool) -> list[Path]:
    """``DIR/STEM.jpg`` (image + caption) and, for attention models, ``DIR/STEM.attention.png``."""
    out_dir = Path(out_dir)
    written = [save_jpeg_atomic(out_dir / f"{stem}.jpg", captioned_image(image, result["caption"]))]
    if attention:
        written.append(save_attention_figure(out_dir / f"{stem}.attention.png", image, result))
    return written


class OutputFolder:
    """A folder of captioned images: :meth:`add` writes each image's files as it comes, :meth:`close` writes
    ``captions.json`` (every caption, the files written for it, and the images skipped)."""

    def __init__(self, out_dir: str | Path, model: str, attention: bool):
        self.dir, self.model, self.attention = Path(out_dir), model, attention
        self.entries: list[dict] = []
        self.skipped: list[str] = []
        self._stems: set[str] = set()

    def add(self, name: str | Path, image: Image.Image, result: dict) -> dict:
        """Write ``DIR/STEM.jpg`` (and the attention figure) for one caption result; returns its entry."""
        files = write_outputs(self.dir, unique_stem(name, self._stems), image, result, self.attention)
        self.entries.append(result | {"files": [p.name for p in files]})
        return self.entries[-1]

    def skip(self, error: str) -> None:
        self.skipped.append(error)

    def close(self) -> Path:
        from captioner.io import write_json_atomic

        return write_json_atomic(self.dir / "captions.json", {"model": self.model, "captions": self.entries,
                                                              "skipped": self.skipped})
