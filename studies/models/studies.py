"""Studies and the presentations that make up each reader's sequence."""

import uuid

from django.conf import settings
from django.db import models


class Study(models.Model):
    """A reader study: which images, which readers, in which state."""

    class Status(models.TextChoices):
        DRAFT = "draft"
        PREPARING = "preparing"
        READY = "ready"
        OPEN = "open"
        CLOSED = "closed"

    title = models.CharField(max_length=200)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT)
    image_size = models.PositiveIntegerField(default=512, help_text="Side of the square images, in pixels.")
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created"]
        verbose_name_plural = "studies"

    def __str__(self):
        return self.title


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
