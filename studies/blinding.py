"""Blinding across studies: no reader is ever told the truth of an image they score, in any study.

Practice images show the truth after each answer, so an image that is practice in
one study and scored in another would hand the truth to a reader of both. Images
are compared by their source (`source_sha256`), not their row: a study's resized
copy is the same picture, and the same file imported into two sets is two rows
with one source. The draw keeps every study's practice apart from every other
study's scored images, whoever reads them (readers can join later); the checks at
"add reader" and "open" catch what was drawn before that rule, or at the same time.

Nor is a patient shown as real beside a model's copy of them: a model fine-tuned
on a radiograph can reproduce it, so a study's real images leave out whatever a
model under study (or a model it was fine-tuned from) was trained on, and the
audit lists any that a study holds all the same (drawn before the training record).
"""

import random
from collections import Counter
from dataclasses import dataclass
from functools import reduce
from operator import or_

from django.db.models import QuerySet

from .models import Image, Study, StudyImage, StudyReader
from .selectors import Learnt, study_training_images


def _drawn() -> QuerySet[StudyImage]:
    # A draft has no images; every other state keeps what it drew (closed studies too:
    # their readers were told the truth of their practice images for good).
    return StudyImage.objects.exclude(study__status=Study.Status.DRAFT)


@dataclass(frozen=True)
class Pool:
    """The images one draw may use, one per source, by what other studies do with them."""

    free: list[int]  # neither practice nor scored in another study
    scored_elsewhere: list[int]  # may be scored here too, never practice
    practice_elsewhere: list[int]  # may be practice here too, never scored

    def _practice_from_free(self, practice: int) -> int:
        return max(0, practice - len(self.practice_elsewhere))

    def shortage(self, *, scored: int, practice: int) -> int:
        """How many more free images the draw needs (0: it can be made)."""
        from_free = self._practice_from_free(practice)
        return max(
            0,
            from_free - len(self.free),
            scored + from_free - len(self.free) - len(self.scored_elsewhere),
        )

    def draw(self, rng: random.Random, *, scored: int, practice: int) -> tuple[list[int], list[int]]:
        """(scored, practice) image ids; practice reuses other studies' practice first.

        Which images are practice does not matter to the results, and reusing them
        leaves the free images for scoring; the scored images are drawn uniformly
        from everything a study may score.
        """
        reused = rng.sample(self.practice_elsewhere, min(practice, len(self.practice_elsewhere)))
        fresh = rng.sample(self.free, self._practice_from_free(practice))
        taken = set(fresh)
        left = sorted([i for i in self.free if i not in taken] + self.scored_elsewhere)
        return rng.sample(left, scored), reused + fresh


def pool_of(*, study: Study, images: QuerySet[Image]) -> Pool:
    """What `study` may draw from `images`, given every other study's draw."""
    first: dict[str, int] = {}
    for pk, source in images.order_by("pk").values_list("pk", "source_sha256"):
        first.setdefault(source, pk)  # the same file in two sets is one image
    others = _drawn().exclude(study=study).filter(image__source_sha256__in=images.values("source_sha256"))
    uses = set(others.values_list("image__source_sha256", "practice"))
    scored = {source for source, practice in uses if not practice}
    practised = {source for source, practice in uses if practice}
    used = scored | practised
    return Pool(
        free=sorted(pk for source, pk in first.items() if source not in used),
        scored_elsewhere=sorted(pk for source, pk in first.items() if source in scored - practised),
        practice_elsewhere=sorted(pk for source, pk in first.items() if source in practised - scored),
    )


def trained_sources(images: QuerySet[Image], learnt: list[Learnt]) -> set[str]:
    """The sources of `images` that a model learnt from (by row, source or reader PNG): every copy goes."""
    if not learnt:
        return set()
    return set(
        images.filter(reduce(or_, (each.matches() for each in learnt))).values_list(
            "source_sha256", flat=True
        )
    )


def trained_counts(images: QuerySet[Image], learnt: list[Learnt]) -> tuple[int, str]:
    """How many sources of `images` the models learnt from, and how many each ('' when none)."""
    total = len(trained_sources(images, learnt))
    if not total:
        return 0, ""
    return total, "; ".join(f"{len(trained_sources(images, [each]))} trained {each.label}" for each in learnt)


@dataclass(frozen=True)
class Overlap:
    """Images that are practice in one study (their truth shown) and scored in another (or the same)."""

    practice_study: Study
    scored_study: Study
    images: int

    def describe(self) -> str:
        n = self.images
        images = f"{n} image{'s' if n != 1 else ''}"
        if self.practice_study == self.scored_study:
            return (
                f"{images} of “{self.scored_study}” {'are' if n != 1 else 'is'} both practice and scored "
                "there (the same file in two image sets)"
            )
        return (
            f"{images} scored in “{self.scored_study}” {'are' if n != 1 else 'is'} practice in "
            f"“{self.practice_study}”, where each answer shows the truth"
        )

    def as_dict(self) -> dict:
        return {
            "practice_study": self.practice_study.pk,
            "practice_title": str(self.practice_study),
            "scored_study": self.scored_study.pk,
            "scored_title": str(self.scored_study),
            "images": self.images,
            "text": self.describe(),
        }


