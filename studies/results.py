"""A study's results for its page: the reads from the database through the one analysis, cached.

The analysis is recomputed only when an answer is added or changed (or the
study changes state): the cache key holds the number of answers and the time
of the latest one.
"""

import hashlib
from dataclasses import dataclass

from django.core.cache import cache
from django.db.models import Count, Max

from analysis.reads import Reads, ReadsBuilder
from analysis.summary import DEFAULT_REPLICATES, DEFAULT_SEED, Summary, summarize

from .exports import answer_rows, reader_pseudonyms, study_arms, tee
from .models import Answer, Presentation, Study

CACHE_SECONDS = 3600


@dataclass
class StudyResults:
    study_id: int
    reads: Reads
    summary: Summary
    interim: bool  # the study is still open: more answers may come
    expected_reads: int  # presentations outside practice (what a finished study has)


def study_reads(study: Study, *, include_removed: bool = False) -> Reads:
    builder = ReadsBuilder()
    for _ in tee(answer_rows(study, include_removed=include_removed), builder):
        pass
    return builder.build()


def study_results(
    study: Study, *, replicates=DEFAULT_REPLICATES, seed=DEFAULT_SEED, include_removed: bool = False
) -> StudyResults:
    stamp = Answer.objects.filter(presentation__study=study, presentation__is_practice=False).aggregate(
        n=Count("pk"), last=Max("updated")
    )
    arms = study_arms(study)
    key = (
        "results:"
        + hashlib.sha256(
            f"{study.pk}:{study.status}:{sorted(reader_pseudonyms(study, include_removed=include_removed))}:"
            f"{stamp['n']}:"
            f"{stamp['last'] and stamp['last'].timestamp()}:"
            f"{'|'.join(arms)}:{replicates}:{seed}".encode()
        ).hexdigest()
    )
    found = cache.get(key)
    if found is not None:
        return found
    reads = study_reads(study, include_removed=include_removed)
    results = StudyResults(
        study_id=study.pk,
        reads=reads,
        summary=summarize(reads, models=arms, replicates=replicates, seed=seed),
        interim=study.status != Study.Status.CLOSED,
        expected_reads=Presentation.objects.filter(
            study=study,
            is_practice=False,
            reader__in=list(reader_pseudonyms(study, include_removed=include_removed)),
        ).count(),
    )
    cache.set(key, results, CACHE_SECONDS)
    return results
