"""A small copy of a Flickr8k-layout dataset, to send to a remote GPU machine with an upload limit.

    python tools/compact_dataset.py --data ../shared/data/flickr8k --out flickr8k_small.zip

The copy keeps captions.txt and splits/ (image names with the new extension) and stores each image of a split
resized to SIZE x SIZE (what training resizes to anyway: bilinear, aspect not kept) as WebP at QUALITY, all in
one uncompressed zip (one file travels faster and counts less than 7000). Flickr8k train+val at 224 px,
quality 60: 55 MB, about 8 KB an image. Unzip it on the other side (`python -m zipfile -e FILE DIR`) and pass
DIR/NAME as --data. Images that cannot be read are reported and left out; the rest are written.

    python tools/compact_dataset.py --data ../shared/data/flickr8k --out fl.zip --quality 85 --parts 2

writes fl.1of2.zip (captions, splits and half the images) and fl.2of2.zip (the other half): for a machine that
takes a limited upload per command but keeps files between commands, one part per command, all unzipped
into the same folder.
"""

import argparse
import io
import sys
import zipfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image

from captioner.data.images import load_image
from captioner.errors import CaptionerError


def webp_name(name: str) -> str:
    return str(Path(name).with_suffix(".webp"))


def convert(path: Path, size: int, quality: int) -> bytes | str:
    """The image as WebP bytes, or the reason it could not be read."""
    try:
        img = load_image(path).resize((size, size), Image.Resampling.BILINEAR)
    except CaptionerError as e:
        return str(e)
    out = io.BytesIO()
    img.save(out, "WEBP", quality=quality, method=6)
    return out.getvalue()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, type=Path, help="folder with captions.txt, splits/*.txt and images/")
    p.add_argument("--out", required=True, type=Path, help="zip file to write")
    p.add_argument("--size", type=int, default=224, help="image side in pixels (default 224)")
    p.add_argument("--quality", type=int, default=60, help="WebP quality 0-100 (default 60)")
    p.add_argument("--name", default="flickr8k", help="folder name inside the zip (default flickr8k)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--parts", type=int, default=1, help="split the images over this many zip files (default 1)")
    args = p.parse_args(argv)
    if args.parts < 1:
        p.error("--parts must be 1 or more")

    splits = sorted((args.data / "splits").glob("*.txt"))
    if not (args.data / "captions.txt").is_file() or not splits:
        print(f"{args.data}: expected captions.txt and splits/*.txt (the Flickr8k folder layout)", file=sys.stderr)
        return 2
    names = {s.stem: s.read_text().split() for s in splits}
    wanted = sorted({n for ns in names.values() for n in ns})
    jobs = ([args.data / "images" / n for n in wanted], [args.size] * len(wanted), [args.quality] * len(wanted))
    if args.workers > 1:
        with ProcessPoolExecutor(args.workers) as pool:
            results = list(pool.map(convert, *jobs, chunksize=64))
    else:
        results = list(map(convert, *jobs))
    bad = {n: r for n, r in zip(wanted, results, strict=True) if isinstance(r, str)}
    for reason in bad.values():
        print(f"skipped: {reason}", file=sys.stderr)

    root, keep = args.name, set(wanted) - set(bad)
    lines = []
    for line in (args.data / "captions.txt").read_text().splitlines(keepends=True):
        name, sep, caption = line.partition("\t")
        if sep and name in keep:
            lines.append(f"{webp_name(name)}\t{caption}")
    images = [(n, data) for n, data in zip(wanted, results, strict=True) if n not in bad]
    outs = [args.out] if args.parts == 1 else \
        [args.out.with_name(f"{args.out.stem}.{i + 1}of{args.parts}{args.out.suffix}") for i in range(args.parts)]
    for i, out in enumerate(outs):
        tmp = out.with_name(out.name + ".part")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:
            if i == 0:  # the text files travel with the first part
                for split, ns in names.items():
                    z.writestr(f"{root}/splits/{split}.txt", "".join(webp_name(n) + "\n" for n in ns if n not in bad))
                z.writestr(f"{root}/captions.txt", "".join(lines))
            for n, data in images[i :: args.parts]:
                z.writestr(f"{root}/images/{webp_name(n)}", data)
        tmp.replace(out)
        size = out.stat().st_size
        print(f"{out}: {len(images[i :: args.parts])} images, {size / 1e6:.1f} MB "
              f"({size / max(1, len(images[i :: args.parts])) / 1e3:.1f} KB an image)")
    print(f"{len(images)} images written, {len(bad)} skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
