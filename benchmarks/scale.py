"""Training memory and speed as the dataset grows: feature caches of ResNet-101's shape (7x7x2048 grid,
2048-d global vector, float16) for 8,000, 40,000 and 120,000 images (1.6 / 8.2 / 24.6 GB), each trained
for 200 steps, its features streamed (rows read per batch from the memory-mapped files), then 8,000 images
with 2 DDP processes (gloo on the CPU).

    python benchmarks/scale.py                    # writes up to 34 GB of caches once, reused by later runs
    python benchmarks/scale.py --sizes 8000       # some sizes only
    python benchmarks/scale.py --quick            # 200 and 400 images, the tiny encoder, 5 steps, DDP
                                                  # stream only (CI)

The caches are synthetic but real caches otherwise: the folder, files and meta.json that `captioner features`
writes, for a synthetic Karpathy-format dataset (5 captions per image, empty image files), found by
`captioner train` as it finds any cache. They are written under ``--dir`` (default: ``scale-benchmark`` in the
captioner cache root) and reused: the script ends by saying how much disk they hold, and ``--clean`` deletes
them when it is done. A size whose cache does not fit on the disk is skipped; the script says which.

Each training is `captioner train --config soft_resnet101` (``encoder.weights=none``, on the CPU) in a fresh
process, with one epoch of exactly 200 steps: the training split holds 200 batches of captions (spread over
the whole cache), the validation split 20 images. Reported: captions/s (the epoch's captions over its logged
wall time, the small validation included), the process's wall time (reading the dataset and the cache
included), and the peak RSS of the process tree, sampled from /proc: resident memory (for stream, pages of
the memory-mapped cache count too; the OS can drop them, and processes reading one cache share them) and
its private part (RssAnon). With DDP, each process's peak and the peak of their sum.
"""

import argparse
import dataclasses
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import logged_epoch_seconds, matmul_rate

from captioner.config import load_config
from captioner.data.readers import dataset_fingerprint, load_dataset
from captioner.errors import CaptionerError
from captioner.features import (
    META,
    FeatureCache,
    _Arrays,
    _start_meta,
    cache_bytes,
    cache_dir_for,
    config_encoder,
    default_cache_root,
    format_bytes,
)
from captioner.io import write_json_atomic

CONFIG = "soft_resnet101"
SIZES, QUICK_SIZES = (8_000, 40_000, 120_000), (200, 400)
CAPTIONS_PER_IMAGE, VAL_IMAGES = 5, 20
DISK_HEADROOM = 1e9  # bytes left free on the disk
ALL_RUNS = ["encoder.weights=none", "train.max_epochs=1", "train.accelerator=cpu"]
QUICK_RUNS = ["encoder.name=tiny", "encoder.grid_size=2", "train.batch_size=8", "model.embed_dim=32",
              "model.hidden_dim=32", "model.attention_dim=32"]  # the code path only, quickly


@dataclasses.dataclass
class Run:
    """One training run's measurements."""

    label: str
    captions_s: float
    wall_s: float
    peak_rss: int  # bytes, the process tree's total
    peak_private: int
    per_process: list[int]  # peak RSS of each process, the first one started first
    peak_pss: int = 0  # the process tree's proportional set size: shared pages counted once


# -- the synthetic dataset and its cache ------------------------------------------------------------------


def image_files(folder: Path, n: int) -> None:
    """Empty image files ``scale_000000.jpg`` ... for the first ``n`` images (the reader only checks they exist)."""
    folder.mkdir(parents=True, exist_ok=True)
    made = folder / ".count"
    have = int(made.read_text()) if made.is_file() else 0
    for i in range(have, n):
        (folder / image_name(i)).touch()
    made.write_text(str(max(n, have)))


def image_name(i: int) -> str:
    return f"scale_{i:06d}.jpg"


def write_dataset(root: Path, n: int, n_train: int) -> Path:
    """``root/data-N/dataset_scale.json`` (Karpathy format): ``n_train`` training images spread over the whole
    range, then VAL_IMAGES validation images, the rest test. Kept when already there with these numbers."""
    folder = root / f"data-{n}"
    path = folder / "dataset_scale.json"
    plan = {"images": n, "train": n_train, "val": VAL_IMAGES}
    if path.is_file() and json.loads(path.read_text()).get("plan") == plan:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "images").exists():
        (folder / "images").symlink_to(Path("..") / "images")
    train = set(np.linspace(0, n - 1, n_train, dtype=int).tolist())
    val = set([i for i in range(n) if i not in train][:VAL_IMAGES])
    rng = random.Random(n)
    words = [f"w{i}" for i in range(9_000)]  # about COCO's vocabulary size at min_word_freq 5
    images = [{"filename": image_name(i), "split": "train" if i in train else "val" if i in val else "test",
               "sentences": [{"raw": "a " + " ".join(rng.choices(words, k=rng.randint(8, 14)))}
                             for _ in range(CAPTIONS_PER_IMAGE)]}
              for i in range(n)]
    write_json_atomic(path, {"plan": plan, "images": images})
    return folder


