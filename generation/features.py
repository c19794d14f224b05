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

The classic FID's extractor is the Inception-v3 of the FID checkpoint
(`pt_inception-2015-12-05`, a plain state dict, loaded with `weights_only`), also written out
under its own layer names: torch-fidelity's copy, behind torchmetrics' FID, imports
torchvision, which this project's CPU torch cannot install beside it. Its features agree
with torch-fidelity's exactly (benchmarks/inception_parity.py). Its input: the centre square
at 299 px (bilinear, where torch-fidelity resizes as TensorFlow 1 did: the same at 299 px),
8-bit grey levels on three channels, (x - 128) / 128; 2048 numbers.
"""

from __future__ import annotations

import hashlib
import io
import pickle
from collections import OrderedDict
from collections.abc import Callable
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


# ---- The FID Inception-v3 (the TensorFlow graph of Heusel et al. 2017, as PyTorch ports name it) --------


class _Conv(nn.Module):
    """Convolution, batch norm (eps 0.001), ReLU: the checkpoint's BasicConv2d."""

    def __init__(self, inputs, outputs, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(inputs, outputs, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(outputs, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)), inplace=True)


def _avg_pool(x):
    # TensorFlow's average pooling leaves the padding out of the average.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class _InceptionA(nn.Module):
    def __init__(self, inputs, pool_features):
        super().__init__()
        self.branch1x1 = _Conv(inputs, 64, 1)
        self.branch5x5_1, self.branch5x5_2 = _Conv(inputs, 48, 1), _Conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _Conv(inputs, 64, 1)
        self.branch3x3dbl_2 = _Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _Conv(96, 96, 3, padding=1)
        self.branch_pool = _Conv(inputs, pool_features, 1)

    def forward(self, x):
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch5x5_2(self.branch5x5_1(x)),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                self.branch_pool(_avg_pool(x)),
            ],
            1,
        )


class _InceptionB(nn.Module):
    def __init__(self, inputs):
        super().__init__()
        self.branch3x3 = _Conv(inputs, 384, 3, stride=2)
        self.branch3x3dbl_1 = _Conv(inputs, 64, 1)
        self.branch3x3dbl_2 = _Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _Conv(96, 96, 3, stride=2)

    def forward(self, x):
        double = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), double, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class _InceptionC(nn.Module):
    def __init__(self, inputs, c7):
        super().__init__()
        wide, tall = {"kernel": (1, 7), "padding": (0, 3)}, {"kernel": (7, 1), "padding": (3, 0)}
        self.branch1x1 = _Conv(inputs, 192, 1)
        self.branch7x7_1 = _Conv(inputs, c7, 1)
        self.branch7x7_2 = _Conv(c7, c7, **wide)
        self.branch7x7_3 = _Conv(c7, 192, **tall)
        self.branch7x7dbl_1 = _Conv(inputs, c7, 1)
        self.branch7x7dbl_2 = _Conv(c7, c7, **tall)
        self.branch7x7dbl_3 = _Conv(c7, c7, **wide)
        self.branch7x7dbl_4 = _Conv(c7, c7, **tall)
        self.branch7x7dbl_5 = _Conv(c7, 192, **wide)
        self.branch_pool = _Conv(inputs, 192, 1)

    def forward(self, x):
        single = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        double = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3):
            double = layer(double)
        double = self.branch7x7dbl_5(self.branch7x7dbl_4(double))
        return torch.cat([self.branch1x1(x), single, double, self.branch_pool(_avg_pool(x))], 1)


class _InceptionD(nn.Module):
    def __init__(self, inputs):
        super().__init__()
        self.branch3x3_1, self.branch3x3_2 = _Conv(inputs, 192, 1), _Conv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _Conv(inputs, 192, 1)
        self.branch7x7x3_2 = _Conv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _Conv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _Conv(192, 192, 3, stride=2)

    def forward(self, x):
        tower = self.branch7x7x3_2(self.branch7x7x3_1(x))
        tower = self.branch7x7x3_4(self.branch7x7x3_3(tower))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), tower, F.max_pool2d(x, 3, stride=2)], 1)


class _InceptionE(nn.Module):
    def __init__(self, inputs, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool  # the graph's last block pools by maximum, the one before by average
        self.branch1x1 = _Conv(inputs, 320, 1)
        self.branch3x3_1 = _Conv(inputs, 384, 1)
        self.branch3x3_2a = _Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _Conv(inputs, 448, 1)
        self.branch3x3dbl_2 = _Conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _Conv(inputs, 192, 1)

    def forward(self, x):
        single = self.branch3x3_1(x)
        double = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool(x)
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch3x3_2a(single),
                self.branch3x3_2b(single),
                self.branch3x3dbl_3a(double),
                self.branch3x3dbl_3b(double),
                self.branch_pool(pooled),
            ],
            1,
        )


