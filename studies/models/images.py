"""Image sets and the images readers see, with what researchers keep about their sources."""

import secrets

from django.db import models
from django.db.models import Q


def reader_image_name(instance, filename) -> str:
    # Opaque: no original name, set, model or sequence number, nothing to learn from.
    return f"images/{secrets.token_hex(16)}.png"


def original_name(instance, filename) -> str:
    return f"originals/{secrets.token_hex(16)}"


class ImageSet(models.Model):
    """A named collection of real radiographs that a researcher brought in."""

    name = models.CharField(max_length=200, unique=True)
    description = models.TextField(blank=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


class Image(models.Model):
    """One picture exactly as readers see it: a normalised PNG under an opaque name.

    Real and synthetic images are the same kind of row and the same kind of file;
    only researcher-side fields say which is which.
    """

    class Origin(models.TextChoices):
        REAL = "real", "Real radiograph"
        SYNTHETIC = "synthetic", "Synthetic (generated)"

    origin = models.CharField(max_length=16, choices=Origin.choices)
    image_set = models.ForeignKey(
        ImageSet, null=True, blank=True, on_delete=models.PROTECT, related_name="images"
    )
    file = models.FileField(upload_to=reader_image_name, max_length=100)
    size = models.PositiveIntegerField(help_text="Side of the square reader image, in pixels.")
    png_sha256 = models.CharField(max_length=64, help_text="Hash of the reader image's bytes.")
    # Researcher side only: never in anything a reader can reach.
    source_sha256 = models.CharField(max_length=64, help_text="Hash of the original file's bytes.")
    source_name = models.CharField(max_length=500, blank=True)
    source_format = models.CharField(max_length=16)
    source_width = models.PositiveIntegerField()
    source_height = models.PositiveIntegerField()
    source_bit_depth = models.PositiveSmallIntegerField()
    modality = models.CharField(max_length=16, blank=True)
    photometric = models.CharField(max_length=32, blank=True)
    transfer_syntax = models.CharField(max_length=128, blank=True)
    finding = models.CharField(
        max_length=500, blank=True, help_text="e.g. 'cardiomegaly'; usable as a prompt or caption."
    )
    original = models.FileField(upload_to=original_name, blank=True, max_length=100)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(
                fields=["image_set", "source_sha256"],
                condition=Q(origin="real"),
                name="one_real_image_per_file_and_set",
            ),
            models.CheckConstraint(
                condition=~Q(origin="real") | Q(image_set__isnull=False),
                name="real_images_belong_to_a_set",
            ),
        ]

    def __str__(self):
        return f"{self.get_origin_display()} #{self.pk}"


class ImportJob(models.Model):
    """Files uploaded in the admin, imported by a worker with per-file results."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"

    image_set = models.ForeignKey(ImageSet, on_delete=models.CASCADE, related_name="import_jobs")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    upload_dir = models.CharField(max_length=200, help_text="Folder under MEDIA_ROOT with the upload.")
    total = models.PositiveIntegerField(default=0)
    done = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    created = models.DateTimeField(auto_now_add=True)
    finished = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]

    def __str__(self):
        return f"Import into {self.image_set} ({self.created:%Y-%m-%d %H:%M})"

    def counts(self) -> dict[str, int]:
        found = dict(self.results.values_list("status").annotate(n=models.Count("id")))
        return {status: found.get(status, 0) for status in ImportResult.Status.values}


class ImportResult(models.Model):
    """What happened to one file of an import: imported, duplicate, or refused and why."""

    class Status(models.TextChoices):
        IMPORTED = "imported"
        DUPLICATE = "duplicate"
        REFUSED = "refused"

    job = models.ForeignKey(ImportJob, on_delete=models.CASCADE, related_name="results")
    name = models.CharField(max_length=500)
    status = models.CharField(max_length=16, choices=Status.choices)
    reason = models.TextField(blank=True)
    image = models.ForeignKey(Image, null=True, blank=True, on_delete=models.SET_NULL)

    class Meta:
        ordering = ["id"]
        constraints = [
            # A job redelivered to a second worker must not record a file twice.
            models.UniqueConstraint(fields=["job", "name"], name="one_result_per_file_and_job"),
        ]

    def __str__(self):
        return f"{self.name}: {self.status}"
