"""The encoder contract shared by every image encoder, and the helpers the builders use.

An :class:`Encoder` turns a batch of images into

* a global vector per image (``[B, global_dim]``), the input of Show-and-Tell, and
* a spatial grid of feature vectors (``[B, grid_size * grid_size, grid_dim]``, positions in row-major
  order), the annotation vectors Show-Attend-Tell attends over.

The grid is the backbone's natural feature map, adaptive-average-pooled down to ``grid_size`` when that is
smaller. Pooling *up* is refused: spreading an 8x8 map over 14x14 cells adds no resolution.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captioner.errors import CaptionerError, file_error

if TYPE_CHECKING:
    from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF_MEAN = (0.5, 0.5, 0.5)
HALF_STD = (0.5, 0.5, 0.5)

NET_PREFIX = "net."  # every encoder keeps its backbone in ``self.net``


class Encoder(nn.Module):
    """Base class: a CNN backbone (``self.net``) that yields a global vector and a spatial grid.

    Subclasses implement :meth:`feature_map`; they may override :meth:`global_vector`.
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        name: str,
        input_size: int,
        natural_grid: int,
        grid_size: int | None,
        grid_dim: int,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        weights: str = "none",
        layer: str | None = None,
        source_keys: Iterable[str] = (),
    ) -> None:
        """``natural_grid`` is the side of the backbone's map at ``input_size``; ``source_keys`` are the
        state_dict keys of the full network the backbone was cut from (weights files may carry them)."""
        super().__init__()
        self.net = net
        self.name = name
        self.weights = weights
        self.layer = layer
        self.input_size = input_size
        self.natural_grid = natural_grid
        self.grid_size = check_grid_size(name, input_size, natural_grid, grid_size)
        self.grid_dim = grid_dim
        self.global_dim = grid_dim  # the map averaged over positions; TinyEncoder overrides
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.mirror = False  # True: images flipped left-right first (decode.flip's, train.flip's second view)
        own_keys = set(self.state_dict())
        self.ignorable_keys = {NET_PREFIX + k for k in source_keys} - own_keys

    # -- the forward pass --------------------------------------------------------------------------

    def feature_map(self, images: Tensor) -> Tensor:
        """The backbone's natural map: ``[B, 3, S, S] -> [B, grid_dim, n, n]``."""
        raise NotImplementedError

    def global_vector(self, fmap: Tensor, grid: Tensor) -> Tensor:
        """Default: the average of the natural map over all positions (what the ImageNet head sees)."""
        return fmap.mean(dim=(2, 3))  # [B, C]

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``[B, 3, S, S] -> (global [B, global_dim], grid [B, grid_size**2, grid_dim])``."""
        if images.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(f"{self.name} expects {self.input_size}px images, got {tuple(images.shape)}")
        if self.mirror:
            images = images.flip(-1)  # [B, 3, S, S], left-right
        images = images.contiguous(memory_format=torch.channels_last)
        fmap = self.feature_map(images)  # [B, C, n, n]
        pooled = fmap
        if fmap.shape[-1] != self.grid_size:
            pooled = F.adaptive_avg_pool2d(fmap, self.grid_size)  # [B, C, g, g]
        grid = pooled.flatten(2).transpose(1, 2)  # [B, g*g, C]
        return self.global_vector(fmap, grid), grid

    # -- images, metadata, training mode --------------------------------------------------------------

    def preprocess(self, img: Image.Image) -> Tensor:
        """A PIL image -> ``[3, S, S]`` tensor, resized and normalised the way this encoder expects."""
        from captioner.data.images import image_to_tensor

        return image_to_tensor(img, self.input_size, self.mean, self.std)

    def describe(self) -> dict:
        """JSON-ready identity of the features this encoder produces (stored as feature-cache metadata)."""
        return {
            "name": self.name,
            "weights": self.weights,
            "layer": self.layer,
            "input_size": self.input_size,
            "grid_size": self.grid_size,
            "global_dim": self.global_dim,
            "grid_dim": self.grid_dim,
            "mean": list(self.mean),
            "std": list(self.std),
        } | ({"mirror": True} if self.mirror else {})

    def freeze(self) -> Encoder:
        """Eval mode (batch-norm statistics fixed) and no gradients: a fixed feature extractor."""
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    def blocks(self) -> list[nn.Module]:
        """The backbone's stages in order, input to output (e.g. ResNet's bottlenecks, MobileNet's features[i],
        EfficientNet's MBConv blocks), for fine-tuning only the last few."""
        module = self.net
        while True:
            kids = [c for c in module.children() if any(True for _ in c.parameters())]
            if len(kids) != 1:
                break
            module = kids[0]  # a wrapper around one stack (net.features): look inside
        flat: list[nn.Module] = []
        for kid in kids:  # containers one level down are opened (ResNet's layer1..4, EfficientNet's _blocks)
            inner = [c for c in kid.children() if any(True for _ in c.parameters())]
            plain_stack = type(kid) in (nn.Sequential, nn.ModuleList)  # not a layer that subclasses one
            flat += inner if plain_stack and inner else [kid]
        return flat

    def unfreeze_last(self, n: int | None) -> Encoder:
        """Train the last ``n`` blocks (all of the encoder when ``n`` is None); the others stay frozen, with
        their batch-norm statistics fixed (kept in eval mode even when the model trains)."""
        blocks = self.blocks()
        n = len(blocks) if n is None else max(0, min(n, len(blocks)))
        for p in self.parameters():
            p.requires_grad_(False)
        for block in blocks[len(blocks) - n :]:
            for p in block.parameters():
                p.requires_grad_(True)
        self._frozen_blocks = blocks[: len(blocks) - n]
        return self

    def train(self, mode: bool = True) -> Encoder:
        super().train(mode)
        for block in getattr(self, "_frozen_blocks", []):
            block.eval()
        return self

    # -- local weights files ----------------------------------------------------------------------------

    def load_weights_file(self, path: str | Path) -> Encoder:
        """Load a local state_dict (``.pth``/``.pt``) into the backbone; ``weights`` becomes its sha1-12.

        The file may hold the backbone's own keys (e.g. torchvision's ImageNet file, classifier included)
        or an Encoder's ``state_dict()`` (keys prefixed with ``net.``). Every weight the encoder uses must be
        there; extra weights of parts it drops (the classifier head, later layers) are ignored.
        """
        path = Path(path)
        state = read_state_dict(path)
        if not any(k.startswith(NET_PREFIX) for k in state):
            state = {NET_PREFIX + k: v for k, v in state.items()}
        try:
            result = self.load_state_dict(state, strict=False)
        except RuntimeError as e:  # same keys, wrong shapes
            raise file_error(path, f"does not match the {self.name} architecture: {_size_mismatch(e)}") from e
        unexpected = [k for k in result.unexpected_keys if k not in self.ignorable_keys]
        if result.missing_keys or unexpected:
            raise file_error(path, f"does not match the {self.name} architecture: "
                             f"{_key_summary(result.missing_keys, 'missing')}, {_key_summary(unexpected, 'unexpected')}")
        self.weights = file_sha1(path)
        return self


