"""`captioner serve` under load on loopback: many caption requests, some at once; latency, errors, memory.

    python benchmarks/load_server.py            # 3 rounds of 200 uploads, 8 at a time, shipped model, beam 5
    python benchmarks/load_server.py --quick    # 1 round of 16 uploads, 4 at a time

Each request uploads one of the sample photos (multipart POST /api/caption). Reports per round: responses
by status class, p50/p95/max latency, requests per second, and the server process's resident memory after
the round (VmRSS) and at its peak (VmHWM), so growth across rounds shows up.
"""

import argparse
import asyncio
import statistics
import time
from pathlib import Path

import httpx
from common import matmul_rate

from captioner.serve.browser import running_server

SAMPLES = Path(__file__).resolve().parents[1] / "src" / "captioner" / "samples"


def memory_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident memory of a process, from /proc (Linux)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


async def one_round(url: str, photos: list[tuple[str, bytes]], n: int, concurrency: int, beam: int):
    latencies, statuses = [], []
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=600) as client:
        async def request(i: int) -> None:
            name, data = photos[i % len(photos)]
            async with gate:
                start = time.perf_counter()
                r = await client.post(f"{url}/api/caption", files={"file": (name, data, "image/jpeg")},
                                      data={"beam_size": str(beam)})
                latencies.append(time.perf_counter() - start)
                statuses.append(r.status_code)

        start = time.perf_counter()
        await asyncio.gather(*(request(i) for i in range(n)))
        wall = time.perf_counter() - start
    return latencies, statuses, wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--beam-size", type=int, default=5)
    p.add_argument("--model", action="append", default=[], help="model file(s) for the server (default: shipped)")
    p.add_argument("--backend", default="auto", help="the server's --backend (auto, torch or onnx)")
    args = p.parse_args()
    if args.quick:
        args.requests, args.concurrency, args.rounds = 16, 4, 1
    photos = [(f.name, f.read_bytes()) for f in sorted(SAMPLES.glob("*.jpg"))]
    print(f"machine now: fp32 matmul {matmul_rate() / 1e9:.0f} GFLOP/s")
    print(f"{args.requests} uploads per round ({len(photos)} sample photos in turn), {args.concurrency} at a time, "
          f"beam {args.beam_size}, {args.rounds} rounds")
    print(f"server --backend {args.backend}")
    with running_server(args.model, extra_args=("--backend", args.backend)) as url:
        rss0, _ = memory_mb(url.pid)
        asyncio.run(one_round(url, photos, 1, 1, args.beam_size))  # loads the model: not part of any round
        rss1, _ = memory_mb(url.pid)
        print(f"server pid {url.pid}: {rss0:.0f} MB resident after start, {rss1:.0f} MB with the model loaded")
        bad = 0
        for r in range(1, args.rounds + 1):
            lat, statuses, wall = asyncio.run(one_round(url, photos, args.requests, args.concurrency, args.beam_size))
            rss, peak = memory_mb(url.pid)
            classes = {f"{c}xx": sum(s // 100 == c for s in statuses) for c in (2, 4, 5)}
            bad += classes["5xx"]
            q = statistics.quantiles(lat, n=20, method="inclusive")
            print(f"round {r}: {classes}, latency p50 {statistics.median(lat):.2f} s, p95 {q[18]:.2f} s, "
                  f"max {max(lat):.2f} s, {len(lat) / wall:.2f} req/s; server memory {rss:.0f} MB "
                  f"(peak {peak:.0f} MB)")
    if bad:
        raise SystemExit(f"{bad} responses were 5xx")


if __name__ == "__main__":
    main()
