"""The results page's section on why and where readers called images fake (issue 15).

The figures come from the analysis (analysis/reasons.py); this adds what needs the database and
the stored images: each group's average image under its heat map of marks, and the links to the
images of the gallery. Researchers only: nothing here reaches a reader.
"""

import logging

import numpy as np
from django.core.cache import cache
from django.urls import reverse

from analysis.reasons import NO_REASON, group_codes, most_called_fake, reason_counts, region_density

from .models import Image, Study, StudyImage
from .plots import region_heatmaps

logger = logging.getLogger(__name__)
AVERAGE_SIDE = 128
AVERAGE_IMAGES = 100  # an average of this many images shows the anatomy as well as all would
GALLERY_SIZE = 8


def giveaways_section(study: Study, results) -> dict | None:
    """Reason counts per group, heat maps of the marks, and the images most often called fake;
    None where the study asks neither reasons nor regions and no read has any."""
    reads, models = results.reads, results.summary.models
    asked = study.ask_reasons != Study.AskReasons.NEVER or study.ask_region != Study.AskReasons.NEVER
    if not asked and not reads.reason_names and reads.region is None:
        return None
    groups = group_codes(reads, models)
    counts = reason_counts(reads, models)
    by = {(row["group"], row["reason"]): row for row in counts}
    columns = [
        {
            "group": group,
            "name": "Real images" if group == "real" else group,
            "n": by[group, NO_REASON]["n_called_fake"],
        }
        for group, _ in groups
    ]
    table = [
        {"reason": reason, "cells": [by[group, reason] for group, _ in groups]}
        for reason in [*_in_study_order(reads.reason_names, study.reason_choices), NO_REASON]
    ]
    panels = []
    for group, code in groups:
        density, n = region_density(reads, code)
        if n:
            name = "Real images" if group == "real" else group
            panels.append({"name": name, "n": n, "density": density, "average": group_average(study, group)})
    return {
        "columns": columns,
        "table": table if reads.reason_names else [],
        "heatmaps": region_heatmaps(panels) if panels else None,
        "n_marked": sum(panel["n"] for panel in panels),
        "synthetic": [_tile(entry) for entry in most_called_fake(reads, synthetic=True, top=GALLERY_SIZE)],
        "real": [_tile(entry) for entry in most_called_fake(reads, synthetic=False, top=GALLERY_SIZE)],
    }


def _in_study_order(names: list[str], choices: list[str]) -> list[str]:
    """Reasons in the study's order, any other (a list changed, an older study) after them."""
    return [name for name in choices if name in names] + [name for name in names if name not in choices]


def _tile(entry: dict) -> dict:
    """An image of the gallery: its admin URL and its marks as shapes on a 100 x 100 view box."""
    marks = []
    for x0, y0, x1, y1, size, kind in entry["regions"]:
        scale = 100 / size
        if kind == 0:
            marks.append({"point": True, "cx": (x0 + 0.5) * scale, "cy": (y0 + 0.5) * scale})
        else:
            marks.append(
                {
                    "point": False,
                    "x": x0 * scale,
                    "y": y0 * scale,
                    "w": (x1 - x0 + 1) * scale,
                    "h": (y1 - y0 + 1) * scale,
                }
            )
    return {
        **entry,
        "url": reverse("admin:studies_image_png", args=[int(entry["image"])]),
        "marks": marks,
        "reasons": sorted(entry["reasons"].items(), key=lambda item: -item[1]),
    }


def group_average(study: Study, group: str) -> np.ndarray | None:
    """The mean of (at most AVERAGE_IMAGES of) the group's study images as the readers saw them, at
    AVERAGE_SIDE pixels, grey levels 0 to 1; cached, since a study's images never change once open.
    None where none can be read."""
    key = f"giveaways:average:{study.pk}:{study.status}:{group}"
    found = cache.get(key)
    if found is not None:
        return found
    rows = StudyImage.objects.filter(study=study, practice=False).select_related("image").order_by("image_id")
    if group == "real":
        rows = rows.filter(image__origin=Image.Origin.REAL)
    else:
        rows = rows.filter(image__generated__version__model__name=group)
    total, n = np.zeros((AVERAGE_SIDE, AVERAGE_SIDE)), 0
    for row in rows[:AVERAGE_IMAGES]:
        pixels = _grey(row.file if row.file else row.image.file)
        if pixels is not None:
            total += pixels
            n += 1
    average = total / n if n else None
    if average is not None:
        cache.set(key, average, 24 * 3600)
    return average


def _grey(file) -> np.ndarray | None:
    from PIL import Image as PILImage

    try:
        with file.open("rb") as handle, PILImage.open(handle) as picture:
            picture = picture.convert("L").resize((AVERAGE_SIDE, AVERAGE_SIDE), PILImage.Resampling.BILINEAR)
            return np.asarray(picture, dtype=np.float64) / 255
    except (OSError, ValueError):
        logger.warning("The study image %s could not be read for an average", file.name)
        return None