def overlaps(*, practice_in, scored_in) -> list[Overlap]:
    """Every (practice study, scored study) pair among those given that shares a source image."""
    practice = _drawn().filter(study__in=practice_in, practice=True)
    scored = _drawn().filter(
        study__in=scored_in, practice=False, image__source_sha256__in=practice.values("image__source_sha256")
    )
    told: dict[str, set[int]] = {}
    for study_id, source in practice.values_list("study_id", "image__source_sha256"):
        told.setdefault(source, set()).add(study_id)
    shared = {
        (practised_in, study_id, source)
        for study_id, source in scored.values_list("study_id", "image__source_sha256")
        for practised_in in told[source]
    }
    counts = Counter((practised_in, scored_in) for practised_in, scored_in, _ in shared)
    studies = Study.objects.in_bulk({pk for pair in counts for pk in pair})
    return [
        Overlap(practice_study=studies[p], scored_study=studies[s], images=n)
        for (p, s), n in sorted(counts.items())
    ]


@dataclass(frozen=True)
class TrainingOverlap:
    """A real image of a study that a model under study was trained on."""

    image: Image
    practice: bool
    learnt: Learnt

    def as_dict(self) -> dict:
        return {
            "image": self.image.pk,
            "source_name": self.image.source_name,
            "practice": self.practice,
            "model": self.learnt.model,
            "trained": self.learnt.trained,
            "text": f"image {self.image.pk} trained {self.learnt.label}",
        }


def training_overlaps(study: Study) -> list[TrainingOverlap]:
    """The study's real images (practice too) that a model under study learnt from, by model and image."""
    rows = study.images.filter(image__origin=Image.Origin.REAL).select_related("image").order_by("image_id")
    return [
        TrainingOverlap(image=row.image, practice=row.practice, learnt=learnt)
        for learnt in study_training_images(study)
        for row in rows.filter(learnt.matches("image__"))
    ]


def training_problems(study: Study, found: list[TrainingOverlap]) -> list[str]:
    """The audit's warnings for these overlaps, one per model, naming the images."""
    by_model: dict[str, list[int]] = {}
    for overlap in found:
        by_model.setdefault(overlap.learnt.label, []).append(overlap.image.pk)
    problems = []
    for label, ids in by_model.items():
        n, s = len(ids), "s" if len(ids) != 1 else ""
        named = ", ".join(map(str, ids[:10])) + (f" and {n - 10} more" if n > 10 else "")
        problems.append(
            f"{n} real image{s} of “{study}” trained {label} (image{s} {named}): "
            "readers would compare a patient with the model's copy of them; "
            "a study not yet open leaves them out when sent back to draft and prepared again"
        )
    return problems


def study_overlaps(study: Study) -> list[Overlap]:
    """Where this study's images are practice in one study and scored in another, itself included."""
    everywhere = Study.objects.all()
    return overlaps(practice_in=everywhere, scored_in=[study.pk]) + overlaps(
        practice_in=[study.pk], scored_in=everywhere.exclude(pk=study.pk)
    )


def reader_overlaps(*, study: Study, reader) -> list[Overlap]:
    """Overlaps of `study` with the studies `reader` is in, either way round (and within `study`)."""
    theirs = set(StudyReader.objects.filter(reader=reader).values_list("study_id", flat=True)) - {study.pk}
    return overlaps(practice_in=[study.pk], scored_in=[study.pk, *theirs]) + overlaps(
        practice_in=theirs, scored_in=[study.pk]
    )


def reader_problem(*, study: Study, reader) -> str:
    """Why `reader` cannot read in `study` without being told the truth of an image they score, or ''."""
    found = reader_overlaps(study=study, reader=reader)
    if not found:
        return ""
    remedy = "Choose another reader for it"
    if study.status in (Study.Status.PREPARING, Study.Status.READY):
        remedy += (
            f", or send “{study}” back to draft and prepare it again: a new draw leaves out other "
            "studies' practice and scored images"
        )
    return (
        f"{reader} cannot read in “{study}”: "
        + "; ".join(overlap.describe() for overlap in found)
        + f". A reader must never be told the truth of an image they score. {remedy}."
    )


def truth_may_be_shown(*, presentation) -> bool:
    """Whether a practice answer may show its truth: not where its reader scores the same image anywhere.

    The draw and the checks at "add reader" and "open" keep this from happening;
    this is the last line, for overlaps made before them (both studies already open).
    """
    return presentation.is_practice and not (
        StudyImage.objects.filter(
            practice=False,
            image__source_sha256=presentation.image.source_sha256,
            study__readers__reader=presentation.reader_id,
        ).exists()
    )
