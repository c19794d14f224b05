"""Machine measures at scale: features and Fréchet distance of N real + N synthetic images, against
torchmetrics' FID fed the same images; nearest neighbours of N synthetic images among N references.

    .venv/bin/python benchmarks/metrics.py [--images 10000] [--side 512] [--batch 32]
        [--inception-weights PATH] [--device cpu|cuda] [--skip-torchmetrics]

Images: N phantom radiographs (studies/imaging/phantoms.py) as the real set and N others,
blurred, as the synthetic set, as 8-bit arrays of --side px, made once before anything is timed.
Both pipelines get the same uint8 images and run the same network (the FID Inception of
generation/features.py, the published weights with --inception-weights, else random ones: the
cost is the same), so the ratio measures what surrounds the network: preparing the batches,
accumulating the statistics, the distance. Ours: generation.measures.features_of and
analysis.realism (float64 statistics, the distance by a symmetric eigendecomposition).
torchmetrics: FrechetInceptionDistance(feature=<the same network behind a uint8 wrapper>),
update by batches, compute. Target: ours / torchmetrics at most 1.0.
Then nearest neighbours by cosine (analysis.realism.nearest_by_cosine: blocks of matrix
products) of the synthetic features among the real ones, 2048 features each.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis import realism  # noqa: E402
from generation.features import Extractor, FIDInception, _inception_prepared, image_features  # noqa: E402
from studies.imaging.phantoms import phantom  # noqa: E402


def images(count: int, side: int, *, synthetic: bool) -> np.ndarray:
    made = np.empty((count, side, side), dtype=np.uint8)
    for index in range(count):
        pixels = phantom((10**6 if synthetic else 0) + index, side)
        if synthetic:
            pixels = gaussian_filter(pixels, 1.5)
        made[index] = np.clip(pixels * 255 + 0.5, 0, 255).astype(np.uint8)
    return made


class Uint8Network(torch.nn.Module):
    """The same network, as torchmetrics calls a custom extractor: uint8 N x 3 x H x W in, features out."""

    num_features = 2048

    def __init__(self, network, resolution):
        super().__init__()
        self.network, self.resolution = network, resolution

    def forward(self, batch):
        grey = batch[:, :1].float() / 255
        prepared = torch.cat([_inception_prepared(image[0].numpy(), self.resolution) for image in grey])
        return self.network.embed(prepared)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=10000, help="images per set")
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--inception-weights", help="pt_inception-2015-12-05-6726825d.pth (else random)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-torchmetrics", action="store_true")
    args = parser.parse_args()

    torch.manual_seed(0)
    network = FIDInception()
    if args.inception_weights:
        network.load_state_dict(torch.load(args.inception_weights, map_location="cpu", weights_only=True))
    network = network.eval().to(args.device)
    started = time.perf_counter()
    real, synthetic = (
        images(args.images, args.side, synthetic=False),
        images(args.images, args.side, synthetic=True),
    )
    print(
        f"{args.images} + {args.images} images of {args.side} px made "
        f"in {time.perf_counter() - started:.1f} s"
    )
    print(f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads")

    class OnDevice(torch.nn.Module):
        width = 2048

        def embed(self, batch):
            return network.embed(batch.to(args.device)).cpu()

    extractor = Extractor(
        name="inception-v3-fid", model=OnDevice(), sha256="-", resolution=299, prepare=_inception_prepared
    )
    started = time.perf_counter()
    with torch.inference_mode():
        real_features = image_features(extractor, (image / 255.0 for image in real), batch=args.batch)
        synthetic_features = image_features(
            extractor, (image / 255.0 for image in synthetic), batch=args.batch
        )
    distance = realism.frechet_distance(
        realism.feature_stats(real_features), realism.feature_stats(synthetic_features)
    )
    ours = time.perf_counter() - started
    print(f"ours: FD {distance:.4f} in {ours:.1f} s ({2 * args.images / ours:.1f} images/s)")

    if not args.skip_torchmetrics:
        from torchmetrics.image.fid import FrechetInceptionDistance

        metric = FrechetInceptionDistance(feature=Uint8Network(network, 299).to(args.device), normalize=False)
        metric = metric.to(args.device)
        started = time.perf_counter()
        with torch.inference_mode():
            for data, is_real in ((real, True), (synthetic, False)):
                for start in range(0, len(data), args.batch):
                    batch = torch.from_numpy(data[start : start + args.batch])[:, None].expand(-1, 3, -1, -1)
                    metric.update(batch.contiguous().to(args.device), real=is_real)
            theirs_distance = float(metric.compute())
        theirs = time.perf_counter() - started
        print(
            f"torchmetrics: FID {theirs_distance:.4f} in {theirs:.1f} s "
            f"({2 * args.images / theirs:.1f} images/s)"
        )
        print(
            f"ours / torchmetrics: {ours / theirs:.2f} (target at most 1.0); distances differ by "
            f"{abs(distance - theirs_distance):.2g}"
        )

    started = time.perf_counter()
    index, similarity = realism.nearest_by_cosine(synthetic_features, real_features)
    took = time.perf_counter() - started
    print(
        f"nearest neighbours: {args.images} x {args.images} by cosine of {real_features.shape[1]} features "
        f"in {took:.2f} s (median similarity {np.median(similarity):.3f})"
    )


if __name__ == "__main__":
    main()
