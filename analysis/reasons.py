"""What gave images away, and where (issue 15): reasons counted per arm, the marked regions as a
table and as a density over the image.

Counts use each reader's first read of an image (repeats are for intra-reader agreement), as the
rest of the analysis does. An arm's synthetic images called fake are counted apart from the real
images called fake (a real image belongs to every arm: its row is `real`).
"""

import numpy as np

from .reads import LABEL_CODE, LABELS, REGION_KINDS, Reads

FAKE = LABEL_CODE["fake"]
NO_REASON = "(none given)"
REASON_COUNT_COLUMNS = ["group", "truth", "reason", "n_called_fake", "n_with_reason", "share"]
REGION_ROW_COLUMNS = [
    "study",
    "reader",
    "image",
    "truth",
    "model",
    "label",
    "reasons",
    "region",
    "region_x0",
    "region_y0",
    "region_x1",
    "region_y1",
    "image_size",
    "centre_x",
    "centre_y",
]


def group_codes(reads: Reads, models: list[str] | None = None) -> list[tuple[str, int]]:
    """(group, image_model code) for each arm in `models` (the reads' own by default), then real."""
    names = reads.models if models is None else models
    codes = {name: k for k, name in enumerate(reads.models, start=1)}
    return [(name, codes.get(name, -1)) for name in names] + [("real", 0)]


def _called_fake(reads: Reads, code: int) -> np.ndarray:
    """First reads of the group's images labelled fake."""
    return (~reads.repeat) & (reads.label == FAKE) & (reads.image_model[reads.image] == code)


def reason_counts(reads: Reads, models: list[str] | None = None) -> list[dict]:
    """Per group and reason: how many first reads called an image of the group fake, how many of
    them gave the reason, and the share; a row `(none given)` counts those with no reason."""
    rows = []
    reasons = reads.reasons if reads.reasons is not None else np.zeros(len(reads), np.int64)
    for group, code in group_codes(reads, models):
        called = _called_fake(reads, code)
        given = reasons[called]
        n = int(called.sum())
        counts = [((given >> bit) & 1).sum() for bit in range(len(reads.reason_names))]
        for reason, count in [*zip(reads.reason_names, counts, strict=True), (NO_REASON, (given == 0).sum())]:
            rows.append(
                {
                    "group": group,
                    "truth": "real" if code == 0 else "fake",
                    "reason": reason,
                    "n_called_fake": n,
                    "n_with_reason": int(count),
                    "share": int(count) / n if n else None,
                }
            )
    return rows


def region_rows(reads: Reads) -> list[dict]:
    """One row per read with a marked region (file order), its centre as fractions of the side."""
    if reads.region is None:
        return []
    rows = []
    for j in np.flatnonzero(reads.region[:, 4] > 0):
        x0, y0, x1, y1, size, kind = (int(v) for v in reads.region[j])
        k = int(reads.image_model[reads.image[j]])
        mask = int(reads.reasons[j]) if reads.reasons is not None else 0
        rows.append(
            {
                "study": reads.study,
                "reader": reads.readers[reads.reader[j]],
                "image": reads.images[reads.image[j]],
                "truth": "fake" if k else "real",
                "model": reads.models[k - 1] if k else "",
                "label": LABELS[reads.label[j]],
                "reasons": ";".join(name for bit, name in enumerate(reads.reason_names) if mask >> bit & 1),
                "region": REGION_KINDS[kind],
                "region_x0": x0,
                "region_y0": y0,
                "region_x1": x1,
                "region_y1": y1,
                "image_size": size,
                "centre_x": (x0 + x1 + 1) / 2 / size,
                "centre_y": (y0 + y1 + 1) / 2 / size,
            }
        )
    return rows


def region_density(reads: Reads, code: int, *, bins: int = 64, sigma: float = 1.5) -> tuple[np.ndarray, int]:
    """The regions marked on first reads that called the group's images fake, as a density on a
    bins x bins grid over the image (rows top to bottom; sums to 1, or all 0 with no mark), and
    their number. Each mark has the same weight: a box spread evenly over the cells it covers, a
    point on its cell; the grid is then smoothed by a Gaussian of `sigma` cells."""
    grid = np.zeros((bins, bins))
    if reads.region is None:
        return grid, 0
    chosen = _called_fake(reads, code) & (reads.region[:, 4] > 0)
    region = reads.region[chosen].astype(np.float64)
    if not region.size:
        return grid, 0
    size = region[:, 4:5]
    lo = region[:, 0:2] / size * bins  # in cells
    hi = (region[:, 2:4] + 1) / size * bins
    edges = np.arange(bins + 1)
    # Each mark's overlap with each column and row of cells, as a share of its own extent.
    ox = np.clip(np.minimum(hi[:, :1], edges[1:]) - np.maximum(lo[:, :1], edges[:-1]), 0, None)
    oy = np.clip(np.minimum(hi[:, 1:], edges[1:]) - np.maximum(lo[:, 1:], edges[:-1]), 0, None)
    ox /= ox.sum(axis=1, keepdims=True)
    oy /= oy.sum(axis=1, keepdims=True)
    grid = oy.T @ ox  # rows are y
    grid = _smooth(grid, sigma)
    return grid / grid.sum(), int(chosen.sum())


def _smooth(grid: np.ndarray, sigma: float) -> np.ndarray:
    """A separable Gaussian blur, zero outside the image."""
    if sigma <= 0:
        return grid
    radius = max(1, int(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()

    def blur(line):
        return np.convolve(line, taps)[radius : radius + line.size]  # centred, whatever the sizes

    return np.apply_along_axis(blur, 0, np.apply_along_axis(blur, 1, grid))


def most_called_fake(reads: Reads, *, synthetic: bool, top: int = 8) -> list[dict]:
    """The synthetic (or real) images that most first reads called fake, most often first (by share,
    then count, then name): each with its reads, how many called it fake, the reasons they gave
    (name -> count, in reason_names' order) and their marked regions (x0, y0, x1, y1, side, kind)."""
    first = ~reads.repeat
    n_images = len(reads.images)
    shown = np.bincount(reads.image[first], minlength=n_images)
    called = first & (reads.label == FAKE)
    fake = np.bincount(reads.image[called], minlength=n_images)
    kind = (reads.image_model > 0) == synthetic
    candidates = np.flatnonzero(kind & (fake > 0))
    ranked = sorted(candidates, key=lambda i: (-fake[i] / shown[i], -fake[i], reads.images[i]))[:top]
    found = []
    for i in ranked:
        reads_of = called & (reads.image == i)
        given = reads.reasons[reads_of] if reads.reasons is not None else np.zeros(0, np.int64)
        reasons = {
            name: int(((given >> bit) & 1).sum())
            for bit, name in enumerate(reads.reason_names)
            if ((given >> bit) & 1).any()
        }
        regions = []
        if reads.region is not None:
            marked = reads.region[reads_of]
            regions = [tuple(int(v) for v in row) for row in marked[marked[:, 4] > 0]]
        k = int(reads.image_model[i])
        found.append(
            {
                "image": reads.images[i],
                "model": reads.models[k - 1] if k else "",
                "n_reads": int(shown[i]),
                "n_called_fake": int(fake[i]),
                "reasons": reasons,
                "regions": regions,
            }
        )
    return found
