"""Image encoders: one registry, one entry point.

>>> encoder = create_encoder("efficientnet_lite0")            # ImageNet weights, 224 px, 7x7 grid
>>> encoder = create_encoder("resnet101", weights="resnet101-cd907fc2.pth", input_size=448)  # 14x14
>>> global_vec, grid = encoder(images)   # [B, global_dim], [B, grid_size**2, grid_dim]

``weights`` is ``"imagenet"``, ``"none"`` (random; deterministic for ``tiny``) or the path of a local
state_dict file; ``encoder.weights`` is then the file's sha1-12, so feature caches tell files apart.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import torch

from captioner.encoders.base import Encoder
from captioner.errors import CaptionerError

__all__ = ["Encoder", "create_encoder", "list_encoders"]

Builder = Callable[..., Encoder]  # (weights, input_size, grid_size, layer) -> Encoder

# name -> module holding its builder (a function of the same name). Modules are imported when an encoder of
# theirs is built: torchvision alone takes most of a second to import, and the EfficientNet-Lite encoders
# do not need it.
_REGISTRY: dict[str, str] = {
    "efficientnet_lite0": "efficientnet_lite",
    "efficientnet_lite1": "efficientnet_lite",
    "efficientnet_lite2": "efficientnet_lite",
    "mobilenet_v2": "torchvision_cnns",
    "resnet101": "torchvision_cnns",
    "vgg19": "torchvision_cnns",
    "tiny": "tiny",
}


def _builder(name: str) -> Builder:
    return getattr(importlib.import_module(f"captioner.encoders.{_REGISTRY[name]}"), name)


def list_encoders() -> list[str]:
    """Names ``create_encoder`` accepts."""
    return sorted(_REGISTRY)


def create_encoder(name: str, weights: str | Path = "imagenet", input_size: int | None = None,
                   grid_size: int | None = None, layer: str | None = None) -> Encoder:
    """Build encoder ``name`` with ``weights`` ("imagenet", "none" or a local file), in channels_last.

    ``input_size``/``grid_size`` default to the encoder's own (224/7 for most); ``layer`` picks an earlier
    feature map where the encoder offers one (``mobilenet_v2``: ``"features14"``).
    """
    if name not in _REGISTRY:
        raise CaptionerError(f"unknown encoder {name!r}; known encoders: {', '.join(list_encoders())}")
    if input_size is not None and input_size < 1:
        raise CaptionerError(f"{name}: input_size must be a positive number of pixels, got {input_size}")
    is_file = str(weights) not in ("imagenet", "none")
    encoder = _builder(name)(weights="none" if is_file else str(weights), input_size=input_size,
                              grid_size=grid_size, layer=layer)
    if is_file:
        encoder.load_weights_file(weights)
    return encoder.to(memory_format=torch.channels_last)
