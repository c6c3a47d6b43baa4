"""A caption drawn under its image: a font that is always there, wrapped lines, a band that reads on any photo.

The caption goes on a dark band below the photo rather than over it, so it is legible whatever the photo's
colours. Fonts: DejaVu Sans from matplotlib's own files (installed with captioner), then the system's, then
Pillow's built-in scalable font.
"""

from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from captioner.data.images import to_rgb

BAND = (20, 20, 20)  # caption band colour
TEXT = (245, 245, 245)
SYSTEM_FONTS = ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "DejaVuSans.ttf", "Arial.ttf")


def font_path() -> str | None:
    """A TrueType file for DejaVu Sans: matplotlib ships one, so this is None only on a broken install."""
    try:
        import matplotlib

        bundled = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        if bundled.is_file():
            return str(bundled)
    except ImportError:
        pass
    for name in SYSTEM_FONTS:
        try:
            ImageFont.truetype(name, 12)
            return name
        except OSError:
            continue
    return None


@lru_cache(maxsize=32)
def load_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    path = font_path()
    return ImageFont.truetype(path, size) if path else ImageFont.load_default(size=size)


def text_width(font, text: str) -> float:
    return font.getlength(text)


def wrap_text(text: str, font, max_width: float) -> list[str]:
    """Greedy word wrap to ``max_width`` pixels; a word wider than a whole line is split across lines."""
    lines: list[str] = []
    line = ""
    for word in text.split():
        candidate = f"{line} {word}" if line else word
        if text_width(font, candidate) <= max_width:
            line = candidate
            continue
        if line:
            lines.append(line)
        while len(word) > 1 and text_width(font, word) > max_width:  # break an over-long word
            cut = 1
            while cut < len(word) and text_width(font, word[: cut + 1]) <= max_width:
                cut += 1
            lines.append(word[:cut])
            word = word[cut:]
        line = word
    if line:
        lines.append(line)
    return lines or [""]


def font_size_for(width: int) -> int:
    """About 30 characters per line on a photo, never tiny on a thumbnail nor huge on a poster."""
    return int(min(48, max(12, width / 28)))


def captioned_image(image: Image.Image, caption: str, min_width: int = 240) -> Image.Image:
    """The image (any mode, any size) with ``caption`` wrapped on a dark band below it; RGB."""
    img = to_rgb(image) if image.mode != "RGB" else image
    if img.width < min_width:  # tiny images: scale up so that the caption has room
        scale = min_width / img.width
        img = img.resize((min_width, max(1, round(img.height * scale))), Image.Resampling.NEAREST)
    font = load_font(font_size_for(img.width))
    margin = max(6, font.size // 2)
    lines = wrap_text(caption, font, img.width - 2 * margin)
    ascent, descent = font.getmetrics()
    line_h = ascent + descent + font.size // 5
    band_h = 2 * margin + line_h * len(lines)
    out = Image.new("RGB", (img.width, img.height + band_h), BAND)
    out.paste(img, (0, 0))
    draw = ImageDraw.Draw(out)
    for i, line in enumerate(lines):
        draw.text((margin, img.height + margin + i * line_h), line, font=font, fill=TEXT)
    return out
