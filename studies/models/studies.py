"""Studies, readers' sequences of presentations, and their answers."""

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q


class Study(models.Model):
    """A reader study: which images, which readers, how they answer, in which state."""

    class Status(models.TextChoices):
        DRAFT = "draft"
        PREPARING = "preparing"
        READY = "ready"
        OPEN = "open"
        CLOSED = "closed"

    title = models.CharField(max_length=200)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT)
    instructions = models.TextField(blank=True, help_text="Shown to readers; Markdown.")
    image_size = models.PositiveIntegerField(default=512, help_text="Side of the square images, in pixels.")
    allow_unsure = models.BooleanField(default=True)
    ask_confidence = models.BooleanField(
        default=False, help_text="Ask a confidence from 1 to 5 with each answer."
    )
    allow_back = models.BooleanField(default=False, help_text="Let readers go back and change answers.")
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created"]
        verbose_name_plural = "studies"

    def __str__(self):
        return self.title


class StudyReader(models.Model):
    """A reader's place in a study: their own shuffled sequence, and its seed."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="readers")
    reader = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="study_places"
    )
    seed = models.BigIntegerField(help_text="Seed of the shuffle, from a secure random source; recorded.")
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["study", "reader"]
        constraints = [
            models.UniqueConstraint(fields=["study", "reader"], name="one_place_per_reader_and_study")
        ]

    def __str__(self):
        return f"{self.reader} in {self.study}"


class Presentation(models.Model):
    """One image shown to one reader at one place in their sequence.

    Readers' URLs carry this random id, never the image's: the same image shown
    twice (an intra-reader repeat) gets two unrelated ids.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="presentations")
    reader = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="presentations"
    )
    image = models.ForeignKey("studies.Image", on_delete=models.PROTECT, related_name="presentations")
    position = models.PositiveIntegerField()

    class Meta:
        ordering = ["study", "reader", "position"]
        constraints = [
            models.UniqueConstraint(fields=["study", "reader", "position"], name="one_image_per_place"),
        ]

    def __str__(self):
        return f"{self.study} · {self.reader} · #{self.position + 1}"


class Answer(models.Model):
    """A reader's label for one presentation. One per presentation, by constraint."""

    class Label(models.TextChoices):
        REAL = "real", "Real"
        FAKE = "fake", "Fake"
        UNSURE = "unsure", "Unsure"

    presentation = models.OneToOneField(Presentation, on_delete=models.CASCADE, related_name="answer")
    label = models.CharField(max_length=8, choices=Label.choices)
    confidence = models.PositiveSmallIntegerField(null=True, blank=True)
    viewing_ms = models.PositiveIntegerField(
        help_text="From the image being shown to the answer, pauses excluded."
    )
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["presentation__study", "presentation__reader", "presentation__position"]
        constraints = [
            models.CheckConstraint(
                condition=Q(label__in=["real", "fake", "unsure"]), name="answer_label_known"
            ),
            models.CheckConstraint(
                condition=Q(confidence__isnull=True) | Q(confidence__gte=1, confidence__lte=5),
                name="answer_confidence_1_to_5",
            ),
        ]

    def __str__(self):
        return f"{self.presentation}: {self.label}"
