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
