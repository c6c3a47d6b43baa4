"""``captioner evaluate --report DIR``: a static HTML gallery of a scored split.

DIR/index.html shows the corpus metric table, then every image with its generated caption, its reference
captions and its own BLEU-4 and CIDEr-D, sortable best-first or worst-first. Thumbnails are copied into
DIR/images/, so the folder can be zipped, moved or served as it is. No external files, scripts or fonts.
"""

import html
import json
from pathlib import Path

from captioner.data.images import load_image
from captioner.errors import CaptionerError
from captioner.io import write_text_atomic
from captioner.viz.outputs import save_jpeg_atomic

THUMB = 320  # longest side of the copied images, in pixels
SORTS = [  # (value, label, data attribute, descending)
    ("cider-desc", "CIDEr-D, best first", "cider", True),
    ("cider-asc", "CIDEr-D, worst first", "cider", False),
    ("bleu4-desc", "BLEU-4, best first", "bleu4", True),
    ("bleu4-asc", "BLEU-4, worst first", "bleu4", False),
    ("name-asc", "image name", "name", False),
]

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; background: #fafafa; color: #222; }}
table.metrics {{ border-collapse: collapse; margin: .5rem 0 1rem; }}
table.metrics th, table.metrics td {{ border: 1px solid #ccc; padding: .3rem .7rem; text-align: right; }}
#gallery {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(330px, 1fr)); gap: 1rem; }}
.card {{ background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: .6rem; }}
.card img {{ width: 100%; height: 220px; object-fit: contain; background: #eee; }}
.caption {{ font-weight: 600; margin: .4rem 0; }}
.scores {{ font-size: .85rem; color: #555; }}
.refs {{ font-size: .85rem; color: #444; margin: .3rem 0 0 1.1rem; padding: 0; }}
.missing {{ height: 220px; display: flex; align-items: center; justify-content: center; background: #eee; }}
</style>
</head>
<body>
<h1>{title}</h1>
<p>{summary}</p>
<table class="metrics" id="metrics"><tr>{metric_heads}</tr><tr>{metric_cells}</tr></table>
<label>Sort by <select id="sort">{sort_options}</select></label>
<div id="gallery">
{cards}
</div>
<script>
const SORTS = {sorts_json};
function sortGallery(value) {{
  const [key, descending] = SORTS[value];
  const gallery = document.getElementById("gallery");
  const cards = Array.from(gallery.children);
  cards.sort((a, b) => {{
    const x = a.dataset[key], y = b.dataset[key];
    const order = key === "name" ? x.localeCompare(y) : Number(x) - Number(y);
    return descending ? -order : order;
  }});
  cards.forEach(card => gallery.appendChild(card));
}}
document.getElementById("sort").addEventListener("change", e => sortGallery(e.target.value));
sortGallery(document.getElementById("sort").value);
</script>
</body>
</html>
"""

CARD = """<div class="card" data-name="{name}" data-bleu4="{bleu4:.6f}" data-cider="{cider:.6f}">
{picture}
<div class="caption">{caption}</div>
<div class="scores">{name_text} · BLEU-4 {bleu4_100:.1f} · CIDEr-D {cider_100:.1f}</div>
<ol class="refs">{refs}</ol>
</div>"""


def write_report(report: dict, out_dir: str | Path, image_paths: dict[str, str | Path]) -> Path:
    """Write the gallery for an ``evaluate`` report; ``image_paths`` maps each image name to its file.

    Returns the path of index.html. An image that cannot be read gets a placeholder instead of a thumbnail.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise CaptionerError(f"{out_dir}: the report folder is a file")
    cards = []
    for i, entry in enumerate(report["captions"]):
        name = entry["image"]
        picture = _thumbnail(image_paths.get(name), out_dir / "images" / f"{i:05d}.jpg", name)
        scores = entry.get("scores", {})
        bleu4, cider = scores.get("BLEU-4", 0.0), scores.get("CIDEr-D", 0.0)
        cards.append(CARD.format(
            name=html.escape(name, quote=True), name_text=html.escape(name), picture=picture,
            caption=html.escape(entry["caption"]) or "<em>(empty caption)</em>",
            bleu4=bleu4, cider=cider, bleu4_100=100 * bleu4, cider_100=100 * cider,
            refs="".join(f"<li>{html.escape(r)}</li>" for r in entry.get("references", []))))
    metrics = report["metrics"]
    title = f"captioner: {report['split']} split, {report['images']} images, beam {report['beam_size']}"
    skipped = report.get("skipped") or []
    summary = (f"Data: {html.escape(str(report.get('data', '')))}. Scores ×100, coco-caption (pycocoevalcap); "
               f"per-image scores are each image's own BLEU-4 and CIDEr-D (CIDEr-D's IDF from the whole split)."
               + (f" {len(skipped)} images could not be read and are not scored." if skipped else ""))
    page = PAGE.format(
        title=html.escape(title), summary=summary,
        metric_heads="".join(f"<th>{html.escape(k)}</th>" for k in metrics),
        metric_cells="".join(f"<td>{100 * v:.1f}</td>" for v in metrics.values()),
        sort_options="".join(f'<option value="{v}">{label}</option>' for v, label, _, _ in SORTS),
        sorts_json=json.dumps({v: [key, desc] for v, _, key, desc in SORTS}),
        cards="\n".join(cards))
    return write_text_atomic(out_dir / "index.html", page)


def _thumbnail(source: str | Path | None, target: Path, name: str) -> str:
    """Copy a small version of the image next to the page; the <img> tag (or a placeholder)."""
    try:
        if source is None:
            raise CaptionerError(f"{name}: image file unknown")
        image = load_image(source)
        image.thumbnail((THUMB, THUMB))
        save_jpeg_atomic(target, image, quality=85)
    except CaptionerError as e:
        return f'<div class="missing">{html.escape(str(e))}</div>'
    return f'<img src="images/{target.name}" alt="{html.escape(name, quote=True)}" loading="lazy">'
