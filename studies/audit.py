"""The blinding audit: could one trait of the files readers download tell real from synthetic?

For each trait, the AUC with which it alone separates the two groups, direction-free
(max(AUC, 1 - AUC): a trait lower in synthetic images is as much a shortcut as one
higher). At WARN_AT and beyond, readers could win by the trait instead of by judging
realism. The traits are computed from the PNG bytes a reader receives, nothing else.
"""

import io
import struct
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image as PILImage
from scipy import ndimage

from analysis.roc import mann_whitney_auc

WARN_AT = 0.75
# Below this many images in a group, chance alone reaches WARN_AT too often to trust a warning.
SMALL_GROUP = 20
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Immerkaer's mask: the difference of two Laplacians, blind to image structure up to second order.
NOISE_MASK = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)
LAPLACIAN = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=np.float64)

# name: (label for people, kind)
TRAITS = {
    "file_size": ("File size (bytes)", "numeric"),
    "dimensions": ("Dimensions", "categorical"),
    "mode": ("PNG mode (colour type, bit depth)", "categorical"),
    "chunks": ("PNG chunk list", "categorical"),
    "mean": ("Mean intensity", "numeric"),
    "spread": ("Spread of intensity (standard deviation)", "numeric"),
    "skewness": ("Histogram skewness", "numeric"),
    "kurtosis": ("Histogram kurtosis (excess)", "numeric"),
    "entropy": ("Histogram entropy (bits)", "numeric"),
    "noise": ("Noise level (Immerkaer sigma)", "numeric"),
    "sharpness": ("Sharpness (variance of the Laplacian)", "numeric"),
}


def png_chunks(data: bytes) -> list[tuple[str, bytes]]:
    """The chunks of a PNG, in order, as (type, body)."""
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError("not a PNG file")
    chunks, offset = [], len(PNG_SIGNATURE)
    while offset + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[offset : offset + 8])
        chunks.append((kind.decode("latin-1"), data[offset + 8 : offset + 8 + length]))
        offset += 12 + length
    return chunks


def noise_sigma(grey: np.ndarray) -> float:
    """Immerkaer (1996), "Fast noise variance estimation", CVIU 64(2): 300-302.

    sigma = sqrt(pi / 2) / (6 (W - 2)(H - 2)) * sum |I * N| over the interior.
    """
    height, width = grey.shape
    if height < 3 or width < 3:
        return 0.0
    response = ndimage.convolve(grey, NOISE_MASK, mode="nearest")[1:-1, 1:-1]
    return float(np.sqrt(np.pi / 2) * np.abs(response).sum() / (6.0 * (width - 2) * (height - 2)))


def image_traits(data: bytes) -> dict:
    """Every trait of one reader file, from its bytes."""
    chunks = png_chunks(data)
    ihdr = chunks[0][1] if chunks and chunks[0][0] == "IHDR" else b""
    if len(ihdr) < 10:
        raise ValueError("a PNG without an IHDR chunk first")
    width, height, bit_depth, colour_type = struct.unpack(">IIBB", ihdr[:10])
    grey = np.asarray(PILImage.open(io.BytesIO(data)).convert("L"), dtype=np.float64)
    values = grey.ravel()
    mean, spread = float(values.mean()), float(values.std())
    centred = values - mean
    skewness = float((centred**3).mean() / spread**3) if spread > 0 else 0.0
    kurtosis = float((centred**4).mean() / spread**4 - 3.0) if spread > 0 else 0.0
    counts = np.bincount(values.astype(np.int64), minlength=256)
    shares = counts[counts > 0] / values.size
    return {
        "file_size": len(data),
        "dimensions": f"{width}x{height}",
        "mode": f"colour type {colour_type}, {bit_depth} bits",
        "chunks": ",".join(kind for kind, _ in chunks),
        "mean": mean,
        "spread": spread,
        "skewness": skewness,
        "kurtosis": kurtosis,
        "entropy": float(-(shares * np.log2(shares)).sum()),
        "noise": noise_sigma(grey),
        "sharpness": float(ndimage.convolve(grey, LAPLACIAN, mode="nearest").var()),
    }


