"""An encoder exported to ONNX and run by ONNX Runtime: the same features, several times faster on a CPU
(EfficientNet's depthwise convolutions are where PyTorch's CPU kernels are slowest).

    export_onnx(encoder, "encoder.onnx")        # once: the network, batch size free, input size fixed
    encoder = OnnxEncoder("encoder.onnx", encoder.describe())
    global_, grid = encoder(images)             # [B, 3, S, S] -> [B, D], [B, g*g, C], as Encoder.forward

ONNX Runtime is optional (``pip install 'captioner[onnx]'``); :func:`onnx_available` says whether it is there.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from captioner.errors import file_error
from captioner.io import file_sha256

MANIFEST = "manifest.json"


def onnx_available() -> bool:
    """Whether ONNX Runtime can be imported here."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def export_onnx(encoder, path: str | Path) -> Path:
    """Write ``encoder`` (a :class:`~captioner.encoders.base.Encoder`, its weights frozen) as an ONNX model with
    a free batch size, atomically; a ``manifest.json`` beside it holds its SHA-256 and its preprocessing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    encoder = encoder.freeze().cpu()
    size = encoder.input_size
    example = torch.randn(2, 3, size, size)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(encoder, (example,), dynamo=True, input_names=["images"],
                                        output_names=["global", "grid"], verbose=False,
                                        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},))
        program.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    manifest = {"encoder.onnx": {"file": path.name, "sha256": file_sha256(path)},
                "preprocessing": {"input_size": size, "mean": list(encoder.mean), "std": list(encoder.std),
                                  "resize": "bilinear to input_size x input_size, RGB, (x / 255 - mean) / std"},
                "encoder": encoder.describe()}
    _write_json_atomic(path.parent / MANIFEST, manifest)
    return path


class OnnxEncoder:
    """An exported encoder run by ONNX Runtime, with what the captioning path needs of an encoder:
    ``preprocess(img)``, ``(global, grid) = encoder(images)``, ``describe()``, ``input_size``, ``mirror``."""

    def __init__(self, path: str | Path, description: dict, threads: int | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        self.description = dict(description)
        self.input_size = int(description["input_size"])
        self.mean, self.std = tuple(description["mean"]), tuple(description["std"])
        self.mirror = False
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or torch.get_num_threads()
        try:
            self.runtime = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for a missing or corrupt file
            raise file_error(self.path, f"not a readable ONNX model ({str(e).splitlines()[0][:160]})") from None

    def preprocess(self, img: Image.Image) -> Tensor:
        from captioner.data.images import image_to_tensor

        return image_to_tensor(img, self.input_size, self.mean, self.std)

    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``[B, 3, S, S] -> (global [B, D], grid [B, g*g, C])``, float32 on the CPU."""
        if self.mirror:
            images = images.flip(-1)
        batch = np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)
        global_, grid = self.runtime.run(["global", "grid"], {"images": batch})
        return torch.from_numpy(global_), torch.from_numpy(grid)

    def describe(self) -> dict:
        return dict(self.description)

    def freeze(self) -> OnnxEncoder:
        return self

    def parameters(self):  # no torch parameters: it runs on the CPU (see devices.module_device)
        return iter(())


def check_export(folder: str | Path) -> tuple[Path, dict]:
    """The encoder.onnx of an export folder, once its SHA-256 matches the manifest's (a one-line error if not),
    and the description of the encoder it holds (as ``Encoder.describe()`` gave it when exported)."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        entry, description = manifest["encoder.onnx"], dict(manifest["encoder"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        raise file_error(folder / MANIFEST, "missing or not an export manifest; export again") from None
    path = folder / entry["file"]
    if not path.is_file() or file_sha256(path) != entry["sha256"]:
        raise file_error(path, "missing or not the exported file its manifest names; export again")
    return path, description


def _write_json_atomic(path: Path, obj: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
