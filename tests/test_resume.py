"""A resumed training run continues from its last checkpoint and keeps the logs of the epochs before it."""

import csv
import signal
import subprocess
import sys
import time

import torch

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


def test_last_checkpoint_is_the_last_epoch_even_when_it_did_not_improve(tmp_path):
    """With lr 0 no epoch beats the first, so best.ckpt stays at epoch 0; last.ckpt must still be the last
    epoch, or --resume would repeat every epoch since the best one."""
    data = make_synth(tmp_path / "synth", n_train=40, n_val=8, n_test=2, size=32)
    run = tmp_path / "run"
    sets = ["train.batch_size=16", "model.embed_dim=16", "model.hidden_dim=16", "model.attention_dim=8",
            "train.max_epochs=3", "train.early_stop_patience=10", "train.lr=0"]
    train(load_config("synth_soft", sets), data, run, tmp_path / "cache", progress=False)
    ckpts = run / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["best.ckpt", "last.ckpt"]
    assert torch.load(ckpts / "best.ckpt", weights_only=True)["epoch"] == 0
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["epoch"] == 2


def test_a_moved_run_resumes_with_its_best_epoch_kept(tmp_path):
    """A run folder moved (or copied) before --resume keeps its best score: with lr 0 no later epoch beats the
    first, so best.ckpt must stay at epoch 0 (Lightning alone forgets the score when the folder changed, and
    the first epoch after resuming would replace the best one)."""
    import shutil

    data = make_synth(tmp_path / "synth", n_train=40, n_val=8, n_test=2, size=32)
    sets = ["train.batch_size=16", "model.embed_dim=16", "model.hidden_dim=16", "model.attention_dim=8",
            "train.early_stop_patience=10", "train.lr=0"]
    train(load_config("synth_soft", sets + ["train.max_epochs=1"]), data, tmp_path / "run", tmp_path / "cache",
          progress=False)
    shutil.move(tmp_path / "run", tmp_path / "moved")
    train(load_config("synth_soft", sets + ["train.max_epochs=3"]), data, tmp_path / "moved", tmp_path / "cache",
          resume=True, progress=False)
    ckpts = tmp_path / "moved" / "checkpoints"
    # the callbacks' state is filed under ModelCheckpoint's key, as in checkpoints written before RunCheckpoint
    assert all(k.startswith(("ModelCheckpoint{", "EarlyStopping{", "LearningRateMonitor"))
               for k in torch.load(ckpts / "last.ckpt", weights_only=True)["callbacks"])
    assert torch.load(ckpts / "best.ckpt", weights_only=True)["epoch"] == 0
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["epoch"] == 2


def _train_cmd(data, run, cache, sets, resume=False):
    cmd = [sys.executable, "-m", "captioner.cli", "train", "--config", "synth_hard", "--data", str(data),
           "--out", str(run), "--cache", str(cache), "--no-progress"]
    for s in sets:
        cmd += ["--set", s]
    return cmd + (["--resume"] if resume else [])


def test_a_run_killed_with_sigkill_resumes_to_the_same_model(tmp_path):
    """Kill a real training process (SIGKILL, no clean-up) after its first checkpoint; `--resume` must end
    with exactly the weights and best score of a run that was never interrupted. Hard attention: dropout
    and location sampling both draw random numbers."""
    data = make_synth(tmp_path / "synth", n_train=150, n_val=12, n_test=2, size=32)
    sets = ["train.batch_size=16", "model.embed_dim=16", "model.hidden_dim=16", "model.attention_dim=8",
            "train.max_epochs=5", "train.early_stop_patience=10", "model.dropout=0.3"]
    cache = tmp_path / "cache"
    subprocess.run(_train_cmd(data, tmp_path / "whole", cache, sets), check=True, capture_output=True, timeout=600)

    run = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(data, run, cache, sets), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (run / "checkpoints" / "last.ckpt").exists():
        assert proc.poll() is None and time.time() < deadline, "training ended before its first checkpoint"
        time.sleep(0.05)
    time.sleep(0.2)  # into the next epoch (or still writing the checkpoint)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL and not (run / "model.pt").exists()
    subprocess.run(_train_cmd(data, run, cache, sets, resume=True), check=True, capture_output=True, timeout=600)

    whole = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)
    resumed = torch.load(run / "model.pt", weights_only=True)
    assert resumed["metrics"] == whole["metrics"]
    differ = [name for name, tensor in whole["state_dict"].items() if not torch.equal(resumed["state_dict"][name], tensor)]
    assert not differ, differ


def test_checkpoint_writes_are_atomic(tmp_path):
    """A checkpoint write that fails half-way leaves the previous checkpoint as it was, and no stray file."""
    import pytest

    from captioner.training.train import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)
    before = path.read_bytes()
    with pytest.raises(Exception):  # noqa: B017  (pickling a lambda fails after some bytes are written)
        io.save_checkpoint({"epoch": 2, "w": torch.zeros(1000), "bad": lambda: 0}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    assert torch.load(path, weights_only=True)["epoch"] == 1


def test_resume_with_another_config_is_refused(tmp_path):
    import pytest

    from captioner.errors import CaptionerError

    data = make_synth(tmp_path / "synth", n_train=20, n_val=4, n_test=2, size=32)
    quick = ["train.batch_size=16", "model.embed_dim=16", "model.hidden_dim=16", "model.attention_dim=8",
             "train.max_epochs=1"]
    train(load_config("synth_soft", quick), data, tmp_path / "run", tmp_path / "cache", progress=False)
    with pytest.raises(CaptionerError, match="config.yaml: the run was started with a different config"):
        train(load_config("synth_soft", [*quick, "model.hidden_dim=32"]), data, tmp_path / "run",
              tmp_path / "cache", resume=True, progress=False)
    with pytest.raises(CaptionerError, match="holds a previous run; pass --resume"):
        train(load_config("synth_soft", quick), data, tmp_path / "run", tmp_path / "cache", progress=False)


def test_a_run_saved_before_a_default_changed_keeps_the_old_value(tmp_path):
    """Hard attention's REINFORCE reward became per-word by default; a run whose config.yaml predates the setting
    was trained with the whole-caption reward, so resuming it with today's defaults is refused, and resuming it
    with the old value is allowed."""
    import pytest
    import yaml

    from captioner.config import Config
    from captioner.data.vocab import Vocab
    from captioner.errors import CaptionerError
    from captioner.training.train import _prepare_run

    assert Config.from_dict({"model": {"type": "hard"}}).model.reinforce_reward == "word"  # today's default
    assert Config.from_saved({"model": {"type": "hard"}}).model.reinforce_reward == "caption"  # saved before it
    assert Config.from_saved({"model": {"type": "hard", "reinforce_reward": "word"}}).model.reinforce_reward == "word"

    cfg = load_config("synth_hard")
    old = cfg.to_dict()
    del old["model"]["reinforce_reward"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    Vocab.build([["a", "dog"]]).save(tmp_path / "vocab.json")
    with pytest.raises(CaptionerError, match="started with a different config"):
        _prepare_run(cfg, tmp_path, True, [])
    _prepare_run(load_config("synth_hard", ["model.reinforce_reward=caption"]), tmp_path, True, [])
