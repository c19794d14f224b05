"""Parity of generation.features.FIDInception with torch-fidelity's FID Inception-v3 (one-off check).

torch-fidelity (behind torchmetrics' FID) needs torchvision, which this project's CPU torch
cannot install beside it, so the suite cannot import it. This loads torch-fidelity 0.4.0's
network file on its own, gives both networks the same random weights (with non-trivial
batch-norm statistics), loads them through the strict `load_state_dict` of each (so the layer
names must agree) and compares their 2048 features of the same 299 px 8-bit images.

    .venv/bin/pip download torch-fidelity==0.4.0 --no-deps -d /tmp/tf
    (cd /tmp/tf && unzip -o -q torch_fidelity-0.4.0-py3-none-any.whl -d x)
    .venv/bin/python benchmarks/inception_parity.py /tmp/tf/x/torch_fidelity
"""

import importlib.util
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from generation.features import FIDInception, load_fid_inception  # noqa: E402


def torch_fidelity_network(root: str):
    package = types.ModuleType("torch_fidelity")
    package.__path__ = [root]
    sys.modules["torch_fidelity"] = package  # without its __init__, which imports torchvision
    for name in (
        "helpers",
        "feature_extractor_base",
        "interpolate_compat_tensorflow",
        "feature_extractor_inceptionv3",
    ):
        spec = importlib.util.spec_from_file_location(f"torch_fidelity.{name}", f"{root}/{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return sys.modules["torch_fidelity.feature_extractor_inceptionv3"].FeatureExtractorInceptionV3


def main() -> None:
    theirs_class = torch_fidelity_network(sys.argv[1])
    torch.manual_seed(0)
    ours = FIDInception()
    for layer in ours.modules():
        if isinstance(layer, torch.nn.BatchNorm2d):
            layer.running_mean.uniform_(-0.1, 0.1)
            layer.running_var.uniform_(0.5, 1.5)
    with tempfile.TemporaryDirectory() as folder:
        weights = Path(folder) / "weights.pth"
        torch.save(ours.state_dict(), weights)
        theirs = theirs_class("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights))
        extractor = load_fid_inception(weights)
    images = (np.random.default_rng(0).random((4, 299, 299)) * 255).round().astype(np.uint8)
    with torch.inference_mode():
        a = theirs(torch.from_numpy(images)[:, None].expand(-1, 3, -1, -1).contiguous())[0].double().numpy()
        b = np.concatenate(
            [extractor.model.embed(extractor.prepare(i / 255.0, 299)).double().numpy() for i in images]
        )
    print(
        f"4 images, 2048 features: largest difference {np.abs(a - b).max():.3g} "
        f"(features up to {np.abs(a).max():.3g})"
    )


if __name__ == "__main__":
    main()
