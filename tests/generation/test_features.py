"""The chest-radiograph extractor: its weights from a local file, as published, without running code."""

import os
import sys
import types

import numpy as np
import pytest
import torch

from generation import features
from generation.features import WeightsMissing, WeightsRefused, XRVDenseNet, image_features, load_xrv_densenet


@pytest.fixture(scope="module")
def network():
    torch.manual_seed(0)
    return XRVDenseNet().eval()


def saved_as_torchxrayvision_does(model, path):
    """torch.save of the whole model, its classes named as torchxrayvision names them (its
    published .pt files are such pickles), then torchxrayvision gone again."""
    package, module = types.ModuleType("torchxrayvision"), types.ModuleType("torchxrayvision.models")
    package.models = module
    renamed = {}
    for ours, theirs in (
        (XRVDenseNet, "DenseNet"),
        (features._DenseBlock, "_DenseBlock"),
        (features._DenseLayer, "_DenseLayer"),
        (features._Transition, "_Transition"),
    ):
        cls = type(theirs, (ours,), {"__module__": "torchxrayvision.models"})
        setattr(module, theirs, cls)
        renamed[ours] = cls
    copy = XRVDenseNet()
    copy.load_state_dict(model.state_dict())
    for layer in copy.modules():
        layer.__class__ = renamed.get(type(layer), type(layer))
    sys.modules.update({"torchxrayvision": package, "torchxrayvision.models": module})
    try:
        torch.save(copy, path)
    finally:
        del sys.modules["torchxrayvision"], sys.modules["torchxrayvision.models"]


def test_a_published_style_weights_file_loads_without_torchxrayvision(network, tmp_path):
    path = tmp_path / "densenet121-res224-all.pt"
    saved_as_torchxrayvision_does(network, path)
    assert "torchxrayvision" not in sys.modules
    extractor = load_xrv_densenet(path)
    assert extractor.name == "xrv-densenet121" and len(extractor.sha256) == 64
    for key, value in network.state_dict().items():
        assert torch.equal(extractor.model.state_dict()[key], value), key
    image = np.random.default_rng(1).random((256, 256))
    ours = image_features(extractor, [image])
    with torch.inference_mode():
        expected = network.embed(features._xrv_prepared(image, 224)).double().numpy()
    assert ours.shape == (1, 1024) and np.allclose(ours, expected)


def test_a_state_dict_file_loads_too_and_the_hash_names_the_file(network, tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(network.state_dict(), path)
    first = load_xrv_densenet(path)
    torch.save({**network.state_dict(), "classifier.bias": torch.ones(18)}, path)
    assert load_xrv_densenet(path).sha256 != first.sha256


class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_a_weights_file_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    payload = Payload()
    payload.target = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({"features.conv0.weight": payload}, path)
    with pytest.raises(WeightsRefused, match="evil.pt could not be read.*posix.system is not allowed"):
        load_xrv_densenet(path)
    assert not payload.target.exists()


def test_missing_or_wrong_weights_are_named(tmp_path):
    skipped = "No weights file .* at .*nowhere.pt: the XRV measures are skipped"
    with pytest.raises(WeightsMissing, match=skipped):
        load_xrv_densenet(tmp_path / "nowhere.pt")
    with pytest.raises(WeightsMissing, match=r"\(not set\)"):
        load_xrv_densenet("")
    torch.save(torch.nn.Linear(3, 2).state_dict(), tmp_path / "linear.pt")
    with pytest.raises(WeightsRefused, match="linear.pt is not a torchxrayvision DenseNet-121"):
        load_xrv_densenet(tmp_path / "linear.pt")
    (tmp_path / "text.pt").write_text("not weights")
    with pytest.raises(WeightsRefused, match="text.pt could not be read as torch weights"):
        load_xrv_densenet(tmp_path / "text.pt")


def test_features_come_by_batches_with_progress_and_of_the_centre_square(network, tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(network.state_dict(), path)
    extractor = load_xrv_densenet(path)
    rng = np.random.default_rng(2)
    square = rng.random((96, 96))
    wide = np.concatenate([rng.random((96, 20)), square, rng.random((96, 20))], axis=1)  # centre: square
    done = []
    rows = image_features(extractor, [square, wide, square * 0.5], batch=2, progress=done.append)
    assert rows.shape == (3, 1024) and done == [2, 3]
    assert np.allclose(rows[0], rows[1]) and not np.allclose(rows[0], rows[2])
    with pytest.raises(ValueError, match="2-D grey images"):
        image_features(extractor, [rng.random((8, 8, 3))])


# ---- The FID Inception -------------------------------------------------------------------------


def test_the_fid_inception_loads_a_state_dict_and_gives_2048_features(tmp_path):
    torch.manual_seed(1)
    network = features.FIDInception()
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(network.state_dict(), path)
    extractor = features.load_fid_inception(path)
    assert (extractor.name, extractor.resolution) == ("inception-v3-fid", 299)
    image = np.random.default_rng(3).random((120, 100))
    rows = image_features(extractor, [image, image[::-1]])
    assert rows.shape == (2, 2048) and np.isfinite(rows).all()
    assert not np.allclose(rows[0], rows[1], rtol=1e-3, atol=0)  # random weights: tiny features
    # Its input: 8-bit grey levels on three channels, (x - 128) / 128, 299 px.
    prepared = extractor.prepare(np.full((10, 10), 1.0), 299)
    assert prepared.shape == (1, 3, 299, 299) and torch.allclose(prepared, torch.tensor(127 / 128))


def test_the_fid_inception_refuses_other_weights_and_pickled_code(network, tmp_path):
    torch.save(network.state_dict(), tmp_path / "densenet.pth")
    with pytest.raises(WeightsRefused, match="densenet.pth is not the FID Inception-v3"):
        features.load_fid_inception(tmp_path / "densenet.pth")
    payload = Payload()
    payload.target = tmp_path / "ran"
    torch.save({"fc.weight": payload}, tmp_path / "evil.pth")
    with pytest.raises(WeightsRefused, match="evil.pth could not be read as a state dict"):
        features.load_fid_inception(tmp_path / "evil.pth")
    assert not payload.target.exists()
    with pytest.raises(WeightsMissing, match="the classic FID is skipped"):
        features.load_fid_inception(tmp_path / "nowhere.pth")
