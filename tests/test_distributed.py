"""Multi-process training (Lightning DDP over gloo, 2 CPU processes started by torchrun): the processes
share the feature extraction, stay in sync, and end where single-process training ends."""

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from captioner.config import load_config
from captioner.data.synth import make_synth
from captioner.serve.browser import free_port
from captioner.training.train import train

pytestmark = pytest.mark.slow
SETS = ["train.batch_size=32", "model.embed_dim=16", "model.hidden_dim=16", "model.attention_dim=8",
        "train.max_epochs=2", "model.dropout=0.0", "train.accelerator=cpu"]  # gloo DDP, on any machine


def _cache_arrays(root: Path) -> dict:
    [folder] = (root / "features").iterdir()
    return {name: np.load(folder / f"{name}.npy") for name in ("grid", "global", "done")}


def test_two_processes_share_extraction_stay_in_sync_and_match_one_process(tmp_path):
    data = make_synth(tmp_path / "synth", n_train=120, n_val=16, n_test=2, size=32)
    single = train(load_config("synth_soft", SETS), data, tmp_path / "single", tmp_path / "cache1", progress=False)

    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    cmd = [torchrun, "--nproc-per-node", "2", "--master-port", str(free_port()), "-m", "captioner.cli", "train",
           "--config", "synth_soft", "--data", str(data), "--out", str(tmp_path / "ddp"),
           "--cache", str(tmp_path / "cache2"), "--no-progress"]
    for s in SETS:
        cmd += ["--set", s]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]

    # the two processes each extracted part of the images: the cache is the one a single process makes
    one, two = _cache_arrays(tmp_path / "cache1"), _cache_arrays(tmp_path / "cache2")
    assert two["done"].all()
    for name in ("grid", "global"):
        np.testing.assert_array_equal(one[name], two[name])

    with (tmp_path / "ddp" / "logs" / "metrics.csv").open() as f:
        gaps = [float(r["train/process_weight_gap"]) for r in csv.DictReader(f) if r.get("train/process_weight_gap")]
    assert gaps == [0.0, 0.0]  # after each epoch both processes held exactly the same weights

    # each process takes half of every batch, so the steps are the single process's steps; only the
    # averaging differs (mean of two half-batch means vs one mean), which moves weights by a little
    a = torch.load(single, weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "ddp" / "model.pt", weights_only=True)["state_dict"]
    scale = max(float(t.abs().max()) for t in a.values())
    gap = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert gap < 0.01 * scale, (gap, scale)
