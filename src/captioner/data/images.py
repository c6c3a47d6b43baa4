"""Reading images robustly (one clear error per bad file) and turning them into encoder input."""

import io
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from captioner.errors import CaptionerError, file_error

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's default decompression-bomb limit (about 9459 x 9459)
_TRANSPARENT_MODES = {"RGBA", "LA", "PA", "La", "RGBa"}
_DEEP_GREY_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


def load_image(path: str | Path) -> Image.Image:
    """Open ``path`` as an upright 8-bit RGB image, or raise a one-line :class:`CaptionerError`.

    Handles EXIF rotation, transparency (composited on white), palettes, grey and 16-bit images,
    CMYK, and animations (first frame).  Truncated or corrupt files fail here rather than later.
    """
    path = Path(path)
    _check_file(path)
    return _decode(path, path)


def decode_image(data: bytes, name: str = "upload", max_pixels: int | None = None) -> Image.Image:
    """:func:`load_image` for bytes already in memory (an upload); errors name ``name``.

    ``max_pixels``: a lower size limit than Pillow's (a server's), checked before decoding."""
    if not data:
        raise file_error(name, "empty file")
    return _decode(io.BytesIO(data), name, max_pixels)


def _decode(source, label, max_pixels: int | None = None) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                _check_pixel_count(label, img, max_pixels)
                img.load()  # decode now, so a truncated file fails here
                return to_rgb(_upright(img))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise file_error(label, "image too large (possible decompression bomb)") from None
    except UnidentifiedImageError:
        raise file_error(label, "not an image (unknown or unsupported format)") from None
    except PermissionError:
        raise file_error(label, "permission denied") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise file_error(label, f"corrupt or truncated image ({e})") from None


def _check_file(path: Path) -> None:
    """Fail early, with a precise message, for paths that cannot be an image."""
    if not path.exists():
        raise file_error(path, "no such file")
    if path.is_dir():
        raise file_error(path, "is a directory, not an image")
    if path.stat().st_size == 0:
        raise file_error(path, "empty file")


def _check_pixel_count(path, img: Image.Image, max_pixels: int | None = None) -> None:
    limit = max_pixels or Image.MAX_IMAGE_PIXELS or DEFAULT_MAX_PIXELS
    width, height = img.size
    if width * height > limit:
        raise file_error(path, f"image too large ({width}x{height} pixels, limit {limit})")


def _upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag; a broken EXIF block is ignored."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # Pillow raises assorted errors on malformed EXIF data
        return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB: transparency over white, deep greys scaled to 0..255."""
    if img.mode == "RGB":
        return img.copy()
    if img.mode in _DEEP_GREY_MODES:
        return _deep_grey_to_rgb(img)
    if img.mode in _TRANSPARENT_MODES or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _deep_grey_to_rgb(img: Image.Image) -> Image.Image:
    """16-bit / 32-bit / float grey -> 8-bit RGB, scaling the full range instead of clipping it."""
    values = np.asarray(img, dtype=np.float64)
    if img.mode == "F":
        top = 1.0 if values.size and values.max() <= 1.0 else 255.0
    else:
        top = 65535.0 if img.mode.startswith("I;16") or (values.size and values.max() > 255) else 255.0
    grey = np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


def image_to_tensor(img: Image.Image, size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Resize to ``size x size`` (bilinear, antialiased; aspect not kept, as in Show-Attend-Tell code)
    and normalise per channel: a float32 tensor ``[3, size, size]``."""
    img = to_rgb(img) if img.mode != "RGB" else img
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)  # Pillow antialiases when shrinking
    # In numpy, single-threaded: torch's threaded kernels on one small image cost more in thread
    # synchronisation than they save (20x slower while another process keeps the cores busy)
    scale = 1.0 / (255.0 * np.asarray(std, dtype=np.float32))  # (x / 255 - mean) / std = x * scale + shift
    shift = -np.asarray(mean, dtype=np.float32) / np.asarray(std, dtype=np.float32)
    x = np.asarray(img, dtype=np.float32) * scale + shift  # [S, S, 3]
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))  # [3, S, S]


def as_image(item, label: str = "image") -> Image.Image:
    """An image given in memory as an RGB Pillow image: a Pillow image (any mode), a numpy array or a torch
    tensor. Arrays are ``[H, W]`` (grey), ``[H, W, 3|4]`` or, for tensors, ``[3, H, W]`` as torchvision
    makes them; uint8 values are 0..255, float values 0..1. Anything else is a one-line error naming ``label``."""
    if isinstance(item, Image.Image):
        return to_rgb(_upright(item))
    if isinstance(item, torch.Tensor):
        item = item.detach().cpu()
        if item.dim() == 3 and item.shape[0] in (1, 3, 4) and item.shape[-1] not in (3, 4):
            item = item.permute(1, 2, 0)  # [C, H, W] -> [H, W, C]
        item = item.numpy()
    if not isinstance(item, np.ndarray):
        raise CaptionerError(f"{label}: not an image (got {type(item).__name__}; give a file path, a PIL image, "
                             "a numpy array or a torch tensor)")
    arr = item[..., 0] if item.ndim == 3 and item.shape[-1] == 1 else item
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)) or min(arr.shape[:2]) < 1:
        raise CaptionerError(f"{label}: an image array must be [H, W], [H, W, 3|4] or [3, H, W], not "
                             f"{list(item.shape)}")
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.floating) and not np.issubdtype(arr.dtype, np.integer):
            raise CaptionerError(f"{label}: image values of type {arr.dtype} (use uint8 0..255 or float 0..1)")
        arr = arr.astype(np.float32)
        if not np.isfinite(arr).all():
            raise CaptionerError(f"{label}: the image holds NaN or infinite values")
        top = 1.0 if np.issubdtype(item.dtype, np.floating) and arr.max(initial=0) <= 1.0 else 255.0
        arr = np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8)
    return to_rgb(Image.fromarray(np.ascontiguousarray(arr)))
