"""A tiny CNN for tests and the synthetic scenes: three stride-2 convolutions, no pretraining.

At 64 px it yields an 8x8 map of 128 channels, pooled to a 4x4 grid; each grid vector gets two more
values, the (x, y) centre of its cell in [-1, 1] (a fixed position code, as in CoordConv), so that an
attention model knows *where* it looks: the synthetic captions say where things are ("a red circle above
a blue square"). Its *global* vector is that grid flattened (``16 * 130`` values, position-major), not its
average, for the same reason.

``weights="none"`` is deterministic: the weights come from a fixed-seed ``torch.Generator``, whatever the
global random state (and building the encoder leaves that state untouched).
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn

from captioner.encoders.base import HALF_MEAN, HALF_STD, Encoder, reject_layer, strided_size
from captioner.errors import CaptionerError

CHANNELS = (3, 32, 64, 128)
POSITION_DIMS = 2  # (x, y) of each grid cell
SEED = 1234


class TinyEncoder(Encoder):
    """Three conv + ReLU layers, stride 8 in all; global vector = the flattened grid."""

    def __init__(self, net: nn.Module, *, input_size: int, grid_size: int | None) -> None:
        super().__init__(net, name="tiny", input_size=input_size, natural_grid=strided_size(input_size, 8),
                         grid_size=grid_size, grid_dim=CHANNELS[-1], mean=HALF_MEAN, std=HALF_STD)
        self.grid_dim = CHANNELS[-1] + POSITION_DIMS
        self.global_dim = self.grid_size * self.grid_size * self.grid_dim

    def feature_map(self, images: Tensor) -> Tensor:
        return self.net(images)  # [B, 128, S/8, S/8]

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        global_, grid = super().forward(images)  # grid: [B, g*g, 128]
        grid = torch.cat([grid, _cell_positions(self.grid_size, grid).expand(grid.size(0), -1, -1)], dim=2)
        return grid.flatten(1), grid  # [B, g*g*130], [B, g*g, 130]



def _cell_positions(g: int, like: Tensor) -> Tensor:
    """[1, g*g, 2]: the (x, y) centre of every grid cell, row-major, in [-1, 1]."""
    centres = (torch.arange(g, dtype=like.dtype, device=like.device) + 0.5) / g * 2 - 1  # [g]
    y, x = torch.meshgrid(centres, centres, indexing="ij")
    return torch.stack([x, y], dim=2).view(1, g * g, 2)


def tiny(weights: str = "none", input_size: int | None = None, grid_size: int | None = None,
         layer: str | None = None) -> Encoder:
    """The tiny CNN (default 64 px, 4x4 grid); it has no ImageNet weights."""
    reject_layer("tiny", layer)
    if weights == "imagenet":
        raise CaptionerError("tiny has no ImageNet weights; use weights='none' or a local file")
    size = input_size or 64
    return TinyEncoder(_tiny_net(), input_size=size, grid_size=grid_size or min(4, strided_size(size, 8)))


def _tiny_net() -> nn.Sequential:
    layers: list[nn.Module] = []
    for c_in, c_out in itertools.pairwise(CHANNELS):
        layers += [nn.Conv2d(c_in, c_out, kernel_size=3, stride=2, padding=1, device="meta"), nn.ReLU()]
    net = nn.Sequential(*layers).to_empty(device="cpu")
    _seeded_init(net)
    return net


def _seeded_init(net: nn.Module) -> None:
    """Kaiming-uniform weights and zero biases from a private generator: the same net on every call."""
    generator = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, nonlinearity="relu", generator=generator)
                nn.init.zeros_(m.bias)
