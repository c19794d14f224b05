"""Machine measures at scale: features and Fréchet distance of N real + N synthetic images, against
torchmetrics' FID fed the same images; nearest neighbours of N synthetic images among N references.

    .venv/bin/python benchmarks/metrics.py [--images 10000] [--side 512] [--batch 32]
        [--inception-weights PATH] [--device cpu|cuda] [--skip-torchmetrics] [--neighbours 10000]

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
products): the 5 nearest of each of --neighbours random 2048-feature rows among as many.
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
    parser.add_argument(
        "--neighbours", type=int, default=10000, help="rows of each side of the neighbour search"
    )
    args = parser.parse_args()

    torch.manual_seed(0)
    network = FIDInception()
    if args.inception_weights:
        network.load_state_dict(torch.load(args.inception_weights, map_location="cpu", weights_only=True))
    else:  # random weights, with batch-norm statistics that keep the features from vanishing
        for layer in network.modules():
            if isinstance(layer, torch.nn.BatchNorm2d):
                layer.running_mean.uniform_(-0.1, 0.1)
                layer.running_var.uniform_(0.5, 1.5)
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

    def ours():
        """As a measuring job does: float32 grey images in, features by batches, float64 statistics."""
        with torch.inference_mode():
            real_rows = image_features(
                extractor, (image.astype(np.float32) / 255 for image in real), batch=args.batch
            )
            synthetic_rows = image_features(
                extractor, (image.astype(np.float32) / 255 for image in synthetic), batch=args.batch
            )
        stats = realism.feature_stats(real_rows), realism.feature_stats(synthetic_rows)
        return realism.frechet_distance(*stats), real_rows, synthetic_rows

    def theirs():
        from torchmetrics.image.fid import FrechetInceptionDistance

        metric = FrechetInceptionDistance(feature=Uint8Network(network, 299).to(args.device), normalize=False)
        metric = metric.to(args.device)
        with torch.inference_mode():
            for data, is_real in ((real, True), (synthetic, False)):
                for start in range(0, len(data), args.batch):
                    batch = torch.from_numpy(data[start : start + args.batch])[:, None].expand(-1, 3, -1, -1)
                    metric.update(batch.contiguous().to(args.device), real=is_real)
            return float(metric.compute())

    def timed(run):
        started = time.perf_counter()
        value = run()
        return value, time.perf_counter() - started

    with torch.inference_mode():  # the first batch through the network pays its one-off costs: not timed
        network.embed(torch.zeros(2, 3, 299, 299, device=args.device))
    # Ours, torchmetrics, ours again (ABA): neither gets the quieter moment of a shared machine.
    (distance, real_features, synthetic_features), first = timed(ours)
    print(f"ours: FD {distance:.6g} in {first:.1f} s ({2 * args.images / first:.1f} images/s)")
    if not args.skip_torchmetrics:
        theirs_distance, middle = timed(theirs)
        print(
            f"torchmetrics: FID {theirs_distance:.6g} in {middle:.1f} s "
            f"({2 * args.images / middle:.1f} images/s)"
        )
        _, last = timed(ours)
        print(f"ours again: {last:.1f} s")
        print(
            f"ours / torchmetrics: {(first + last) / 2 / middle:.2f} (target at most 1.0); "
            f"the distances differ by {abs(distance - theirs_distance):.2g}"
        )

    rng = np.random.default_rng(0)
    queries = rng.normal(size=(args.neighbours, 2048)).astype(np.float32)
    references = rng.normal(size=(args.neighbours, 2048)).astype(np.float32)
    started = time.perf_counter()
    index, similarity = realism.nearest_by_cosine(queries, references, k=5)
    took = time.perf_counter() - started
    print(
        f"nearest neighbours: the 5 nearest of each of {args.neighbours} among {args.neighbours}, "
        f"2048 features each, by blocks of matrix products: {took:.2f} s"
    )


if __name__ == "__main__":
    main()