def check_grid_size(name: str, input_size: int, natural: int, grid_size: int | None) -> int:
    """The grid side to use: ``natural`` by default; smaller pools down; larger is refused."""
    if grid_size is None:
        return natural
    if grid_size < 1:
        raise CaptionerError(f"{name}: grid_size must be at least 1, got {grid_size}")
    if grid_size > natural:
        raise CaptionerError(
            f"{name} at {input_size}px gives a {natural}x{natural} feature map; a {grid_size}x{grid_size} grid "
            f"would only upsample it (no new resolution). Use a larger input_size "
            f"(about {input_size * grid_size // natural}px) or an earlier layer, or grid_size <= {natural}."
        )
    return grid_size


def strided_size(input_size: int, stride: int, round_up: bool = True) -> int:
    """Side of a map after a total ``stride`` ("same" padding rounds up; unpadded pooling rounds down)."""
    size = math.ceil(input_size / stride) if round_up else input_size // stride
    if size < 1:
        raise CaptionerError(f"input_size {input_size} is too small for a network with stride {stride}")
    return size


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """``torch.load(weights_only=True)`` with one-line errors naming the file."""
    if not path.is_file():
        raise file_error(path, "weights file not found (weights must be 'imagenet', 'none' or a .pth/.pt file)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types
        raise file_error(path, f"cannot read as a state_dict (torch.load weights_only=True): {_first_line(e)}") from e
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise file_error(path, "is not a state_dict (a dict of parameter name -> tensor)")
    return state


def file_sha1(path: Path, length: int = 12) -> str:
    """First ``length`` hex digits of the file's sha1: the weights id of a local file."""
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:length]


def state_keys(module: nn.Module) -> set[str]:
    """The state_dict keys of a module (taken before a builder cuts its head off)."""
    return set(module.state_dict())


def _key_summary(keys: list[str], what: str, shown: int = 3) -> str:
    if not keys:
        return f"0 {what} keys"
    more = f", ... ({len(keys)} in all)" if len(keys) > shown else ""
    return f"{len(keys)} {what} keys ({', '.join(keys[:shown])}{more})"


def _size_mismatch(e: RuntimeError) -> str:
    """The first 'size mismatch for <key>: ...' line of a load_state_dict error."""
    lines = [line.strip() for line in str(e).splitlines()]
    return next((line for line in lines if line.startswith("size mismatch")), _first_line(e))


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def reject_layer(name: str, layer: str | None) -> None:
    """For encoders that offer no earlier feature map: a ``layer`` is a one-line error."""
    if layer is not None:
        raise CaptionerError(f"{name} has no layer option (got {layer!r}); use grid_size/input_size instead")
