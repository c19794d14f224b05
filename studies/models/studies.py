"""Studies, readers' sequences of presentations, and their answers."""

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q

from .images import reader_image_name

# A study's default list of what may give a synthetic chest radiograph away; editable per study.
DEFAULT_REASONS = (
    "Anatomy",
    "Texture or noise",
    "Bones",
    "Devices or lines",
    "Text or markers",
    "Edges or borders",
    "Other",
)
MAX_REASONS = 9  # one digit key each
MAX_REASON_LENGTH = 60
MAX_REASON_TEXT = 500


def default_reason_choices() -> list[str]:
    return list(DEFAULT_REASONS)


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

    class AskReasons(models.TextChoices):
        NEVER = "never", "Never"
        FAKE = "fake", "On images called fake"
        ALWAYS = "always", "On every image"

    ask_reasons = models.CharField(
        max_length=8,
        choices=AskReasons.choices,
        default=AskReasons.NEVER,
        help_text="Ask readers what gave an image away (keys 1-9 after the label).",
    )
    reason_choices = models.JSONField(
        default=default_reason_choices,
        blank=True,
        help_text="The reasons offered, in order (at most 9: one key each).",
    )
    reasons_required = models.BooleanField(
        default=False, help_text="A reader must give at least one reason (or a note) where reasons are asked."
    )
    ask_reason_text = models.BooleanField(
        default=False, help_text="Offer a short free-text note with the reasons."
    )
    ask_region = models.CharField(
        max_length=8,
        choices=AskReasons.choices,
        default=AskReasons.NEVER,
        help_text="Ask readers to mark where the image gave itself away: a click marks a point, a drag "
        "a box, at any zoom.",
    )
    region_required = models.BooleanField(
        default=False, help_text="A reader must mark a region where one is asked."
    )

    class DisplayCheck(models.TextChoices):
        OFF = "off", "Off"
        OFFERED = "offered", "Offered (a reader may skip it)"
        REQUIRED = "required", "Required (a reader must pass it to read)"

    display_check = models.CharField(
        max_length=8,
        choices=DisplayCheck.choices,
        default=DisplayCheck.OFF,
        help_text="A grey-level test pattern before the first image of each reading session: can the "
        "reader see faint patches at the dark and bright ends? The result, screen size and pixel "
        "ratio are stored with the session.",
    )
    break_every_images = models.PositiveIntegerField(
        null=True, blank=True, help_text="Optional: remind the reader to take a break after this many images."
    )
    break_every_minutes = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Optional: remind the reader to take a break after this many minutes.",
    )
    session_max_images = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Optional: at most this many images in one reading session; the reader then stops "
        "until a break of at least the session gap (30 minutes) has passed.",
    )
    # What the study shows: drawn at "prepare", frozen when the study opens.
    real_sets = models.ManyToManyField(
        "studies.ImageSet",
        blank=True,
        related_name="studies",
        help_text="Sets to draw real radiographs from.",
    )
    real_count = models.PositiveIntegerField(default=0, help_text="How many real radiographs.")
    repeat_percent = models.PositiveSmallIntegerField(
        default=0,
        help_text="Intra-reader repeats: this share of images (0 to 50%) is shown a second time, "
        "at least half a sequence after the first.",
    )
    washout_hours = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Optional, with repeats: at least this many hours between a reader's first reads and "
        "their repeats (a washout). The repeats then come after all first showings, and open to the "
        "reader this long after their last first read.",
    )
    practice_count = models.PositiveSmallIntegerField(
        default=0,
        help_text="Practice images before the study, with the truth shown after each answer; "
        "drawn from images outside the study, half real, half synthetic.",
    )
    time_limit_seconds = models.PositiveIntegerField(
        null=True, blank=True, help_text="Optional: the image is hidden after this many seconds of viewing."
    )
    selection_seed = models.BigIntegerField(
        null=True, blank=True, editable=False, help_text="Seed of the draw of images (secure, recorded)."
    )
    audit_report = models.JSONField(default=dict, blank=True, editable=False)
    preparation_error = models.TextField(
        blank=True, editable=False, help_text="Why the draw of a preparing study failed on a worker, if so."
    )
    override_reason = models.TextField(
        blank=True, editable=False, help_text="Why the study was opened although the blinding audit warned."
    )
    opened_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        editable=False,
        related_name="+",
    )
    opened = models.DateTimeField(null=True, blank=True, editable=False)
    closed = models.DateTimeField(null=True, blank=True, editable=False)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created"]
        verbose_name_plural = "studies"

    def __str__(self):
        return self.title

    @property
    def is_editable(self) -> bool:
        """What the study shows can change only in a draft; "prepare" draws from it."""
        return self.status == self.Status.DRAFT


