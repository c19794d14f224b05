"""The results page of a study for researchers, and its downloads (streamed where they are long)."""

import math

from django.http import Http404, HttpResponse, StreamingHttpResponse
from django.urls import reverse

from analysis.files import imrmc_names, result_files
from analysis.reads import AnswersError, answers_csv_chunks

from ..exports import (
    answer_rows,
    metrics_text,
    reader_pseudonyms,
    results_zip_stream,
    sessions_text,
    study_arms,
)
from ..giveaways import giveaways_section
from ..measures import machine_measures
from ..models import Study
from ..plots import (
    comparison_plot,
    forest_plot,
    kappa_heatmap,
    measures_scatter,
    reading_time_plot,
    unsure_plot,
)
from ..results import study_results

CSV = "text/csv; charset=utf-8"


def _clash(study: Study) -> str:
    taken = sorted(set(study_arms(study)) & {"all", "real"})
    if taken:
        return f"A model is called {taken[0]!r}, the name of a pooled group; rename it to analyse this study."
    return ""


AGREEMENT_WORDS = (
    "krippendorff",
    "fleiss",
    "gwet",
    "percent_agreement",
    "n_agreement",
    "intra_reader",
    "repeat",
)


def _notes(note: str) -> tuple[list[str], list[str]]:
    """A summary row's note split between the accuracy table and the agreement table.

    Each part names its columns before a colon (or is a remark); a part shows in
    the table whose empty cells it explains, in both where it names columns of both.
    """
    accuracy, agreement = [], []
    for part in filter(None, note.split("; ")):
        columns = part.split(": ", 1)[0].lower() if ": " in part else part.lower()
        names = [c.strip() for c in columns.split(",")]
        about_agreement = [any(word in name for word in AGREEMENT_WORDS) for name in names]
        if any(about_agreement):
            agreement.append(part)
        if not all(about_agreement):
            accuracy.append(part)
    return accuracy, agreement


def _only_mrmc(part: str) -> bool:
    """Whether a part of a note is about the MRMC columns alone."""
    columns = part.split(": ", 1)[0].split(", ")
    return all(column.startswith("auc_mrmc") for column in columns)


def _mrmc_rows(arms: list[dict]) -> list[dict]:
    """The MRMC table's rows: the arms with synthetic images, each with its standard error and
    the parts of its note about these figures."""
    rows = []
    for arm in arms:
        if arm["group"] == "real":
            continue
        row = arm["row"]
        var = row["auc_mrmc_var"]
        notes = [part for part in (row["note"] or "").split("; ") if "auc_mrmc" in part]
        rows.append(
            {
                "name": arm["name"],
                "row": row,
                "se": math.sqrt(var) if var is not None and var > 0 else None,
                "note": "; ".join(part.split(": ", 1)[1] if ": " in part else part for part in notes),
            }
        )
    return rows


