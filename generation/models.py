"""The model registry, versioned generation settings, jobs, and each image's provenance."""

import uuid

from django.db import models
from django.db.models import Q
from django.db.models.functions import Mod
from django.db.models.lookups import Exact


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


class GenerativeModel(models.Model):
    """A diffusers pipeline folder that researchers trained, registered for generation."""

    name = models.CharField(max_length=200, unique=True)
    description = models.TextField(blank=True)
    path = models.CharField(
        max_length=1000,
        help_text="Folder with model_index.json (or a .zip of one), read once when registering: "
        "the model is then kept in the storage.",
    )
    pipeline_class = models.CharField(max_length=100)
    lora_path = models.CharField(
        max_length=1000, blank=True, help_text="Optional LoRA adapter (folder or .safetensors file)."
    )
    # The stored copies (generation/store.py): the sha256 of each one's manifest. Empty for a
    # model registered before models were stored: it loads from `path`, which every worker must read.
    digest = models.CharField(
        "stored as", max_length=64, blank=True, help_text="sha256 of the stored pipeline's manifest."
    )
    lora_digest = models.CharField(
        "LoRA stored as", max_length=64, blank=True, help_text="sha256 of the stored adapter's manifest."
    )
    native_size = models.PositiveIntegerField(help_text="Side of the images the pipeline makes by default.")
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    @property
    def has_lora(self) -> bool:
        return bool(self.lora_digest or self.lora_path)

    @property
    def current_version(self) -> "ModelVersion":
        return self.versions.order_by("-number").first()


class ModelVersion(models.Model):
    """One set of generation settings. Frozen once an image was made with it: a change
    then makes the next version, so every image points at the settings that made it."""

    class Scheduler(models.TextChoices):
        PIPELINE = "", "the pipeline's own"
        DDPM = "ddpm", "DDPM"
        DDIM = "ddim", "DDIM"
        DPMPP = "dpmpp", "DPM-Solver++"
        UNIPC = "unipc", "UniPC"
        EULER = "euler", "Euler"

    class Dtype(models.TextChoices):
        AUTO = "auto", "auto (bf16 or fp16 on GPU, fp32 on CPU)"
        FLOAT32 = "float32"
        FLOAT16 = "float16"
        BFLOAT16 = "bfloat16"

    model = models.ForeignKey(GenerativeModel, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    scheduler = models.CharField(max_length=16, choices=Scheduler.choices, blank=True, default="")
    steps = models.PositiveIntegerField(default=50)
    guidance = models.FloatField(default=7.5, help_text="Classifier-free guidance; text models only.")
    size = models.PositiveIntegerField(default=0, help_text="Output side in pixels; 0 for the model's own.")
    prompts = models.JSONField(default=list, blank=True, help_text="Text models: images are spread evenly.")
    negative_prompt = models.TextField(blank=True)
    lora_scale = models.FloatField(default=1.0)
    dtype = models.CharField(max_length=16, choices=Dtype.choices, default=Dtype.AUTO)
    batch_size = models.PositiveIntegerField(default=4, help_text="Images per GPU task.")
    created = models.DateTimeField(auto_now_add=True)

    SETTINGS = [
        "scheduler",
        "steps",
        "guidance",
        "size",
        "prompts",
        "negative_prompt",
        "lora_scale",
        "dtype",
        "batch_size",
    ]

    class Meta:
        ordering = ["model", "number"]
        constraints = [
            models.UniqueConstraint(fields=["model", "number"], name="one_version_number_per_model"),
            models.CheckConstraint(condition=Q(steps__gte=1) & Q(steps__lte=1000), name="steps_in_range"),
            models.CheckConstraint(condition=Q(batch_size__gte=1), name="batch_size_positive"),
        ]

    def __str__(self):
        return f"{self.model.name} v{self.number}"

    def settings_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.SETTINGS}

    @property
    def output_size(self) -> int:
        """What the pipeline is asked for; unconditional pipelines make their own size only."""
        if self.model.pipeline_class in ("DDPMPipeline", "DDIMPipeline", "LDMPipeline"):
            return self.model.native_size
        return self.size or self.model.native_size


