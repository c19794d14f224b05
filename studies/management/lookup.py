"""Finding a study from a command line argument: its id or its exact title."""

from django.core.management.base import CommandError

from studies.models import Study


def find_study(ref: str) -> Study:
    """A study by id or by exact title; a clear error otherwise."""
    study = Study.objects.filter(pk=int(ref)).first() if ref.isdigit() else None
    study = study or Study.objects.filter(title=ref).first()
    if study is None:
        known = ", ".join(f"{s.pk} ({s.title})" for s in Study.objects.order_by("pk")[:20]) or "none yet"
        raise CommandError(f"No study {ref!r}. Give its id or exact title; studies: {known}.")
    return study