def ensure_cache(data: Path, cache_root: Path, encoder) -> tuple[Path, str | None]:
    """The cache for ``data`` (found or written); or why it was not written (no room on the disk)."""
    dataset = load_dataset(data)
    fingerprint = dataset_fingerprint(dataset)
    out = cache_dir_for(fingerprint, encoder, cache_root)
    try:
        FeatureCache.open(out, expect={**encoder.describe(), "fingerprint": fingerprint})
        return out, None
    except CaptionerError:
        pass
    names = [r.name for r in dataset.records]
    need, free = cache_bytes(len(names), encoder), shutil.disk_usage(cache_root.parent).free
    if free < need + DISK_HEADROOM:
        return out, (f"its cache needs {format_bytes(need)} (and {format_bytes(DISK_HEADROOM)} to spare), "
                     f"{format_bytes(free)} free in {cache_root.parent}")
    print(f"writing a {format_bytes(need)} cache for {len(names)} images in {out}", file=sys.stderr, flush=True)
    write_cache(out, names, encoder, fingerprint)
    return out, None


def write_cache(out: Path, names: list[str], encoder, fingerprint: str, chunk: int = 256) -> None:
    """A complete cache of random ReLU-like features, in the files and format extraction writes."""
    meta, _ = _start_meta(out, encoder, names, fingerprint, overwrite=True)
    arrays = _Arrays.open_or_create(out, len(names), encoder, fresh=True)
    rng = np.random.default_rng(0)
    grid = np.abs(rng.standard_normal((chunk, encoder.grid_size**2, encoder.grid_dim), dtype=np.float32))
    global_ = np.abs(rng.standard_normal((chunk, encoder.global_dim), dtype=np.float32))
    grid, global_ = grid.astype(np.float16), global_.astype(np.float16)  # the same block for every chunk:
    for start in range(0, len(names), chunk):  # speed does not depend on the values
        rows = list(range(start, min(start + chunk, len(names))))
        arrays.store(rows, global_[: len(rows)], grid[: len(rows)])
    write_json_atomic(out / META, {**meta, "complete": True})


# -- one training run, its memory sampled ---------------------------------------------------------------


def train(data: Path, cache_root: Path, work: Path, sets: list[str], captions: int, label: str) -> Run:
    """`captioner train` in a fresh process; its process tree's memory is sampled every 0.2 s."""
    run_dir = Path(tempfile.mkdtemp(dir=work, prefix="run-"))
    cmd = [sys.executable, "-m", "captioner.cli", "train", "--config", CONFIG, "--data", str(data),
           "--out", str(run_dir / "run"), "--cache", str(cache_root), "--no-progress"]
    cmd += [arg for s in sets for arg in ("--set", s)]
    log = run_dir / "output.txt"
    start = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        peaks = MemoryPeaks(process.pid)
        while process.poll() is None:
            peaks.sample()
            time.sleep(0.2)
    wall = time.perf_counter() - start
    if process.returncode != 0:
        sys.exit(f"{label}: captioner train failed\n{log.read_text()[-3000:]}")
    epoch_s = logged_epoch_seconds(run_dir / "run") or wall
    shutil.rmtree(run_dir)
    return Run(label, captions / epoch_s, wall, peaks.total, peaks.private, peaks.per_process(), peaks.proportional)


class MemoryPeaks:
    """Peak resident memory of a process and its descendants (Linux /proc)."""

    def __init__(self, root: int):
        self.root, self.total, self.private, self.proportional = root, 0, 0, 0
        self.peaks: dict[int, int] = {}

    def sample(self) -> None:
        rss, private, pss = 0, 0, 0
        for pid in [self.root, *descendants(self.root)]:
            status = proc_status(pid)
            rss += status.get("VmRSS", 0)
            private += status.get("RssAnon", 0)
            pss += proc_pss(pid)
            self.peaks[pid] = max(self.peaks.get(pid, 0), status.get("VmRSS", 0))
        self.total, self.private = max(self.total, rss), max(self.private, private)
        self.proportional = max(self.proportional, pss)

    def per_process(self) -> list[int]:
        return [peak for _, peak in sorted(self.peaks.items()) if peak > 0]