class GenerationJob(models.Model):
    """Images to make with one model version: seeds base_seed .. base_seed + count - 1."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"
        CANCELLED = "cancelled"

    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="jobs")
    count = models.PositiveIntegerField()
    base_seed = models.BigIntegerField(default=0)
    is_preview = models.BooleanField(default=False)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    error = models.TextField(blank=True)
    attempt = models.PositiveIntegerField(
        default=1, help_text="Raised by each retry; older tasks stand down."
    )
    deliveries = models.JSONField(default=dict, blank=True, help_text="Times each chunk reached a worker.")
    resends = models.PositiveIntegerField(
        default=0, help_text="Times in a row the sweep sent the missing chunks again (lost by the broker)."
    )
    created = models.DateTimeField(auto_now_add=True)
    started = models.DateTimeField(null=True, blank=True)
    heartbeat = models.DateTimeField(
        null=True, blank=True, help_text="Last sign of life: its chunks queued, or a worker working on it."
    )
    finished = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]
        constraints = [models.CheckConstraint(condition=Q(count__gte=1), name="job_count_positive")]

    def __str__(self):
        return f"{self.version}: {self.count} images from seed {self.base_seed}"

    @property
    def seeds(self) -> range:
        return range(self.base_seed, self.base_seed + self.count)

    def images(self):
        """Every image of this job's seeds, whichever job made it."""
        return GeneratedImage.objects.filter(
            version=self.version, seed__gte=self.base_seed, seed__lt=self.base_seed + self.count
        )


class GeneratedImage(models.Model):
    """Provenance of one synthetic image: exactly how it was made, for the methods section."""

    image = models.OneToOneField("studies.Image", on_delete=models.PROTECT, related_name="generated")
    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="images")
    job = models.ForeignKey(
        GenerationJob, null=True, blank=True, on_delete=models.SET_NULL, related_name="made"
    )
    seed = models.BigIntegerField(help_text="The image's seed: the job's base seed plus its index.")
    used_seed = models.BigIntegerField(help_text="The seed of the pixels; differs if an output was remade.")
    prompt = models.TextField(blank=True)
    negative_prompt = models.TextField(blank=True)
    seconds = models.FloatField(help_text="Generation time of this image (its share of the batch).")
    provenance = models.JSONField(default=dict)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["version", "seed"]
        constraints = [
            # A chunk delivered twice (late acks, a killed worker) never duplicates an image.
            models.UniqueConstraint(fields=["version", "seed"], name="one_image_per_version_and_seed"),
        ]

    def __str__(self):
        return f"{self.version} seed {self.seed}"


class TrainingJob(models.Model):
    """Train a new model from image sets on a GPU worker; on success it is registered as `name`.

    The worker checkpoints every `checkpoint_every` steps in the storage under training/<pk>/,
    and a task that finds a checkpoint there, on any host, resumes from it exactly (same
    weights as a run never stopped).
    """

    class Method(models.TextChoices):
        UNCONDITIONAL = "unconditional", "unconditional (a DDPM UNet from scratch)"
        LORA = "lora", "LoRA adapter on a registered text-to-image model's UNet"
        FULL = "full", "full fine-tune of a registered text-to-image model's UNet"

    class MixedPrecision(models.TextChoices):
        NO = "no", "no (float32)"
        FP16 = "fp16", "fp16 autocast (loss scaling)"
        BF16 = "bf16", "bf16 autocast"

    Status = GenerationJob.Status
    # What the training record keeps and the admin shows, in this order.
    HYPERPARAMETERS = [
        "method",
        "steps",
        "batch_size",
        "learning_rate",
        "resolution",
        "seed",
        "width",
        "checkpoint_every",
        "mixed_precision",
        "ema",
        "snr_gamma",
        "rank",
        "prompt_template",
        "train_text_encoder",
        "preview_every",
    ]

    name = models.CharField(max_length=200, help_text="The name the trained model is registered under.")
    method = models.CharField(max_length=16, choices=Method.choices, default=Method.UNCONDITIONAL)
    base = models.ForeignKey(
        GenerativeModel,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="fine_tunes",
        help_text="The registered text-to-image model that LoRA and full fine-tuning start from.",
    )
    image_sets = models.ManyToManyField("studies.ImageSet", related_name="training_jobs")
    steps = models.PositiveIntegerField()
    batch_size = models.PositiveIntegerField()
    learning_rate = models.FloatField()
    resolution = models.PositiveIntegerField(help_text="Side of the training images and of the model's.")
    seed = models.BigIntegerField(default=0)
    width = models.PositiveIntegerField(default=32, help_text="Channels of the UNet's first level.")
    checkpoint_every = models.PositiveIntegerField(default=500)
    mixed_precision = models.CharField(
        max_length=8, choices=MixedPrecision.choices, default=MixedPrecision.NO
    )
    ema = models.BooleanField(
        "EMA", default=False, help_text="Keep an exponential moving average of the weights."
    )
    snr_gamma = models.FloatField(
        "Min-SNR gamma",
        null=True,
        blank=True,
        help_text="Min-SNR loss weighting (5 is usual); empty for plain MSE.",
    )
    rank = models.PositiveIntegerField("LoRA rank", default=4, help_text="LoRA only: the adapter's rank.")
    prompt_template = models.CharField(
        max_length=500,
        default="chest x-ray, {finding}",
        help_text="Text models: each image's prompt, from its finding.",
    )
    train_text_encoder = models.BooleanField(default=False, help_text="Full fine-tuning only.")
    preview_every = models.PositiveIntegerField(
        default=0, help_text="A grid of preview images at fixed seeds every this many steps; 0 for none."
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    attempt = models.PositiveIntegerField(
        default=1, help_text="Raised by each retry; older tasks stand down."
    )
    resumes = models.PositiveIntegerField(
        default=0, help_text="Times the sweep resumed this job after its worker went silent."
    )
    previews = models.JSONField(
        default=list,
        blank=True,
        help_text='[{"step": n, "file": name under training/ in the storage}] in step order.',
    )
    step = models.PositiveIntegerField(default=0, help_text="Steps done (as of the last report).")
    loss_history = models.JSONField(default=list, blank=True, help_text="[step, mean loss] pairs.")
    error = models.TextField(blank=True)
    model = models.ForeignKey(
        GenerativeModel, null=True, blank=True, on_delete=models.SET_NULL, related_name="training_jobs"
    )
    record = models.JSONField(default=dict, blank=True, help_text="How the model was trained, exactly.")
    created = models.DateTimeField(auto_now_add=True)
    started = models.DateTimeField(null=True, blank=True)
    heartbeat = models.DateTimeField(null=True, blank=True, help_text="Last sign of a worker on this job.")
    finished = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]
        constraints = [
            models.CheckConstraint(condition=Q(steps__gte=1), name="training_steps_positive"),
            models.CheckConstraint(condition=Q(batch_size__gte=1), name="training_batch_positive"),
            models.CheckConstraint(condition=Q(learning_rate__gt=0), name="training_lr_positive"),
            # Eight groups in every normalisation layer: the width must divide by 8.
            models.CheckConstraint(
                condition=Q(width__gte=8) & Exact(Mod("width", 8), 0), name="training_width_multiple_of_8"
            ),
            models.CheckConstraint(condition=Q(checkpoint_every__gte=1), name="training_checkpoint_positive"),
            models.CheckConstraint(condition=Q(rank__gte=1), name="training_rank_positive"),
            models.CheckConstraint(
                condition=Q(snr_gamma__isnull=True) | Q(snr_gamma__gt=0), name="training_snr_gamma_positive"
            ),
            # Three halvings in the UNet: the side must divide by 8.
            models.CheckConstraint(
                condition=Q(resolution__gte=16, resolution__lte=1024) & Exact(Mod("resolution", 8), 0),
                name="training_resolution_in_range_and_multiple_of_8",
            ),
        ]

    def __str__(self):
        return f"Training {self.name} ({self.method}, {self.steps} steps)"


