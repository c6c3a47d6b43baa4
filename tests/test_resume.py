"""A resumed training run continues from its last checkpoint and keeps the logs of the epochs before it."""

import csv

from captioner.config import load_config
from captioner.data.synth import make_synth
from captioner.training.train import train


def _epochs(path):
    with path.open() as f:
        return {int(r["epoch"]) for r in csv.DictReader(f) if r.get("epoch") and r.get("val/bleu4")}


def test_resume_continues_and_keeps_earlier_logs(tmp_path):
    data = make_synth(tmp_path / "synth", n_train=40, n_val=8, n_test=2, size=32)
    run = tmp_path / "run"
    quick = ["train.batch_size=16", "model.embed_dim=16", "model.hidden_dim=16", "model.attention_dim=8"]
    train(load_config("synth_soft", quick + ["train.max_epochs=1"]), data, run, tmp_path / "cache", progress=False)
    first = (run / "logs" / "metrics.csv").read_text()
    train(load_config("synth_soft", quick + ["train.max_epochs=2"]), data, run, tmp_path / "cache",
          resume=True, progress=False)
    assert (run / "logs" / "metrics.csv").read_text() == first  # epoch 1's log is untouched
    assert _epochs(run / "logs" / "metrics.csv") == {0}
    assert _epochs(run / "logs" / "resume1" / "metrics.csv") == {1}  # the resumed run went on to epoch 2
    assert (run / "model.pt").exists()