def descendants(pid: int) -> list[int]:
    """The processes started by ``pid``, by their children, and so on."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo += children.get(child, [])
    return found


def proc_pss(pid: int) -> int:
    """The process's proportional set size in bytes: its private pages plus its share of pages it shares with
    other processes (a page of a cache file two processes map counts half for each), 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def proc_status(pid: int) -> dict[str, int]:
    """The memory lines of /proc/PID/status, in bytes ({} once the process is gone)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    return {key: int(rest.split()[0]) * 1024 for key, _, rest in (line.partition(":") for line in lines)
            if key in ("VmRSS", "RssAnon") and rest.strip()}


# -- the runs -------------------------------------------------------------------------------------------


def measure(n: int, root: Path, encoder, sets: list[str], steps: int, batch: int, processes: int,
            notes: list[str]) -> list[Run]:
    label = f"{n} images" + (f", {processes} processes" if processes > 1 else "")
    data = write_dataset(root, n, n_train=steps * batch // CAPTIONS_PER_IMAGE)
    cache, problem = ensure_cache(data, root / "cache", encoder)
    if problem:
        notes.append(f"{n} images skipped: {problem}")
        return []
    n_bytes = FeatureCache.open(cache).nbytes
    runs = []
    extra = [f"train.devices={processes}"] if processes > 1 else []
    run_label = f"{label} ({format_bytes(n_bytes)})"
    print(f"training: {run_label}", file=sys.stderr, flush=True)
    runs.append(train(data, root / "cache", root, sets + extra, steps * batch, run_label))
    return runs


def table(runs: list[Run]) -> str:
    lines = ["| run | captions/s | wall | peak RSS | of it private | PSS (shared pages once) | per process (RSS) |",
             "|---|---|---|---|---|---|---|"]
    for r in runs:
        each = " + ".join(_gb(p) for p in r.per_process) if len(r.per_process) > 1 else ""
        lines.append(f"| {r.label} | {r.captions_s:.0f} | {r.wall_s:.0f} s | {_gb(r.peak_rss)} | "
                     f"{_gb(r.peak_private)} | {_gb(r.peak_pss)} | {each} |")
    return "\n".join(lines)


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="200 and 400 images, the tiny encoder, 5 steps (CI)")
    p.add_argument("--sizes", help="comma-separated image counts (default 8000,40000,120000)")
    p.add_argument("--steps", type=int, help="training steps per run (default 200; --quick: 5)")
    p.add_argument("--dir", type=Path, help="where the datasets and caches are kept (default: scale-benchmark "
                                            "in the captioner cache root; --quick: a temporary folder)")
    p.add_argument("--clean", action="store_true", help="delete the datasets and caches when done (they take "
                   "about 34 GB at the default sizes; kept, the next run reuses them)")
    args = p.parse_args()
    if not Path("/proc/self/status").is_file():
        sys.exit("this benchmark samples memory from /proc (Linux)")
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else list(QUICK_SIZES if args.quick else SIZES)
    steps = args.steps or (5 if args.quick else 200)
    sets = ALL_RUNS + (QUICK_RUNS if args.quick else [])
    cfg = load_config(CONFIG, sets)
    batch = cfg.train.batch_size
    if steps * batch % CAPTIONS_PER_IMAGE or min(sizes) < steps * batch // CAPTIONS_PER_IMAGE + VAL_IMAGES:
        p.error(f"{steps} steps of {batch} captions need a multiple of {CAPTIONS_PER_IMAGE} captions and at least "
                f"{steps * batch // CAPTIONS_PER_IMAGE + VAL_IMAGES} images")
    encoder = config_encoder(cfg)
    notes: list[str] = []
    rate = matmul_rate()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.dir or (Path(tmp) if args.quick else default_cache_root() / "scale-benchmark")
        image_files(root / "images", max(sizes))
        runs = [r for n in sorted(sizes) for r in measure(n, root, encoder, sets, steps, batch, 1, notes)]
        runs += measure(min(sizes), root, encoder, sets, steps, batch, 2, notes)
        if not args.quick:
            size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
            held = f"{size / 1e9:.1f} GB" if size >= 1e9 else f"{size / 1e6:.0f} MB"
            if args.clean:
                shutil.rmtree(root)
                notes.append(f"deleted {root} ({held})")
            else:
                notes.append(f"{root} holds {held} of synthetic datasets and caches for the next run; "
                             "delete it (or pass --clean) to free the disk")
    print(table(runs))
    for note in notes:
        print(f"note: {note}")
    print(f"{CONFIG} on {encoder.describe()['name']}'s {encoder.grid_size}x{encoder.grid_size}x{encoder.grid_dim} "
          f"features, {steps} steps of "
          f"{batch} captions, {os.cpu_count()} CPUs; matmul rate {rate / 1e9:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