@dataclass(frozen=True)
class TraitRow:
    name: str
    label: str
    kind: str
    auc: float  # direction-free: 0.5 chance, 1 perfect separation
    higher_in: str  # "synthetic", "real" or "" (no difference)
    real: str  # the group's median, or its most common category
    synthetic: str
    warn: bool


@dataclass
class AuditReport:
    rows: list[TraitRow] = field(default_factory=list)
    n_real: int = 0
    n_synthetic: int = 0
    problems: list[str] = field(default_factory=list)
    warn_at: float = WARN_AT
    # Images practice in one study and scored in another (filled in by the study's audit).
    overlaps: list[dict] = field(default_factory=list)
    # Real images that a model under study was trained on (filled in by the study's audit).
    trained_on: list[dict] = field(default_factory=list)
    # Synthetic images a measure job flagged as possible copies of real ones (the study's audit).
    possible_copies: list[dict] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    @property
    def note(self) -> str:
        smaller = min(self.n_real, self.n_synthetic)
        if 0 < smaller < SMALL_GROUP:
            return (
                f"Only {smaller} images in the smaller group: chance alone often reaches an AUC of "
                f"{WARN_AT} there, so a warning may be noise; more images give a firmer audit."
            )
        return ""

    def as_dict(self) -> dict:
        """Plain JSON, kept on the study (what was audited when it opened)."""
        return {**asdict(self), "passed": self.passed, "note": self.note}


def _categorical_scores(real: list[str], synthetic: list[str]) -> tuple[list[float], list[float]]:
    """Score each image by its category's share of synthetic images.

    The AUC of this score is the best any rule on the category alone can reach.
    (Leaving each image out of its own share, tempting against overfitting, leaks
    its label instead: in a mixed category real images would score higher than
    synthetic ones, a perfect separation made by the method.) A category held by
    one image alone moves the AUC by at most half over the size of its group.
    """
    total = Counter(real) + Counter(synthetic)
    fakes = Counter(synthetic)
    return [fakes[c] / total[c] for c in real], [fakes[c] / total[c] for c in synthetic]


def _summary(values: list, kind: str) -> str:
    if kind == "categorical":
        return Counter(values).most_common(1)[0][0] if values else ""
    return f"{float(np.median(values)):.4g}" if values else ""


def audit(items: Iterable[tuple[bytes, bool]]) -> AuditReport:
    """The audit of (file bytes, is synthetic) pairs."""
    real, synthetic = [], []
    for data, is_synthetic in items:
        (synthetic if is_synthetic else real).append(image_traits(data))
    report = AuditReport(n_real=len(real), n_synthetic=len(synthetic))
    if not real:
        report.problems.append("no real images to audit")
    if not synthetic:
        report.problems.append("no synthetic images to audit")
    if report.problems:
        return report
    for name, (label, kind) in TRAITS.items():
        a, b = [t[name] for t in real], [t[name] for t in synthetic]
        if kind == "categorical":
            if len(set(a) | set(b)) == 1:
                neg, pos = [0.0] * len(a), [0.0] * len(b)
            else:
                neg, pos = _categorical_scores(a, b)
        else:
            neg, pos = a, b
        raw = mann_whitney_auc(pos, neg)
        auc = max(raw, 1 - raw)
        row = TraitRow(
            name=name,
            label=label,
            kind=kind,
            auc=round(auc, 4),
            higher_in="synthetic" if raw > 0.5 else "real" if raw < 0.5 else "",
            real=_summary(a, kind),
            synthetic=_summary(b, kind),
            warn=auc >= WARN_AT,
        )
        report.rows.append(row)
        if row.warn:
            report.problems.append(f"{label} alone separates real from synthetic images (AUC {auc:.2f})")
    return report
