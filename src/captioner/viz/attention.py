"""Per-word attention figures: where the model looked when it said each word.

- soft attention: the alpha map of each word, upsampled and smoothed, as a heat map over the photo;
- hard attention decoded at one location per word (``model.hard_inference`` argmax or sample): that location
  (outlined cell) with its alpha map beside it; decoded with the expected context (the default), as soft;
- adaptive attention (a visual sentinel): each word's map, and in its title 1 - beta_t, the share of its
  attention on the image ("how much it looked"; the rest went to the sentinel, the language model);
- NIC has no attention (one image vector conditions every word): no figure (``decoder.has_attention``).

The encoders resize the whole photo (aspect not kept) to a square, so the grid covers the whole image: the
map is stretched back over the photo's own width and height.
"""

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from captioner.data.images import to_rgb

PANEL_INCHES = 2.3
MAX_SIDE = 360  # pixels of the photo drawn in each panel (figures stay small whatever the photo)


def grid_side(n_locations: int) -> int:
    side = math.isqrt(n_locations)
    if side * side != n_locations:
        raise ValueError(f"attention over {n_locations} locations is not a square grid")
    return side


def smooth_map(alpha: np.ndarray, width: int, height: int) -> np.ndarray:
    """A g x g attention map -> [height, width] in [0, 1] (bicubic upsampling, peak scaled to 1)."""
    g = grid_side(alpha.size)
    grid = torch.as_tensor(alpha, dtype=torch.float32).reshape(1, 1, g, g)
    up = F.interpolate(grid, size=(height, width), mode="bicubic", align_corners=False)[0, 0].clamp(min=0)
    peak = float(up.max())
    return (up / peak if peak > 0 else up).numpy()


def _thumbnail(image: Image.Image) -> Image.Image:
    img = to_rgb(image) if image.mode != "RGB" else image
    scale = MAX_SIDE / max(img.size)
    if scale < 1:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                         Image.Resampling.BILINEAR)
    return img


def attention_figure(image: Image.Image, words: list[str], alphas, locs: list[int] | None = None,
                     caption: str | None = None, columns: int = 5, note: str | None = None,
                     looked: list[float] | None = None):
    """A matplotlib figure with one panel per word (two per word for hard attention: location, alpha map).

    ``alphas``: [len(words), L] (L = g*g); ``locs``: hard attention's location index per word, or None;
    ``note``: what the maps are, when not one decoder's (an ensemble's mean map); ``looked``: 1 - beta_t per word
    (adaptive attention), shown in the word's title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    alphas = np.asarray(alphas, dtype=np.float32)
    if words and (alphas.ndim != 2 or len(alphas) != len(words)):
        raise ValueError(f"need one attention map per word: {len(words)} words, maps of shape {alphas.shape}")
    img = _thumbnail(image)
    arr = np.asarray(img)
    g = grid_side(alphas.shape[1]) if words else 1
    per_word = 2 if locs is not None else 1
    cols = max(per_word, (columns // per_word) * per_word)
    n_panels = max(1, len(words) * per_word)
    rows = math.ceil(n_panels / cols)
    aspect = img.height / img.width
    fig, axes = plt.subplots(rows, cols, figsize=(PANEL_INCHES * cols, PANEL_INCHES * aspect * rows + 0.8),
                             squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    cell_w, cell_h = img.width / g, img.height / g
    for i, word in enumerate(words):
        ax = axes.flat[i * per_word]
        ax.imshow(arr)
        if locs is None:
            ax.imshow(smooth_map(alphas[i], img.width, img.height), cmap="jet", alpha=0.5, vmin=0, vmax=1)
        else:
            row, col = divmod(int(locs[i]), g)
            ax.add_patch(Rectangle((col * cell_w, row * cell_h), cell_w, cell_h, fill=False, edgecolor="yellow",
                                   linewidth=2.5))
            ax_map = axes.flat[i * per_word + 1]
            ax_map.imshow(alphas[i].reshape(g, g), cmap="viridis", interpolation="nearest")
            ax_map.set_title("α", fontsize=9)
        ax.set_title(word if looked is None else f"{word} · 1−β {looked[i]:.2f}", fontsize=11)
    if not words:
        axes.flat[0].imshow(arr)
        axes.flat[0].set_title("(empty caption)", fontsize=11)
    kind = "hard attention: the location used for each word, and its α map" if locs is not None \
        else "attention for each word (its α map)"
    kind += f" ({note})" if note else ""
    kind += "; 1−β: how much of it is on the image, not on the sentinel" if looked is not None else ""
    fig.suptitle(f"{caption}\n{kind}" if caption else kind, fontsize=11)
    return fig


def save_attention_figure(path: str | Path, image: Image.Image, result: dict, dpi: int = 100) -> Path:
    """Write the attention figure of one caption result (``hypothesis_dict`` output) as a PNG, atomically."""
    import io

    import matplotlib.pyplot as plt

    from captioner.io import write_bytes_atomic

    fig = attention_figure(image, result["tokens"], result.get("attention") or [], result.get("locations"),
                           caption=result["caption"], note=result.get("attention_of"), looked=result.get("looked"))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return write_bytes_atomic(path, buf.getvalue())
