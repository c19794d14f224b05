"""Image features for the machine measures (analysis/realism.py), from weights read from local files.

The chest-radiograph extractor is torchxrayvision's DenseNet-121 (the features behind the
"XRV-FID" of radiograph papers), written out here layer for layer under the same names, so
that its published weights load without torchxrayvision or torchvision installed, and never
from the network. Its weights files are whole pickled models; they are unpickled with a
restricted unpickler that admits torch's own classes and maps torchxrayvision's to
placeholders (only their tensors are kept), so a weights file cannot run code.

Features of a 2-D image in [0, 1]: cropped to its centre square, resized to 224 px
(bilinear with antialiasing, as torchxrayvision resizes), scaled to [-1024, 1024], then the
network's last feature maps after ReLU, averaged over space: 1024 numbers.
"""

from __future__ import annotations

import hashlib
import io
import pickle
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

XRV_RESOLUTION = 224


class WeightsMissing(Exception):
    """No weights file where the settings say: the measure is skipped and says so, never faked."""


class WeightsRefused(Exception):
    """A weights file that is not what it should be: named in the error, nothing loaded."""


# ---- torchxrayvision's DenseNet-121, under its own module names ------------------------------


class _DenseLayer(nn.Sequential):
    def __init__(self, num_input_features, growth_rate, bn_size):
        super().__init__()
        self.add_module("norm1", nn.BatchNorm2d(num_input_features))
        self.add_module("relu1", nn.ReLU(inplace=True))
        self.add_module("conv1", nn.Conv2d(num_input_features, bn_size * growth_rate, 1, bias=False))
        self.add_module("norm2", nn.BatchNorm2d(bn_size * growth_rate))
        self.add_module("relu2", nn.ReLU(inplace=True))
        self.add_module("conv2", nn.Conv2d(bn_size * growth_rate, growth_rate, 3, padding=1, bias=False))

    def forward(self, x):
        return torch.cat([x, super().forward(x)], 1)


class _DenseBlock(nn.Sequential):
    def __init__(self, num_layers, num_input_features, bn_size, growth_rate):
        super().__init__()
        for i in range(num_layers):
            layer = _DenseLayer(num_input_features + i * growth_rate, growth_rate, bn_size)
            self.add_module(f"denselayer{i + 1}", layer)


class _Transition(nn.Sequential):
    def __init__(self, num_input_features, num_output_features):
        super().__init__()
        self.add_module("norm", nn.BatchNorm2d(num_input_features))
        self.add_module("relu", nn.ReLU(inplace=True))
        self.add_module("conv", nn.Conv2d(num_input_features, num_output_features, 1, bias=False))
        self.add_module("pool", nn.AvgPool2d(kernel_size=2, stride=2))


class XRVDenseNet(nn.Module):
    """DenseNet-121 with one input channel, as torchxrayvision.models.DenseNet builds it."""

    def __init__(self, growth_rate=32, block_config=(6, 12, 24, 16), init_features=64, bn_size=4, classes=18):
        super().__init__()
        self.features = nn.Sequential(
            OrderedDict(
                [
                    ("conv0", nn.Conv2d(1, init_features, 7, stride=2, padding=3, bias=False)),
                    ("norm0", nn.BatchNorm2d(init_features)),
                    ("relu0", nn.ReLU(inplace=True)),
                    ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
                ]
            )
        )
        width = init_features
        for i, layers in enumerate(block_config):
            self.features.add_module(f"denseblock{i + 1}", _DenseBlock(layers, width, bn_size, growth_rate))
            width += layers * growth_rate
            if i != len(block_config) - 1:
                self.features.add_module(f"transition{i + 1}", _Transition(width, width // 2))
                width //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(width))
        self.classifier = nn.Linear(width, classes)
        self.width = width

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """torchxrayvision's `features2`: the last feature maps after ReLU, averaged over space."""
        return F.adaptive_avg_pool2d(F.relu(self.features(x)), 1).flatten(1)


# ---- Loading weights without running code -----------------------------------------------------

# What a torch.save'd model may name, besides the layers of torch.nn and torchxrayvision's classes.
_ALLOWED = {
    ("collections", "OrderedDict"),
    ("torch", "Size"),
    ("torch", "device"),
    ("torch.nn.parameter", "Parameter"),
}


class _Placeholder(nn.Module):
    """Stands in for a class of torchxrayvision's while a pickled model is read: its tensors are
    all that is kept, so its code is never needed."""

    def forward(self, *args):  # pragma: no cover - never run
        raise RuntimeError("A placeholder of an unpickled model is not run.")


class _RestrictedUnpickler(pickle.Unpickler):
    """Tensors, dtypes, torch.nn's layers and torchxrayvision's (as placeholders); nothing else."""

    def find_class(self, module, name):
        if module.split(".")[0] == "torchxrayvision":
            return _Placeholder
        allowed = (
            (module, name) in _ALLOWED
            or (module in {"builtins", "__builtin__"} and name in {"set", "frozenset"})
            or (module == "torch._utils" and name.startswith("_rebuild_"))
            or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype))
            or module.startswith("torch.nn.modules.")
        )
        if allowed:
            found = super().find_class(module, name)
            if not module.startswith("torch.nn.modules.") or (
                isinstance(found, type) and issubclass(found, nn.Module)
            ):
                return found
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a weights file")


