from django.contrib import admin, messages
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.views.decorators.http import require_POST

from .forms import GenerateForm, GenerativeModelForm, MeasureForm
from .jobs import job_cancel, job_launch, job_progress, job_retry
from .measure_jobs import MeasureRefused, measure_cancel, measure_job_create, measure_retry
from .models import (
    GeneratedImage,
    GenerationJob,
    GenerativeModel,
    MeasureJob,
    ModelVersion,
    TrainingJob,
    WorkerReport,
)
from .operations import queue_lengths, workers_now
from .registry import ModelRefused
from .services import model_register, model_settings_update, worker_reports_request
from .training_admin import FINE_TUNABLE, fine_tune_view, training_form_view, training_record

PREVIEW_COUNT = 4


@admin.register(WorkerReport)
class WorkerReportAdmin(admin.ModelAdmin):
    list_display = ["hostname", "device", "torch_version", "created"]
    readonly_fields = ["request_id", "hostname", "device", "torch_version", "created"]
    change_list_template = "admin/generation/workerreport/change_list.html"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def get_urls(self):
        ask = self.admin_site.admin_view(require_POST(self.ask_view))
        return [path("ask/", ask, name="generation_workerreport_ask"), *super().get_urls()]

    def changelist_view(self, request, extra_context=None):
        """Workers and queues now (asked of the broker as the page is shown), then past reports."""
        context = {
            "title": "Workers and queues",
            "workers_now": workers_now(),
            "queue_lengths": queue_lengths(),
            **(extra_context or {}),
        }
        return super().changelist_view(request, extra_context=context)

    def ask_view(self, request):
        worker_reports_request()
        messages.info(request, "Asked a GPU worker to report. Reload this page in a few seconds.")
        return redirect("admin:generation_workerreport_changelist")


