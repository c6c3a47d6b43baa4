"""`captioner caption`: how long a cold start takes against the floor, and model against model once loaded.

    python benchmarks/caption.py --model A.pt --model B.pt    # the package's sample photos, B's time / A's
    python benchmarks/caption.py                              # the shipped model alone
    python benchmarks/caption.py --quick                      # an untrained synthetic model against itself x2

Start-up: one photo through `captioner caption` in a fresh process, against the floor of any such program,
`python -c "import torch, PIL.Image"`, the two taking turns (``--starts`` rounds); the medians and their ratio.

Then what a user waits for after the model is loaded: reading the photos, the encoder, the beam search
(beam 5). The models take turns, round after round, so a busy machine slows them alike; the median round
is reported, and each model's time as a ratio to the first one's.

    python benchmarks/caption.py --library ../shared/data/flickr8k --images 1000

    python benchmarks/caption.py --decoding-costs ../shared/data/flickr8k [--model A.pt]

What the best recipe's run-time techniques cost one model, in ms per photo after loading: the model
without them, with test-time flip (``flip=True``: each photo and its mirror image), with consensus reranking
(the index the model file carries, else the dataset's training captions, whose images' features are computed
once first, not timed), and with both, taking turns on the sample photos as above.

A photo library: `captioner caption FOLDER --output captions.jsonl` on the first N val JPEGs of a dataset, with
the encoder on torch and on ONNX Runtime, side by side with the encoder's raw PyTorch forward on the same
photos already in memory (batch 32); images/s of each (start-up included for the commands), and how many
captions the two backends share.
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import matmul_rate, peak_rss_mb

SAMPLES = Path(__file__).resolve().parents[1] / "src" / "captioner" / "samples"


def quick_models(tmp: Path) -> tuple[list[Path], list[Path]]:
    """An untrained synthetic soft-attention model, and the same twice as an ensemble file; synthetic photos."""
    from evaluate import untrained_synth_model

    from captioner.checkpoint import load_models, save_model

    model, data = untrained_synth_model(tmp)
    pair = save_model(tmp / "pair.pt", load_models([model, model]), int8_decoder=True)
    return [model, pair], sorted((data / "images").glob("*.png"))[:5]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--model", type=Path, action="append", default=[], help="model file (repeat to compare)")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--starts", type=int, default=5, help="cold starts of each kind, taken in turns")
    p.add_argument("--library", type=Path, metavar="DATA", help="a dataset whose val images to caption as a folder")
    p.add_argument("--images", type=int, default=1000, help="with --library: how many")
    p.add_argument("--decoding-costs", type=Path, metavar="DATA",
                   help="time flip and consensus reranking (DATA's training captions) against plain decoding")
    args = p.parse_args()
    if args.decoding_costs:
        decoding_costs(args.model[0] if args.model else None, args.decoding_costs, args.rounds)
        return
    if args.library or args.quick:
        library(args.library, 24 if args.quick else args.images, args.quick)
        if args.library:
            return
    import captioner
    from captioner.checkpoint import PRETRAINED

    startup(args.model[0] if args.model else None, 2 if args.quick else args.starts)
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        if args.quick:
            paths, photos = quick_models(Path(tmp))
            args.rounds = 2
        else:
            paths, photos = args.model or [PRETRAINED], sorted(SAMPLES.glob("*.jpg"))
        if not photos:
            sys.exit("no photos to caption")
        models = [captioner.load(path, device="cpu") for path in paths]
        sizes_mb = [path.stat().st_size / 1e6 for path in paths]
        for model in models:
            model(photos)  # warm-up: the first oneDNN calls are slow
        rate = matmul_rate()
        times = [[] for _ in models]
        for _ in range(args.rounds):
            for model, spent in zip(models, times, strict=True):
                start = time.perf_counter()
                model(photos)
                spent.append(time.perf_counter() - start)

    print(f"{len(photos)} photos, beam 5, median of {args.rounds} rounds taken in turns:")
    first = statistics.median(times[0])
    for path, model, mb, spent in zip(paths, models, sizes_mb, times, strict=True):
        n = len(model.model.parts())
        median = statistics.median(spent)
        print(f"  {path} ({n} decoder{'s' if n > 1 else ''}, {mb:.1f} MB): {median * 1000:.0f} ms "
              f"({median / len(photos) * 1000:.0f} ms/photo), {median / first:.2f}x the first")
    print(f"matmul rate in this run {rate / 1e9:.1f} GFLOP/s; peak RSS {peak_rss_mb():.0f} MB")


def decoding_costs(model: Path | None, data: Path, rounds: int) -> None:
    """ms per photo of plain decoding, test-time flip, consensus reranking and both, in turns."""
    import captioner

    torch.set_num_threads(2)
    photos = sorted(SAMPLES.glob("*.jpg"))
    plain = captioner.load(model, device="cpu", consensus=False)
    carried = plain.model.consensus_index is not None  # (a file made with export --consensus)
    start = time.perf_counter()
    reranked = captioner.load(model, device="cpu", consensus=True if carried else data)  # (the training images'
    where = "the file's" if carried else f"{data}'s"  # features are computed once)
    print(f"consensus index ({where}) ready in {time.perf_counter() - start:.0f} s; timing", file=sys.stderr,
          flush=True)
    variants = {"plain": (plain, {}), "+ flip": (plain, {"flip": True}), "+ consensus": (reranked, {}),
                "+ flip + consensus": (reranked, {"flip": True})}
    for cap, settings in variants.values():
        cap(photos, **settings)  # warm-up
    times = {name: [] for name in variants}
    for _ in range(rounds):
        for name, (cap, settings) in variants.items():
            start = time.perf_counter()
            cap(photos, **settings)
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["plain"])
    print(f"{len(photos)} photos, {model or 'the shipped model'}, median of {rounds} rounds taken in turns:")
    for name, spent in times.items():
        median = statistics.median(spent)
        print(f"  {name}: {median / len(photos) * 1000:.0f} ms/photo ({median / base:.2f}x)")


def library(data: Path | None, n: int, quick: bool) -> None:
    """`captioner caption FOLDER --output` with each backend, and the raw encoder forward, on n photos."""
    import json

    import captioner
    from captioner.data.images import load_image

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        if data is None:  # --quick: the sample photos, repeated
            photos = sorted(SAMPLES.glob("*.jpg")) * (n // 5 + 1)
        else:
            names = (data / "splits" / "val.txt").read_text().split()
            photos = [data / "images" / name for name in names]
        for i, photo in enumerate(photos[:n]):
            (folder / f"{i:05d}{photo.suffix}").symlink_to(photo.resolve())
        rate = matmul_rate()
        outputs, speed = {}, {}
        runs = {"torch": ["--backend", "torch"], "onnx": ["--backend", "onnx"]}
        reranks = captioner.load(device="cpu", backend="torch").model.config.decode.consensus
        if reranks:  # the shipped model's consensus reranking, switched off
            runs["onnx, no reranking"] = ["--backend", "onnx", "--set", "decode.consensus=false"]
        for name, flags in runs.items():
            out = Path(tmp) / f"{len(speed)}.jsonl"
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "captioner.cli", "caption", str(folder), "--output", str(out),
                            *flags, "--no-progress"], check=True, capture_output=True)
            speed[name] = n / (time.perf_counter() - start)
            outputs[name] = {r["path"]: r["caption"] for r in map(json.loads, out.read_text().splitlines())}
        encoder = captioner.load(device="cpu", backend="torch").encoder
        tensors = torch.stack([encoder.preprocess(load_image(p)) for p in sorted(folder.iterdir())])
        with torch.inference_mode():
            encoder(tensors[:32])  # warm-up
            start = time.perf_counter()
            for i in range(0, n, 32):
                encoder(tensors[i : i + 32])
            speed["raw"] = n / (time.perf_counter() - start)
    same = sum(outputs["torch"][k] == outputs["onnx"].get(k) for k in outputs["torch"])
    print(f"{n} photos, the shipped model, beam 5: `captioner caption FOLDER --output` {speed['torch']:.1f} images/s "
          f"with torch, {speed['onnx']:.1f} with onnx ({speed['onnx'] / speed['torch']:.2f}x); the raw PyTorch "
          f"encoder forward on them in memory {speed['raw']:.1f} images/s (onnx command: "
          f"{speed['onnx'] / speed['raw']:.2f}x it); identical captions {same}/{n}; matmul rate {rate / 1e9:.1f} GFLOP/s")
    if reranks:
        plain = speed["onnx, no reranking"]
        print(f"  onnx without consensus reranking: {plain:.1f} images/s (with it: {speed['onnx'] / plain:.2f}x)")


def startup(model: Path | None, rounds: int) -> float:
    """Median wall time of `captioner caption PHOTO` in a fresh process over that of importing torch and PIL,
    the two taking turns ``rounds`` times. Returns the ratio."""
    photo = SAMPLES / "cat.jpg"
    floor = [sys.executable, "-c", "import torch, PIL.Image"]
    command = [sys.executable, "-m", "captioner.cli", "caption", *(["--model", str(model)] if model else []),
               str(photo)]
    times: dict[str, list[float]] = {"floor": [], "caption": []}
    for _ in range(rounds):
        for name, argv in (("floor", floor), ("caption", command)):
            start = time.perf_counter()
            subprocess.run(argv, check=True, capture_output=True)
            times[name].append(time.perf_counter() - start)
    floor_s, caption_s = statistics.median(times["floor"]), statistics.median(times["caption"])
    print(f"start-up, one photo from a cold process, median of {rounds} taken in turns: "
          f"`python -c 'import torch, PIL.Image'` {floor_s:.2f} s, `captioner caption {photo.name}` "
          f"{caption_s:.2f} s: {caption_s / floor_s:.2f}x the floor")
    return caption_s / floor_s


if __name__ == "__main__":
    main()
