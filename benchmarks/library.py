"""A large photo library end to end: `captioner caption FOLDER --output captions.jsonl` on N photos, killed with
SIGKILL half-way, then resumed with --resume; the output must hold every photo exactly once, and memory must
stay flat (the peak resident memory of each run, read from /proc while it runs, against the photos it did).

    python benchmarks/library.py --data ../shared/data/flickr8k --images 10000
    python benchmarks/library.py --quick       # 60 copies of the sample photos

The photos are the dataset's val images repeated under other names (links, no copies).
"""

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import matmul_rate

SAMPLES = Path(__file__).resolve().parents[1] / "src" / "captioner" / "samples"


def peak_kb(pid: int) -> int:
    """The process's peak resident memory so far (VmHWM), 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run(cmd: list[str], out: Path, stop_at: int | None = None) -> tuple[float, int, int]:
    """Run ``cmd``; with ``stop_at``, SIGKILL it once ``out`` holds that many records. Returns (seconds, peak
    RSS in KB, records in the output at the end)."""
    start, peak = time.perf_counter(), 0
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while proc.poll() is None:
        peak = max(peak, peak_kb(proc.pid))
        if stop_at is not None and out.exists() and out.read_bytes().count(b"\n") >= stop_at:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            break
        time.sleep(0.2)
    return time.perf_counter() - start, peak, out.read_bytes().count(b"\n") if out.exists() else 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, help="a dataset in the reference layout (its val images are used)")
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "library"
        if args.quick or args.data is None:
            photos, n = sorted(SAMPLES.glob("*.jpg")), 60
        else:
            photos = [args.data / "images" / name for name in (args.data / "splits" / "val.txt").read_text().split()]
            n = args.images
        for i in range(n):  # in folders of 1,000, as a photo library might be
            target = folder / f"{i // 1000:03d}" / f"photo{i:06d}{photos[i % len(photos)].suffix}"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(photos[i % len(photos)].resolve())
        out = Path(tmp) / "captions.jsonl"
        cmd = [sys.executable, "-m", "captioner.cli", "caption", str(folder), "--output", str(out), "--no-progress"]
        rate = matmul_rate()
        first_s, first_kb, done = run(cmd, out, stop_at=n // 2)
        second_s, second_kb, total = run([*cmd, "--resume"], out)
        paths = [json.loads(line)["path"] for line in out.read_text().splitlines()]
    once = len(paths) == len(set(paths)) == n
    print(f"{n} photos: killed (SIGKILL) after {done} records, {first_s:.0f} s, peak RSS {first_kb / 1024**2:.2f} GB; "
          f"resumed: the other {n - done} in {second_s:.0f} s, peak RSS {second_kb / 1024**2:.2f} GB; output "
          f"{total} records, every photo exactly once: {once}; matmul rate {rate / 1e9:.1f} GFLOP/s")
    if not once:
        raise SystemExit("the output does not hold every photo exactly once")


if __name__ == "__main__":
    main()
