"""--device: choosing where inference and feature extraction run (CUDA itself is tested in test_cuda.py)."""

import pytest
import torch

from captioner.devices import extraction_options, module_device, pick_device
from captioner.errors import CaptionerError


def test_auto_is_the_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu")
    assert pick_device(None) == torch.device("cpu")
    assert pick_device("CPU") == torch.device("cpu")


def test_auto_takes_this_process_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert pick_device("auto") == torch.device("cuda", 2)


@pytest.mark.parametrize("name, message", [
    ("cuda", "no CUDA GPU is visible"),
    ("cuda:1", "no CUDA GPU is visible"),
    ("gpu0", "not a device"),
    ("meta", "only cpu and cuda"),
])
def test_bad_device_is_a_one_line_error(monkeypatch, name, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(CaptionerError, match=message) as err:
        pick_device(name)
    assert "\n" not in str(err.value) and name in str(err.value)


def test_cli_reports_a_missing_gpu(monkeypatch, capsys, tmp_path):
    from captioner.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    photo = tmp_path / "x.jpg"
    with pytest.raises(SystemExit) as exit_:
        main(["caption", str(photo), "--device", "cuda"])
    assert exit_.value.code != 0
    err = capsys.readouterr().err.strip()
    assert "--device cuda: no CUDA GPU" in err and "Traceback" not in err


def test_extraction_options_and_module_device():
    assert extraction_options(torch.device("cpu"))["num_workers"] == 0
    gpu = extraction_options(torch.device("cuda", 0))
    assert gpu["batch_size"] > 32 and gpu["num_workers"] >= 1
    assert module_device(torch.nn.Linear(2, 2)) == torch.device("cpu")
    assert module_device(torch.nn.ReLU()) == torch.device("cpu")


def test_training_determinism_and_gpu_count_checks(monkeypatch):
    from captioner.config import load_config
    from captioner.training.train import _check_gpus, _determinism

    cfg = load_config("synth_soft")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _determinism(cfg) is True  # exact on the CPU (resumed runs repeat themselves bit for bit)
    assert _determinism(load_config("synth_soft", ["train.deterministic=false"])) is False
    _check_gpus(load_config("synth_soft", ["train.devices=4"]))  # CPU processes: any number
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert _determinism(cfg) == "warn"  # some CUDA kernels have no deterministic version
    assert _determinism(load_config("synth_soft", ["train.accelerator=cpu"])) is True
    _check_gpus(cfg)
    with pytest.raises(CaptionerError, match="2 training processes per machine but 1 GPU"):
        _check_gpus(load_config("synth_soft", ["train.devices=2"]))
    _check_gpus(load_config("synth_soft", ["train.devices=2", "train.accelerator=cpu"]))
