"""Every benchmark runs in its --quick mode (in `make test`), so none of them rots between measurements.

The numbers printed here mean nothing (small shapes, a busy machine); the figures in docs/performance.md come
from the full runs written next to them.
"""

import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.mark.parametrize("script", ["train_step.py", "epoch.py", "beam.py", "extract.py", "evaluate.py", "caption.py",
                                    "load_server.py", "seed_configs.py", "library.py", "scale.py",
                                    "decoders.py"])
def test_quick_mode_runs(script):
    run = subprocess.run([sys.executable, str(HERE / script), "--quick"], cwd=HERE, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "GFLOP/s" in run.stdout  # every benchmark reports the matmul rate it was measured against