class _restricted:  # noqa: N801 - a stand-in for the `pickle` module, as torch.load expects one
    Unpickler = _RestrictedUnpickler
    __name__ = "pickle"

    @staticmethod
    def load(file, **kwargs):
        return _RestrictedUnpickler(file, **kwargs).load()


@dataclass(frozen=True)
class Extractor:
    name: str
    model: nn.Module
    sha256: str  # of the weights file, stated beside every figure
    resolution: int


def load_xrv_densenet(path: Path | str | None) -> Extractor:
    """torchxrayvision's DenseNet-121 with the weights of a local file: one of its published
    `.pt` files (a pickled model) or a state dict saved with torch.save."""
    if not path or not Path(path).is_file():
        raise WeightsMissing(
            f"No weights file for the chest-radiograph extractor at {str(path) or '(not set)'}: "
            "the XRV measures are skipped. Put a torchxrayvision DenseNet-121 .pt file there "
            "(its published densenet121-res224-all.pt, say)."
        )
    path = Path(path)
    data = path.read_bytes()
    try:
        loaded = torch.load(
            io.BytesIO(data), map_location="cpu", pickle_module=_restricted, weights_only=False
        )
    except Exception as exc:
        raise WeightsRefused(f"{path.name} could not be read as torch weights: {exc}") from None
    state = loaded.state_dict() if isinstance(loaded, nn.Module) else loaded
    if not isinstance(state, dict):
        raise WeightsRefused(f"{path.name} holds neither a model nor a state dict.")
    state = {key: value for key, value in state.items() if key.startswith(("features.", "classifier."))}
    classes = state["classifier.weight"].shape[0] if "classifier.weight" in state else 18
    model = XRVDenseNet(classes=classes)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise WeightsRefused(f"{path.name} is not a torchxrayvision DenseNet-121: {first}") from None
    model.eval()
    return Extractor(
        name="xrv-densenet121",
        model=model,
        sha256=hashlib.sha256(data).hexdigest(),
        resolution=XRV_RESOLUTION,
    )


# ---- Features of images ------------------------------------------------------------------------


def _prepared(image: np.ndarray, resolution: int) -> torch.Tensor:
    """A 2-D image in [0, 1] as the network expects it: centre square, resized, [-1024, 1024]."""
    pixels = np.asarray(image, dtype=np.float32)
    if pixels.ndim != 2:
        raise ValueError(f"Features are of 2-D grey images, not shape {pixels.shape}.")
    height, width = pixels.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = torch.from_numpy(np.ascontiguousarray(pixels[top : top + side, left : left + side]))[None, None]
    if side != resolution:
        square = F.interpolate(square, size=(resolution, resolution), mode="bilinear", antialias=True)
    return (2 * square.clamp(0, 1) - 1) * 1024


@torch.inference_mode()
def image_features(extractor: Extractor, images, *, batch: int = 32, progress=None) -> np.ndarray:
    """The features of each image (an iterable of 2-D arrays in [0, 1]), one row each, by batches.
    `progress(done)` is called after each batch."""
    rows, pending, done = [], [], 0

    def flush():
        nonlocal done
        if pending:
            rows.append(extractor.model.embed(torch.cat(pending)).double().numpy())
            done += len(pending)
            pending.clear()
            if progress:
                progress(done)

    for image in images:
        pending.append(_prepared(image, extractor.resolution))
        if len(pending) == batch:
            flush()
    flush()
    width = getattr(extractor.model, "width", 0)
    return np.concatenate(rows) if rows else np.empty((0, width))