@admin.register(GenerativeModel)
class GenerativeModelAdmin(admin.ModelAdmin):
    form = GenerativeModelForm
    list_display = ["name", "pipeline_class", "native_size", "version_number", "image_count", "created"]
    readonly_fields = ["pipeline_class", "native_size", "preview", "versions", "training"]
    change_form_template = "admin/generation/generativemodel/change_form.html"
    change_list_template = "admin/generation/generativemodel/change_list.html"

    def get_readonly_fields(self, request, obj=None):
        # The weights are fixed once registered (shown as text, not as a box): new weights, new model.
        fixed = ["path", "lora_path", "digest", "lora_digest"] if obj else []
        return [*fixed, *self.readonly_fields]

    def get_fieldsets(self, request, obj=None):
        settings = list(ModelVersion.SETTINGS)
        first = ["name", "description", "path", "lora_path"] + (
            ["digest", "lora_digest", "pipeline_class", "native_size"] if obj else []
        )
        sets = [(None, {"fields": first}), ("Generation settings", {"fields": settings})]
        if obj:
            sets.append(("Preview", {"fields": ["preview"]}))
            sets.append(("Versions", {"fields": ["versions"]}))
            sets.append(("Training record", {"fields": ["training"]}))
        return sets

    @admin.display(description="How it was trained")
    def training(self, obj):
        return training_record(self._made_by(obj))

    @staticmethod
    def _made_by(obj) -> TrainingJob | None:
        return obj.training_jobs.filter(status=TrainingJob.Status.DONE).order_by("-finished").first()

    @admin.display(description="Settings that made images are frozen; a change makes a new version")
    def versions(self, obj):
        rows = [
            (
                v.number,
                v.get_scheduler_display(),
                v.steps,
                v.guidance,
                v.output_size,
                "; ".join(v.prompts),
                v.negative_prompt,
                v.lora_scale,
                v.dtype,
                v.batch_size,
                v.images.count(),
                f"{v.created:%Y-%m-%d %H:%M}",
            )
            for v in obj.versions.order_by("-number")
        ]
        head = (
            "Version",
            "Scheduler",
            "Steps",
            "Guidance",
            "Size",
            "Prompts",
            "Negative prompt",
            "LoRA scale",
            "Dtype",
            "Batch",
            "Images",
            "Created",
        )
        return format_html(
            "<table><thead><tr>{}</tr></thead><tbody>{}</tbody></table>",
            format_html_join("", "<th>{}</th>", ((h,) for h in head)),
            format_html_join("", "<tr>" + "<td>{}</td>" * len(head) + "</tr>", rows),
        )

    @admin.display(description="Version")
    def version_number(self, obj):
        return obj.current_version.number

    @admin.display(description="Images")
    def image_count(self, obj):
        return GeneratedImage.objects.filter(version__model=obj).count()

    @admin.display(description="Preview (seeds 0 to 3 of the current version)")
    def preview(self, obj):
        images = list(
            GeneratedImage.objects.filter(version=obj.current_version, seed__lt=PREVIEW_COUNT, seed__gte=0)
            .select_related("image")
            .order_by("seed")
        )
        if not images:
            return "No preview yet: press “Preview” above."
        return format_html(
            "".join(
                '<img src="{}" alt="seed {}" width="150" height="150" style="margin:0 6px 6px 0">'
                for _ in images
            ),
            *[
                part
                for g in images
                for part in (reverse("admin:studies_image_png", args=[g.image_id]), g.seed)
            ],
        )

    def save_model(self, request, obj, form, change):
        if change:
            obj.save()
            version = model_settings_update(model=obj, **form.settings())
            messages.info(request, f"Generation settings are now version {version.number}.")
            return
        try:
            registered = model_register(
                name=obj.name,
                path=obj.path,
                lora_path=obj.lora_path,
                description=obj.description,
                **form.settings(),
            )
        except ModelRefused as exc:
            messages.error(request, f"Refused: {exc}")
            raise
        obj.pk = registered.pk
        obj.refresh_from_db()

    def add_view(self, request, form_url="", extra_context=None):
        try:
            return super().add_view(request, form_url, extra_context)
        except ModelRefused:
            return redirect("admin:generation_generativemodel_add")

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path("<int:pk>/preview/", wrap(require_POST(self.preview_view)), name="generation_model_preview"),
            path("<int:pk>/generate/", wrap(self.generate_view), name="generation_model_generate"),
            path("train/", wrap(self.train_view), name="generation_model_train"),
            path("<int:pk>/fine-tune/", wrap(self.fine_tune_view), name="generation_model_fine_tune"),
            path("<int:pk>/measure/", wrap(self.measure_view), name="generation_model_measure"),
            *super().get_urls(),
        ]

    def preview_view(self, request, pk):
        model = get_object_or_404(GenerativeModel, pk=pk)
        job = job_launch(version=model.current_version, count=PREVIEW_COUNT, base_seed=0, is_preview=True)
        messages.info(request, "A worker is making the preview; it appears here when done.")
        return redirect("admin:generation_generationjob_change", job.pk)

    def train_view(self, request):
        return training_form_view(self, request)

    def fine_tune_view(self, request, pk):
        return fine_tune_view(self, request, pk)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra = {"fine_tunable": FINE_TUNABLE}
        return super().change_view(request, object_id, form_url, {**(extra_context or {}), **extra})

    def generate_view(self, request, pk):
        model = get_object_or_404(GenerativeModel, pk=pk)
        form = GenerateForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            job = job_launch(
                version=model.current_version,
                count=form.cleaned_data["count"],
                base_seed=form.cleaned_data["seed"],
            )
            return redirect("admin:generation_generationjob_change", job.pk)
        return self._model_form_page(request, model, form, f"Generate images with {model}", "generate.html")

    def measure_view(self, request, pk):
        model = get_object_or_404(GenerativeModel, pk=pk)
        form = MeasureForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                job = measure_job_create(
                    version=model.current_version,
                    reference_sets=form.cleaned_data["reference_sets"],
                    extractors=form.cleaned_data["extractors"],
                )
            except MeasureRefused as exc:
                form.add_error(None, str(exc))
            else:
                return redirect("admin:generation_measurejob_change", job.pk)
        return self._model_form_page(request, model, form, f"Measure the realism of {model}", "measure.html")

    def _model_form_page(self, request, model, form, title: str, template: str):
        """A form about one model, under the admin's header and the model's breadcrumbs."""
        context = {
            **self.admin_site.each_context(request),
            "form": form,
            "model": model,
            "opts": self.model._meta,
            "title": title,
        }
        return TemplateResponse(request, f"admin/generation/generativemodel/{template}", context)


