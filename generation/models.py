"""Models of the generation app."""

import uuid

from django.db import models


class WorkerReport(models.Model):
    """What a Celery worker says about itself when asked: its host and its device.

    Researchers ask from the admin to see which GPU workers are up before they
    launch generation; the same round trip (web, broker, worker, database) is what
    the end-to-end test of the wiring checks.
    """

    request_id = models.UUIDField(default=uuid.uuid4, db_index=True)
    hostname = models.CharField(max_length=255)
    device = models.CharField(max_length=255, help_text="The accelerator the worker would use.")
    torch_version = models.CharField(max_length=64)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created"]
        constraints = [
            # A task delivered twice (late acks) must not make a second report.
            models.UniqueConstraint(
                fields=["request_id", "hostname"], name="one_report_per_request_and_host"
            ),
        ]

    def __str__(self):
        return f"{self.hostname} ({self.device})"
