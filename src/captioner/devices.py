"""Where inference and feature extraction run: ``--device auto|cpu|cuda|cuda:N``.

Training picks its device through Lightning (``train.accelerator``); everything else — feature
extraction, ``evaluate``, ``caption``, ``serve`` — goes through :func:`pick_device`.
"""

import os

import torch

from captioner.errors import CaptionerError


def pick_device(name: str | torch.device | None = "auto") -> torch.device:
    """``auto``: this process's GPU when CUDA is available (``cuda:LOCAL_RANK`` under torchrun/DDP), else
    the CPU. Asking for a GPU that is not there is a one-line error, not a CUDA traceback."""
    name = str(name or "auto").lower()
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", _local_rank() % torch.cuda.device_count())
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CaptionerError(f"--device {name}: not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CaptionerError(f"--device {name}: no CUDA GPU is visible to torch here (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CaptionerError(f"--device {name}: only {torch.cuda.device_count()} CUDA GPU(s) here")
    elif device.type != "cpu":
        raise CaptionerError(f"--device {name}: only cpu and cuda are supported")
    return device


def trains_on_gpu(cfg) -> bool:
    """Whether training with config ``cfg`` runs on a GPU (``train.accelerator`` auto, gpu or cuda, and one is
    there): feature extraction for it then runs there too."""
    return torch.cuda.is_available() and cfg.train.accelerator in ("auto", "gpu", "cuda")


def _local_rank() -> int:
    """This process's index on its machine: torchrun's LOCAL_RANK, SLURM's SLURM_LOCALID, else 0."""
    return int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", 0)))


def extraction_options(device: torch.device) -> dict:
    """Feature-extraction settings for a device: on a GPU, bigger batches and images decoded in worker
    processes (decoding JPEGs in the main process would leave the GPU idle); on the CPU the encoder is the
    bottleneck and extra processes only compete with it for cores."""
    if device.type == "cuda":
        return {"device": device, "batch_size": 128, "num_workers": min(8, os.cpu_count() or 1)}
    return {"device": device, "batch_size": 32, "num_workers": 0}


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's parameters (the CPU for a module without any)."""
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")