@admin.register(GenerationJob)
class GenerationJobAdmin(admin.ModelAdmin):
    list_display = ["__str__", "status", "progress", "created", "finished"]
    list_filter = ["status", "version__model"]
    fields = [
        "version",
        "count",
        "base_seed",
        "is_preview",
        "status",
        "error",
        "created",
        "started",
        "finished",
    ]
    readonly_fields = fields
    actions = ["cancel", "retry"]
    change_form_template = "admin/generation/generationjob/change_form.html"

    def has_add_permission(self, request):
        return False

    @admin.display(description="Progress")
    def progress(self, obj):
        p = job_progress(obj)
        return format_html(
            '<progress max="{}" value="{}"></progress> {} / {}', p.total, p.done, p.done, p.total
        )

    @admin.action(description="Cancel the selected jobs")
    def cancel(self, request, queryset):
        n = sum(job_cancel(job=job) for job in queryset)
        messages.info(request, f"{n} job(s) cancelled.")

    @admin.action(description="Retry the selected failed or cancelled jobs (makes only what is missing)")
    def retry(self, request, queryset):
        n = sum(job_retry(job=job) for job in queryset)
        messages.info(request, f"{n} job(s) queued again.")

    def change_view(self, request, object_id, form_url="", extra_context=None):
        job = self.get_object(request, object_id)
        extra = {"job": job}
        if job:
            extra["progress"] = job_progress(job)
            extra["images"] = (
                job.images().select_related("image").order_by("seed")[:8] if job.is_preview else []
            )
        return super().change_view(request, object_id, form_url, {**(extra_context or {}), **extra})


@admin.register(MeasureJob)
class MeasureJobAdmin(admin.ModelAdmin):
    list_display = ["__str__", "status", "progress", "created", "finished"]
    list_filter = ["status", "version__model", "study"]
    fields = [
        "version",
        "study",
        "reference_sets",
        "extractors",
        "status",
        "error",
        "created",
        "started",
        "finished",
    ]
    readonly_fields = fields
    actions = ["cancel", "retry"]
    change_form_template = "admin/generation/measurejob/change_form.html"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False  # a record of what was computed: shown, never edited

    @admin.action(description="Cancel the selected measure jobs")
    def cancel(self, request, queryset):
        n = sum(measure_cancel(job=job) for job in queryset)
        messages.info(request, f"{n} measure job(s) cancelled.")

    @admin.action(description="Retry the selected failed or cancelled measure jobs")
    def retry(self, request, queryset):
        n = sum(measure_retry(job=job) for job in queryset)
        messages.info(request, f"{n} measure job(s) queued again.")

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path("<int:pk>/cancel/", wrap(require_POST(self.cancel_view)), name="generation_measure_cancel"),
            path("<int:pk>/retry/", wrap(require_POST(self.retry_view)), name="generation_measure_retry"),
            *super().get_urls(),
        ]

    def cancel_view(self, request, pk):
        job = get_object_or_404(MeasureJob, pk=pk)
        if measure_cancel(job=job):
            messages.success(request, "Cancelled: the worker stops after its current batch of images.")
        else:
            messages.warning(request, f"Not cancelled: the job is {job.get_status_display()}.")
        return redirect("admin:generation_measurejob_change", job.pk)

    def retry_view(self, request, pk):
        job = get_object_or_404(MeasureJob, pk=pk)
        if measure_retry(job=job):
            messages.success(request, f"Queued again (attempt {job.attempt}); it starts from the beginning.")
        else:
            status = job.get_status_display()
            messages.warning(request, f"Not retried: only a failed or cancelled job can be; it is {status}.")
        return redirect("admin:generation_measurejob_change", job.pk)

    @admin.display(description="Progress")
    def progress(self, obj):
        return format_html(
            '<progress max="{}" value="{}"></progress> {} / {}', obj.total, obj.done, obj.done, obj.total
        )

    def change_view(self, request, object_id, form_url="", extra_context=None):
        job = self.get_object(request, object_id)
        extra = {"job": job, "report": measure_report(job) if job else None}
        return super().change_view(request, object_id, form_url, {**(extra_context or {}), **extra})


def measure_report(job: MeasureJob) -> dict:
    """What the job's page shows, per arm (a version's job has one): a row per extractor, the
    diversity, and each flagged image beside its nearest neighbour."""
    results = job.results or {}
    arms = results["arms"].items() if "arms" in results else [("", results)]
    return {
        "arms": [{"name": name, **_arm_report(found)} for name, found in arms],
        "left_out": results.get("left_out", []),
        "n_real": results.get("n_real"),
    }


def _arm_report(results: dict) -> dict:
    rows = []
    for name, figures in results.get("extractors", {}).items():
        rows.append({"name": name, **figures})
    memorisation = results.get("memorisation", {})
    pairs = []
    for kind in ("training", "reference"):
        for row in (memorisation.get(kind) or {}).get("flagged", []):
            pairs.append({"kind": kind, **row})
    return {
        "extractors": rows,
        "diversity": results.get("diversity", {}),
        "memorisation": memorisation,
        "pairs": pairs,
        "n": {key: results.get(key) for key in ("n_synthetic", "n_real", "n_training")},
    }
