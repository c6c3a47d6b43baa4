"""What every benchmark reports next to its speed: this machine's fp32 matmul rate (measured in the same
run), FLOPs counted from the shapes, and peak memory."""

import resource
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode


def matmul_rate(n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a plain n x n fp32 matrix product on this machine, now."""
    x, y = torch.randn(n, n), torch.randn(n, n)
    x @ y  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        x @ y
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of the matrix products and convolutions ``fn`` runs, counted by torch from their shapes."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def logged_epoch_seconds(run: Path) -> float | None:
    """A training run's last epoch wall time as it logged it (``time/epoch_s`` in logs/metrics.csv), if it did."""
    for path in (run / "logs").glob("**/metrics.csv"):
        head, *rows = path.read_text().splitlines()
        if "time/epoch_s" not in head.split(","):
            continue
        column = head.split(",").index("time/epoch_s")
        values = [row.split(",")[column] for row in rows if row.split(",")[column]]
        if values:
            return float(values[-1])
    return None