class FIDInception(nn.Module):
    """Inception-v3 with the layer names of the FID checkpoint `pt_inception-2015-12-05`
    (pytorch-fid, torch-fidelity, torchmetrics): its 2048 pooled features."""

    width = 2048

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = _Conv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _Conv(32, 32, 3)
        self.Conv2d_2b_3x3 = _Conv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _Conv(64, 80, 1)
        self.Conv2d_4a_3x3 = _Conv(80, 192, 3)
        self.Mixed_5b = _InceptionA(192, 32)
        self.Mixed_5c = _InceptionA(256, 64)
        self.Mixed_5d = _InceptionA(288, 64)
        self.Mixed_6a = _InceptionB(288)
        self.Mixed_6b = _InceptionC(768, 128)
        self.Mixed_6c = _InceptionC(768, 160)
        self.Mixed_6d = _InceptionC(768, 160)
        self.Mixed_6e = _InceptionC(768, 192)
        self.Mixed_7a = _InceptionD(768)
        self.Mixed_7b = _InceptionE(1280, max_pool=False)
        self.Mixed_7c = _InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b):
            x = block(x)
        for block in (
            self.Mixed_6c,
            self.Mixed_6d,
            self.Mixed_6e,
            self.Mixed_7a,
            self.Mixed_7b,
            self.Mixed_7c,
        ):
            x = block(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


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
    model: nn.Module  # with .embed(batch) -> features and .width
    sha256: str  # of the weights file, stated beside every figure
    resolution: int
    prepare: Callable[[np.ndarray, int], torch.Tensor]  # a 2-D image in [0, 1] -> the network's input


def _weights(path: Path | str | None, *, what: str, skipped: str) -> tuple[Path, bytes]:
    """The bytes of a weights file, or WeightsMissing saying what is skipped without it."""
    if not path or not Path(path).is_file():
        raise WeightsMissing(f"No weights file for the {what} at {str(path) or '(not set)'}: {skipped}")
    return Path(path), Path(path).read_bytes()


def _extractor(path: Path, data: bytes, model: nn.Module, state, *, is_not: str, **fields) -> Extractor:
    """The network with the file's weights, every layer present and nothing else, or WeightsRefused."""
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as exc:
        first = str(exc).splitlines()[0]
        raise WeightsRefused(f"{path.name} is not {is_not}: {first}") from None
    return Extractor(model=model.eval(), sha256=hashlib.sha256(data).hexdigest(), **fields)


def load_xrv_densenet(path: Path | str | None) -> Extractor:
    """torchxrayvision's DenseNet-121 with the weights of a local file: one of its published
    `.pt` files (a pickled model) or a state dict saved with torch.save."""
    path, data = _weights(
        path,
        what="chest-radiograph extractor",
        skipped="the XRV measures are skipped. Put a torchxrayvision DenseNet-121 .pt file there "
        "(its published densenet121-res224-all.pt, say).",
    )
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
    return _extractor(
        path,
        data,
        XRVDenseNet(classes=classes),
        state,
        is_not="a torchxrayvision DenseNet-121",
        name="xrv-densenet121",
        resolution=XRV_RESOLUTION,
        prepare=_xrv_prepared,
    )


INCEPTION_RESOLUTION = 299


def load_fid_inception(path: Path | str | None) -> Extractor:
    """The FID Inception-v3 with the weights of a local file: the state dict
    `pt_inception-2015-12-05-6726825d.pth` that pytorch-fid and torch-fidelity use."""
    path, data = _weights(
        path,
        what="Inception extractor",
        skipped="the classic FID is skipped. Put pt_inception-2015-12-05-6726825d.pth there.",
    )
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)  # tensors only
    except Exception as exc:
        raise WeightsRefused(f"{path.name} could not be read as a state dict: {exc}") from None
    return _extractor(
        path,
        data,
        FIDInception(),
        state,
        is_not="the FID Inception-v3",
        name="inception-v3-fid",
        resolution=INCEPTION_RESOLUTION,
        prepare=_inception_prepared,
    )


# ---- Features of images ------------------------------------------------------------------------


def _square(image: np.ndarray, resolution: int, *, antialias: bool) -> torch.Tensor:
    """A 2-D image in [0, 1], its centre square resized to the network's side: 1 x 1 x side x side."""
    pixels = np.asarray(image, dtype=np.float32)
    if pixels.ndim != 2:
        raise ValueError(f"Features are of 2-D grey images, not shape {pixels.shape}.")
    height, width = pixels.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = torch.from_numpy(np.ascontiguousarray(pixels[top : top + side, left : left + side]))[None, None]
    if side != resolution:
        square = F.interpolate(square, size=(resolution, resolution), mode="bilinear", antialias=antialias)
    return square.clamp(0, 1)


def _xrv_prepared(image: np.ndarray, resolution: int) -> torch.Tensor:
    """As torchxrayvision feeds its networks: resized with antialiasing, scaled to [-1024, 1024]."""
    return (2 * _square(image, resolution, antialias=True) - 1) * 1024


def _inception_prepared(image: np.ndarray, resolution: int) -> torch.Tensor:
    """As the FID Inception is fed: 8-bit grey levels on three channels, (x - 128) / 128."""
    grey = _square(image, resolution, antialias=False) * 255
    return ((grey - 128) / 128).expand(-1, 3, -1, -1)


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
        pending.append(extractor.prepare(image, extractor.resolution))
        if len(pending) == batch:
            flush()
    flush()
    width = getattr(extractor.model, "width", 0)
    return np.concatenate(rows) if rows else np.empty((0, width))