def results_page_context(study: Study, *, include_removed: bool = False) -> dict:
    problem = _clash(study)
    if problem:
        return {"error": problem}
    try:
        results = study_results(study, include_removed=include_removed)
    except (AnswersError, ValueError) as exc:
        return {"error": f"The answers of this study cannot be analysed: {exc}"}
    summary = results.summary
    names = {"all": "All models", "real": "Real images only"}
    arms = []
    for group in summary.groups:
        detail = summary.details[group]
        row = summary.pooled(group)
        accuracy_notes, agreement_notes = _notes(row["note"] or "")
        accuracy_notes = [part for part in accuracy_notes if not _only_mrmc(part)]  # in the MRMC table
        arms.append(
            {
                "group": group,
                "name": names.get(group, group),
                "row": row,
                "accuracy_note": "; ".join(accuracy_notes),
                "agreement_note": "; ".join(agreement_notes),
                "confusion": list(zip(("Real", "Synthetic"), detail.confusion, strict=True)),
                "intervals": detail.intervals,
            }
        )
    readers = [row for row in summary.rows if row["group"] == "all" and row["reader"] != "all"]
    # Researchers may see who is behind a pseudonym here; the exported files never say.
    logins = dict(study.readers.values_list("reader_id", "reader__username"))
    names_in = reader_pseudonyms(study, include_removed=include_removed)
    who = {pseudonym: logins.get(user_id, "") for user_id, pseudonym in names_in.items()}
    downloads = [
        "answers.csv",
        "summary.csv",
        "cohen_kappa.csv",
        "arm_comparisons.csv",
        *imrmc_names(summary.models).values(),
        "imrmc_all.csv",
    ]
    if results.reads.reason_names:
        downloads.append("reasons.csv")
    if results.reads.region is not None:
        downloads.append("regions.csv")
    measures = machine_measures(study, summary)
    if measures is not None:
        downloads.append("metrics.csv")
    if sessions_text(study, include_removed=include_removed) is not None:
        downloads.append("sessions.csv")
    # The downloads hold the same readers as the page.
    query = "?include_removed=1" if include_removed else ""
    context = {
        "results": results,
        "summary": summary,
        "arms": arms,
        "reader_rows": [
            {
                **row,
                "login": who.get(row["reader"], ""),
                "median_seconds": summary.reader_median_seconds.get(row["reader"]),
            }
            for row in readers
        ],
        "downloads": [
            (name, reverse("admin:studies_study_download", args=[study.pk, name]) + query)
            for name in downloads
        ],
        "zip_url": reverse("admin:studies_study_download", args=[study.pk, "results.zip"]) + query,
        "include_removed": include_removed,
        "removed_count": study.readers.filter(removed__isnull=False).count(),
        "has_reads": summary.n_reads > 0,
        "measures": measures,
        "mrmc": _mrmc_rows(arms),
        "comparisons": summary.comparisons,
    }
    if measures is not None:
        context["measures_plot"] = measures_scatter(measures)
    if summary.n_reads:
        context["giveaways"] = giveaways_section(study, results)
    if summary.n_reads:
        all_detail = summary.details["all"]
        context["plots"] = {
            "forest": forest_plot(summary),
            "unsure": unsure_plot(summary),
            "time": reading_time_plot(summary),
            "kappa": kappa_heatmap(all_detail.readers, all_detail.kappa)
            if len(summary.readers) > 1
            else None,
            "comparisons": comparison_plot(summary.comparisons) if summary.comparisons else None,
        }
    return context


def _attachment(response, study: Study, name: str):
    response["Content-Disposition"] = f'attachment; filename="study-{study.pk}-{name}"'
    response["Cache-Control"] = "private, no-store"
    return response


def results_download(study: Study, name: str, *, include_removed: bool = False):
    """One result file by name; answers.csv and the zip stream from the database as they are read."""
    problem = _clash(study)
    if problem:
        return HttpResponse(problem, status=409, content_type="text/plain; charset=utf-8")
    if name == "answers.csv":
        return _attachment(
            StreamingHttpResponse(
                answers_csv_chunks(answer_rows(study, include_removed=include_removed)), content_type=CSV
            ),
            study,
            name,
        )
    if name == "results.zip":
        return _attachment(
            StreamingHttpResponse(
                results_zip_stream(study, include_removed=include_removed), content_type="application/zip"
            ),
            study,
            name,
        )
    try:
        results = study_results(study, include_removed=include_removed)
    except (AnswersError, ValueError) as exc:
        message = f"The answers of this study cannot be analysed: {exc}"
        return HttpResponse(message, status=409, content_type="text/plain; charset=utf-8")
    files = result_files(results.reads, results.summary)
    metrics = metrics_text(study, results.summary)
    if metrics is not None:
        files["metrics.csv"] = metrics
    sessions = sessions_text(study, include_removed=include_removed)
    if sessions is not None:
        files["sessions.csv"] = sessions
    if name not in files:
        raise Http404("No such result file.")
    return _attachment(HttpResponse(files[name], content_type=CSV), study, name)