class StudyModel(models.Model):
    """An arm of a study: a generative model and how many of its images to show."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="arms")
    model = models.ForeignKey("generation.GenerativeModel", on_delete=models.PROTECT, related_name="+")
    count = models.PositiveIntegerField(help_text="How many of its images to show.")
    version = models.ForeignKey(
        "generation.ModelVersion",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        editable=False,
        related_name="+",
        help_text="The settings version the images come from, fixed at prepare.",
    )
    job = models.ForeignKey(
        "generation.GenerationJob",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        editable=False,
        related_name="+",
        help_text="The job that made what was missing.",
    )

    class Meta:
        ordering = ["study", "model__name"]
        verbose_name = "model arm"
        constraints = [
            models.UniqueConstraint(fields=["study", "model"], name="one_arm_per_model_and_study"),
            models.CheckConstraint(condition=Q(count__gte=1), name="arm_count_positive"),
        ]

    def __str__(self):
        return f"{self.count} images of {self.model}"


def study_image_name(instance, filename) -> str:
    return reader_image_name(instance, filename)


class StudyImage(models.Model):
    """An image drawn for a study (or for its practice), frozen once the study opens.

    `file` holds the image at the study's size where that differs from the stored
    reader image; real and synthetic images are resized the same way, from the
    same kind of file.
    """

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="images")
    image = models.ForeignKey("studies.Image", on_delete=models.PROTECT, related_name="+")
    practice = models.BooleanField(default=False)
    file = models.FileField(upload_to=study_image_name, blank=True, max_length=100)

    class Meta:
        ordering = ["study", "id"]
        constraints = [
            models.UniqueConstraint(fields=["study", "image"], name="one_place_per_image_and_study")
        ]

    def __str__(self):
        return f"{self.image} in {self.study}" + (" (practice)" if self.practice else "")


class StudyReader(models.Model):
    """A reader's place in a study: their own shuffled sequence, and its seed."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="readers")
    reader = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="study_places"
    )
    seed = models.BigIntegerField(help_text="Seed of the shuffle, from a secure random source; recorded.")
    number = models.PositiveIntegerField(
        editable=False,
        help_text="The reader's number in this study, in the order they joined: R001, R002, ...",
    )
    created = models.DateTimeField(auto_now_add=True)
    removed = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When a researcher took the reader out of the study: they reach nothing of it, and "
        "their answers, kept, count in results only when asked. Empty: a member.",
    )

    class Meta:
        ordering = ["study", "reader"]
        constraints = [
            models.UniqueConstraint(fields=["study", "reader"], name="one_place_per_reader_and_study"),
            models.UniqueConstraint(fields=["study", "number"], name="one_reader_per_number_and_study"),
        ]

    def __str__(self):
        return f"{self.reader} in {self.study}"

    @property
    def pseudonym(self) -> str:
        """How exports and results name the reader: fixed for good, whoever joins or leaves later."""
        return pseudonym(self.number)


def pseudonym(number: int) -> str:
    return f"R{number:03d}"


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
    is_repeat = models.BooleanField(default=False, help_text="The second showing of an image to this reader.")
    is_practice = models.BooleanField(
        default=False, help_text="Practice: the truth is shown after the answer."
    )

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
    reasons = models.JSONField(
        default=list, blank=True, help_text="What gave the image away, from the study's list, in its order."
    )
    reason_text = models.CharField(max_length=MAX_REASON_TEXT, blank=True, help_text="The reader's own note.")
    region = models.JSONField(
        null=True,
        blank=True,
        help_text="Where the image gave itself away, in pixels of the image the reader saw: "
        '{"kind": "point" or "box", "x0", "y0", "x1", "y1" (inclusive; a point has x1 = x0, y1 = y0), '
        '"size": the side of that square image}. Empty: none marked.',
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


class ReadingSession(models.Model):
    """A stretch of one reader's work on one study: it begins when the labelling page opens after
    more than SESSION_GAP without an answer, and goes on while answers keep coming."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="sessions")
    reader = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    number = models.PositiveIntegerField(
        help_text="1 for the reader's first session in the study, then 2, ..."
    )
    started = models.DateTimeField()
    last_seen = models.DateTimeField(help_text="The session's latest answer (or its start).")
    answers = models.PositiveIntegerField(default=0, help_text="Images answered in the session.")
    viewing_ms = models.PositiveBigIntegerField(default=0, help_text="Viewing time of those answers.")
    screen_width = models.PositiveIntegerField(null=True, blank=True, help_text="CSS pixels.")
    screen_height = models.PositiveIntegerField(null=True, blank=True, help_text="CSS pixels.")
    pixel_ratio = models.FloatField(null=True, blank=True, help_text="Device pixels per CSS pixel.")

    class Check(models.TextChoices):
        NONE = "", "Not done"
        PASSED = "passed", "Passed"
        FAILED = "failed", "Failed"
        SKIPPED = "skipped", "Skipped"

    display_check = models.CharField(max_length=8, choices=Check.choices, default=Check.NONE, blank=True)
    display_detail = models.JSONField(
        default=dict, blank=True, help_text="Where each faint patch was, and where the reader saw it."
    )

    class Meta:
        ordering = ["study", "reader", "number"]
        constraints = [
            models.UniqueConstraint(
                fields=["study", "reader", "number"], name="one_session_number_per_reader"
            )
        ]

    def __str__(self):
        return f"{self.reader} in {self.study}, session {self.number}"
