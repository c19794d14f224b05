"""The result files of analysis.md: summary.csv, cohen_kappa.csv, arm_comparisons.csv, one
imrmc_<model>.csv per arm and imrmc_all.csv with every arm, and reasons.csv and regions.csv
where readers gave them."""

import csv
import io
import re
from pathlib import Path

import numpy as np

from .cells import text_cell
from .rates import fakeness_bins
from .reads import Reads
from .reasons import REASON_COUNT_COLUMNS, REGION_ROW_COLUMNS, reason_counts, region_rows
from .summary import COHEN_COLUMNS, COMPARISON_COLUMNS, SUMMARY_COLUMNS, Summary


def cell(value) -> str:
    """How a value is written: empty when undefined, floats to 6 significant digits, text never a formula."""
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if not np.isfinite(value) else format(value, ".6g")
    if isinstance(value, str):
        return text_cell(value)
    return str(value)


def _table(columns: list[str], rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([cell(row[column]) for column in columns])
    return buffer.getvalue()


def summary_csv(summary: Summary) -> str:
    return _table(SUMMARY_COLUMNS, summary.rows)


def cohen_csv(summary: Summary) -> str:
    return _table(COHEN_COLUMNS, summary.cohen)


def comparisons_csv(summary: Summary) -> str:
    return _table(COMPARISON_COLUMNS, summary.comparisons)


def safe_name(name: str) -> str:
    """A model's name as it can stand in a file name and in an iMRMC field (never starting with `-`)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).lstrip("._-").rstrip("._") or "model"


def _distinct(bases: list[str], suffix: str = "", taken=()) -> list[str]:
    """Each base with the suffix, `_2`, `_3`, ... before it where the name (any case) is taken."""
    names, taken = [], {name.lower() for name in taken}
    for base in bases:
        name, n = f"{base}{suffix}", 2
        while name.lower() in taken:
            name, n = f"{base}_{n}{suffix}", n + 1
        taken.add(name.lower())
        names.append(name)
    return names


def imrmc_names(models: list[str]) -> dict[str, str]:
    """model -> its iMRMC file name, distinct even where two names clean up alike."""
    bases = [f"imrmc_{safe_name(model)}" for model in models]
    names = _distinct(bases, ".csv", taken=["imrmc_all.csv"])  # the file with every arm
    return dict(zip(models, names, strict=True))


SCORE_LINE = (
    "Score: the fakeness score of each reader's first read (real 6-c, unsure 6, fake 6+c "
    "with confidence c; without a confidence real 0, unsure 0.5, fake 1)"
)


def imrmc_csv(reads: Reads, model: str) -> str:
    """The arm of `model` in the input format of the FDA's iMRMC program.

    Free header lines, then `BEGIN DATA:`, a `-1,case,0,truth` line per case
    (truth 1 for a synthetic image) and a `reader,case,modality,score` line per
    first read, the score being the fakeness score of analysis.md.
    """
    header = (
        f"iMRMC input for the arm of model {_free_text(model)} in study {_free_text(reads.study)}: "
        "its synthetic images (truth 1) against every real image (truth 0)"
    )
    return _imrmc_text(reads, [model], header)


def imrmc_all_csv(reads: Reads, models: list[str]) -> str:
    """Every arm in one iMRMC input, each a modality named after its model.

    A real image belongs to every arm, so its reads appear once per modality with the same
    score; a synthetic image belongs to its own model's modality. iMRMC run on this file
    compares any two arms, as arm_comparisons.csv does.
    """
    header = (
        f"iMRMC input for every arm of study {_free_text(reads.study)}, each a modality: "
        "the real images (truth 0) are read in every modality, each synthetic image (truth 1) in its model's"
    )
    return _imrmc_text(reads, models, header)


def _imrmc_text(reads: Reads, models: list[str], header: str) -> str:
    first = ~reads.repeat
    image_model = reads.image_model[reads.image]
    modality_names = _distinct([safe_name(model) for model in models])
    chosen, m = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]  # each line's read and modality
    for index, model in enumerate(models):
        k = reads.models.index(model) + 1 if model in reads.models else -1
        in_arm = np.flatnonzero(np.isin(image_model, [0, k]) & first)
        chosen.append(in_arm)
        m.append(np.full(in_arm.size, index))
    chosen, m = np.concatenate(chosen), np.concatenate(m)
    r, i = reads.reader[chosen], reads.image[chosen]
    label, confidence = reads.label[chosen].astype(np.int64), reads.confidence[chosen].astype(np.int64)
    score = fakeness_bins(label, confidence, reads.has_confidence)
    values = score + 1.0 if reads.has_confidence else score / 2.0
    cases = np.unique(i)
    truth = (reads.image_model[cases] > 0).astype(int)
    lines = [
        header,
        SCORE_LINE,
        f"NR: {np.unique(r).size}",
        f"N0: {int((truth == 0).sum())}",
        f"N1: {int((truth == 1).sum())}",
        f"NM: {len(models)}",
        "BEGIN DATA:",
    ]
    case_ids = [text_cell(name) for name in reads.images]
    reader_ids = [text_cell(name) for name in reads.readers]
    lines += [f"-1,{case_ids[case]},0,{flag}" for case, flag in zip(cases, truth, strict=True)]
    order = np.lexsort((i, r, m))
    lines += [
        f"{reader_ids[r[j]]},{case_ids[i[j]]},{modality_names[m[j]]},{cell(float(values[j]))}" for j in order
    ]
    return "\n".join(lines) + "\n"


def _free_text(text) -> str:
    """A name inside a free header line of iMRMC: one line, no comma after which a cell could begin."""
    return re.sub(r"[,\r\n\t]+", " ", str(text))


# metrics.csv: one row per figure of a machine measure of an arm, with the readers' figures of
# that arm beside it (docs/analysis.md, "Machine measures"). Written from a measure job's
# results, not from answers.csv alone: `python -m analysis` cannot remake it.
METRICS_COLUMNS = [
    "model",
    "measure",
    "extractor",
    "value",
    "ci_low",
    "ci_high",
    "k",
    "weights_sha256",
    "resolution",
    "n_synthetic",
    "n_real",
    "fool_rate",
    "accuracy",
    "auc",
    "note",
    "measure_job",
]


def metrics_csv(rows: list[dict]) -> str:
    return _table(METRICS_COLUMNS, [{column: row.get(column) for column in METRICS_COLUMNS} for row in rows])


def result_files(reads: Reads, summary: Summary) -> dict[str, str]:
    """File name -> text of every result file but answers.csv; reasons.csv and regions.csv where
    readers gave reasons or marked regions."""
    files = {
        "summary.csv": summary_csv(summary),
        "cohen_kappa.csv": cohen_csv(summary),
        "arm_comparisons.csv": comparisons_csv(summary),
    }
    for model, name in imrmc_names(summary.models).items():
        files[name] = imrmc_csv(reads, model)
    files["imrmc_all.csv"] = imrmc_all_csv(reads, summary.models)
    if reads.reason_names:
        files["reasons.csv"] = _table(REASON_COUNT_COLUMNS, reason_counts(reads, summary.models))
    if reads.region is not None:
        files["regions.csv"] = _table(REGION_ROW_COLUMNS, region_rows(reads))
    return files


def write_results(reads: Reads, summary: Summary, out: Path) -> list[Path]:
    """Write the result files into the folder `out` (made if missing); the paths written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in result_files(reads, summary).items():
        path = out / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