class MeasureJob(models.Model):
    """Machine measures of a model version's images against reference image sets (real
    radiographs), computed on a GPU-queue worker (generation/measure_jobs.py)."""

    class Extractor(models.TextChoices):
        XRV = "xrv-densenet121", "torchxrayvision DenseNet-121 (XRV features)"
        INCEPTION = "inception-v3-fid", "Inception-v3 (the classic FID)"

    Status = GenerationJob.Status

    # What is measured: a model version's images against reference sets, or each arm of a
    # study (its synthetic images of one model) against the study's real images.
    version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.CASCADE, related_name="measure_jobs"
    )
    study = models.ForeignKey(
        "studies.Study", null=True, blank=True, on_delete=models.CASCADE, related_name="measure_jobs"
    )
    reference_sets = models.ManyToManyField(
        "studies.ImageSet",
        blank=True,
        related_name="measure_jobs",
        help_text="Real radiographs to measure a version against (a study's job uses the study's).",
    )
    extractors = models.JSONField(
        default=list, help_text="Extractor names; their weights come from settings."
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    done = models.PositiveIntegerField(default=0, help_text="Images through the extractors so far.")
    total = models.PositiveIntegerField(default=0, help_text="Images to pass through the extractors.")
    results = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    created = models.DateTimeField(auto_now_add=True)
    started = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)
    attempt = models.PositiveIntegerField(
        default=1, help_text="Raised by Retry and the sweep: a task of an earlier attempt stands down."
    )
    heartbeat = models.DateTimeField(null=True, blank=True, help_text="Last sign of a worker on this job.")
    resumes = models.PositiveIntegerField(
        default=0, help_text="Times the sweep sent this job again after its worker fell silent."
    )

    class Meta:
        ordering = ["-created"]
        constraints = [
            models.CheckConstraint(
                condition=Q(version__isnull=True, study__isnull=False)
                | Q(version__isnull=False, study__isnull=True),
                name="measure_job_of_a_version_or_a_study",
            )
        ]

    def __str__(self):
        return f"Measures of {self.study or self.version}"
