"""A study's machine measures beside its readers' verdict: for the results page and metrics.csv.

The figures come from the study's latest finished measure job (generation/measure_jobs.py),
each arm's from its synthetic images against the study's real images; the readers' fool
rate, accuracy and AUC of the same arm from the one analysis (analysis/summary.py). Across
arms, each measure's rank correlation with the fool rate (analysis.realism.spearman).
"""

from dataclasses import dataclass

from analysis.realism import spearman
from analysis.summary import Summary
from generation.measure_jobs import latest_study_measures
from generation.models import MeasureJob

from .models import Study

# measure key in an extractor's figures -> label; "higher" says which way is closer to real.
FEATURE_MEASURES = {
    "frechet_distance": "Fréchet distance",
    "kid": "KID",
    "precision": "Precision",
    "recall": "Recall",
    "density": "Density",
    "coverage": "Coverage",
}
READER_FIGURES = ("fool_rate", "accuracy", "auc")
# Arms needed for a rank correlation.
MIN_ARMS = 3


def metric_rows(job: MeasureJob, summary: Summary | None) -> list[dict]:
    """metrics.csv's rows: every figure of every arm, each with what it was computed on."""
    rows = []
    for model, found in (job.results or {}).get("arms", {}).items():
        readers = _readers(summary, model)
        common = {
            "model": model,
            "n_synthetic": found["n_synthetic"],
            "n_real": found["n_real"],
            "measure_job": job.pk,
            **readers,
        }
        for extractor, figures in found["extractors"].items():
            if "skipped" in figures:
                rows.append(
                    {**common, "measure": "skipped", "extractor": extractor, "note": figures["skipped"]}
                )
                continue
            on = {
                "extractor": extractor,
                "weights_sha256": figures["weights_sha256"],
                "resolution": figures["resolution"],
            }
            for key in FEATURE_MEASURES:
                if figures.get(key) is None:
                    continue
                row = {**common, **on, "measure": key, "value": figures[key]}
                if key == "kid":
                    row.update(
                        ci_low=figures["kid_ci_low"],
                        ci_high=figures["kid_ci_high"],
                        note=f"{figures['kid_subsets']} subsets of {figures['kid_subset_size']}; "
                        "interval: middle 95% of subsets",
                    )
                if key in ("precision", "recall", "density", "coverage"):
                    row["k"] = figures["k"]
                rows.append(row)
            if figures.get("notes"):
                rows.append({**common, **on, "measure": "note", "note": " ".join(figures["notes"])})
        for kind in ("synthetic", "real"):
            diversity = found["diversity"][kind]
            rows.append(
                {
                    **common,
                    "measure": f"ms_ssim_{kind}",
                    "value": diversity["ms_ssim"],
                    "resolution": diversity.get("resolution"),
                    "note": f"mean over {diversity['n_pairs']} pairs"
                    if diversity["ms_ssim"] is not None
                    else diversity.get("note", ""),
                }
            )
        memorisation = found["memorisation"]
        for kind in ("training", "reference"):
            share = (memorisation.get(kind) or {}).get("share_flagged")
            if share is None:
                continue
            thresholds = memorisation["thresholds"]
            rows.append(
                {
                    **common,
                    "measure": f"share_flagged_{kind}",
                    "extractor": memorisation["extractor"],
                    "value": share,
                    "note": f"flagged at SSIM >= {thresholds['ssim']}, neighbours by pixels"
                    if thresholds["cosine"] is None
                    else f"flagged at cosine >= {thresholds['cosine']} or SSIM >= {thresholds['ssim']}",
                }
            )
    return rows


def _readers(summary: Summary | None, model: str) -> dict:
    if summary is None or model not in summary.groups:
        return dict.fromkeys(READER_FIGURES)
    row = summary.pooled(model)
    return {key: row.get(key) for key in READER_FIGURES}


@dataclass
class Column:
    key: str  # "frechet_distance:xrv-densenet121", "ms_ssim_synthetic", ...
    label: str


@dataclass
class Correlation:
    column: Column
    rho: float | None
    p: float | None
    n: int
    method: str
    note: str = ""


def machine_measures(study: Study, summary: Summary) -> dict | None:
    """The results page's section: a row per arm with the readers' figures and the machine
    measures, each measure's Spearman correlation with the fool rate, and the job it came from."""
    job = latest_study_measures(study)
    if job is None:
        return None
    columns: dict[str, Column] = {}
    arms = []
    for model, found in job.results.get("arms", {}).items():
        values = {}
        for extractor, figures in found["extractors"].items():
            for key, label in FEATURE_MEASURES.items():
                if figures.get(key) is not None:
                    column = columns.setdefault(
                        f"{key}:{extractor}", Column(f"{key}:{extractor}", f"{label} ({extractor})")
                    )
                    values[column.key] = figures[key]
        diversity = found["diversity"]["synthetic"]["ms_ssim"]
        if diversity is not None:
            columns.setdefault(
                "ms_ssim_synthetic", Column("ms_ssim_synthetic", "MS-SSIM within the synthetic images")
            )
            values["ms_ssim_synthetic"] = diversity
        for kind in ("training", "reference"):
            share = (found["memorisation"].get(kind) or {}).get("share_flagged")
            if share is not None:
                key = f"share_flagged_{kind}"
                columns.setdefault(key, Column(key, f"Share flagged as copies of {kind} images"))
                values[key] = share
        arms.append({"model": model, **_readers(summary, model), "values": values})
    for arm in arms:
        arm["cells"] = [arm["values"].get(key) for key in columns]
    correlations = [_correlation(column, arms) for column in columns.values()]
    return {
        "job": job,
        "columns": list(columns.values()),
        "arms": arms,
        "correlations": correlations,
        "real_diversity": _real_diversity(job),
    }


def _real_diversity(job: MeasureJob):
    for found in job.results.get("arms", {}).values():
        return found["diversity"]["real"]
    return None


def _correlation(column: Column, arms: list[dict]) -> Correlation:
    pairs = [
        (arm["values"][column.key], arm["fool_rate"])
        for arm in arms
        if arm["values"].get(column.key) is not None and arm["fool_rate"] is not None
    ]
    if len(pairs) < MIN_ARMS:
        return Correlation(column, None, None, len(pairs), "", f"needs {MIN_ARMS} arms with both figures")
    try:
        found = spearman([a for a, _ in pairs], [b for _, b in pairs])
    except ValueError as exc:
        return Correlation(column, None, None, len(pairs), "", str(exc))
    return Correlation(column, found.rho, found.p, found.n, found.method)
