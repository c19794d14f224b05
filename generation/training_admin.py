"""Training in the admin: the Train new and Fine-tune form, a job's live page with Cancel,
Retry, its loss curve and preview grids, and a trained model's training record.

Pages only read and call the web-side services (generation/training_jobs.py); the workers
move the jobs on.
"""

from pathlib import PurePosixPath

from django.contrib import admin, messages
from django.core.files.storage import default_storage
from django.http import FileResponse, Http404
from django.shortcuts import get_object_or_404, redirect
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import path
from django.utils.html import format_html
from django.utils.text import capfirst
from django.views.decorators.http import require_POST

from .forms import TrainingForm
from .models import GenerativeModel, TrainingJob
from .plots import loss_curve
from .training_jobs import (
    FINE_TUNABLE,
    TRAINING,
    TrainingRefused,
    training_cancel,
    training_launch,
    training_progress,
    training_retry,
)

# The library versions a training record may hold, in the order shown.
LIBRARIES = ("torch", "diffusers", "peft", "transformers")


def training_form_view(model_admin, request, base: GenerativeModel | None = None):
    """*Train new* (no base) or *Fine-tune* (a base): the form, then the launched job's page.

    A refusal of the launch (the sets against the batch, the method against the base)
    is shown on the form, naming the problem, before any worker is asked for anything.
    """
    form = TrainingForm(request.POST or None, base=base)
    if request.method == "POST" and form.is_valid():
        try:
            job = training_launch(**form.launch_arguments())
        except TrainingRefused as exc:
            form.add_error(None, f"Refused: {exc}.")
        else:
            messages.success(request, f"Training job {job.pk} is queued for a GPU worker.")
            return redirect("admin:generation_trainingjob_change", job.pk)
    title = f"Fine-tune {base} ({base.current_version})" if base else "Train a new model"
    context = {
        **model_admin.admin_site.each_context(request),
        "form": form,
        "base": base,
        "opts": model_admin.model._meta,
        "title": title,
        "media": model_admin.media + form.media,
    }
    return TemplateResponse(request, "admin/generation/generativemodel/train.html", context)


def fine_tune_view(model_admin, request, pk):
    base = get_object_or_404(GenerativeModel, pk=pk)
    if base.pipeline_class not in FINE_TUNABLE:
        messages.error(
            request,
            f"Fine-tuning starts from a {' or '.join(sorted(FINE_TUNABLE))} only; {base} is a "
            f"{base.pipeline_class}. Train a new unconditional model instead.",
        )
        return redirect("admin:generation_generativemodel_change", base.pk)
    return training_form_view(model_admin, request, base=base)


def training_record(job: TrainingJob | None):
    """How a model was trained, for its page: from the record its job wrote when done."""
    if job is None:
        return "Not trained in this app."
    record = job.record
    context = {
        "job": job,
        "record": record,
        "hyperparameters": _hyperparameters(record.get("hyperparameters") or {}),
        "libraries": [(name, record[name]) for name in LIBRARIES if name in record],
        "images": record.get("images") or [],
        "curve": loss_curve(record.get("loss_history") or job.loss_history),
    }
    return render_to_string("admin/generation/generativemodel/training_record.html", context)


def _hyperparameters(recorded: dict) -> list[tuple[str, object]]:
    """(label, value) in the job's order (a JSON column keeps no order), then any others."""
    unused = TrainingJobAdmin.FINE_TUNING_ONLY if recorded.get("method") == "unconditional" else {"width"}
    names = [name for name in TrainingJob.HYPERPARAMETERS if name in recorded and name not in unused]
    names += sorted(set(recorded) - set(TrainingJob.HYPERPARAMETERS))
    labels = {field.name: capfirst(field.verbose_name) for field in TrainingJob._meta.fields}
    return [(labels.get(name, name), recorded[name]) for name in names]


def preview_name(job: TrainingJob, step: int) -> str:
    """The stored PNG of the job's preview at `step`: listed on the job, under training/<job>/, else 404."""
    for preview in job.previews:
        if preview.get("step") == step:
            relative = PurePosixPath(str(preview.get("file", "")))
            inside = relative.parts[:1] == (str(job.pk),) and ".." not in relative.parts
            name = f"{TRAINING}/{relative}"
            if inside and relative.suffix == ".png" and default_storage.exists(name):
                return name
            break
    raise Http404("No such preview")


@admin.register(TrainingJob)
class TrainingJobAdmin(admin.ModelAdmin):
    """Jobs are started from the models' pages (Train new, Fine-tune) or `manage.py train`."""

    list_display = ["__str__", "status", "progress", "latest_loss", "model", "created", "finished"]
    list_filter = ["status", "method"]
    fields = [
        "name",
        "base",
        "image_sets",
        *TrainingJob.HYPERPARAMETERS,
        "status",
        "attempt",
        "step",
        "error",
        "model",
        "created",
        "started",
        "heartbeat",
        "finished",
    ]
    readonly_fields = fields
    FINE_TUNING_ONLY = {"base", "rank", "prompt_template", "train_text_encoder"}
    actions = ["cancel", "retry"]
    change_form_template = "admin/generation/trainingjob/change_form.html"

    def has_add_permission(self, request):
        return False

    def get_fields(self, request, obj=None):
        """Only what the job's method uses: no LoRA rank on a model trained from scratch."""
        unused = (
            self.FINE_TUNING_ONLY if obj and obj.method == TrainingJob.Method.UNCONDITIONAL else {"width"}
        )
        return [name for name in self.fields if name not in unused]

    @admin.display(description="Progress")
    def progress(self, obj):
        return format_html(
            '<progress max="{}" value="{}"></progress> {} / {}', obj.steps, obj.step, obj.step, obj.steps
        )

    @admin.display(description="Loss")
    def latest_loss(self, obj):
        loss = training_progress(obj).loss
        return "" if loss is None else f"{loss:.4f}"

    @admin.action(description="Cancel the selected jobs (each keeps its last checkpoint)")
    def cancel(self, request, queryset):
        n = sum(training_cancel(job=job) for job in queryset)
        messages.info(request, f"{n} training job(s) cancelled.")

    @admin.action(description="Retry the selected failed or cancelled jobs (from their last checkpoint)")
    def retry(self, request, queryset):
        n = sum(training_retry(job=job) for job in queryset)
        messages.info(request, f"{n} training job(s) queued again.")

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path("<int:pk>/cancel/", wrap(require_POST(self.cancel_view)), name="generation_training_cancel"),
            path("<int:pk>/retry/", wrap(require_POST(self.retry_view)), name="generation_training_retry"),
            path(
                "<int:pk>/previews/<int:step>/", wrap(self.preview_view), name="generation_training_preview"
            ),
            *super().get_urls(),
        ]

    def cancel_view(self, request, pk):
        job = get_object_or_404(TrainingJob, pk=pk)
        if training_cancel(job=job):
            messages.success(
                request, "Cancelled: the worker stops before its next step; the last checkpoint is kept."
            )
        else:
            messages.warning(request, f"Not cancelled: the job is {job.get_status_display()}.")
        return redirect("admin:generation_trainingjob_change", job.pk)

    def retry_view(self, request, pk):
        job = get_object_or_404(TrainingJob, pk=pk)
        if training_retry(job=job):
            messages.success(
                request, f"Queued again (attempt {job.attempt}); it resumes from its last checkpoint."
            )
        else:
            status = job.get_status_display()
            messages.warning(request, f"Not retried: only a failed or cancelled job can be; it is {status}.")
        return redirect("admin:generation_trainingjob_change", job.pk)

    def preview_view(self, request, pk, step):
        job = get_object_or_404(TrainingJob, pk=pk)
        response = FileResponse(default_storage.open(preview_name(job, step), "rb"), content_type="image/png")
        response["Cache-Control"] = "private, no-store"
        return response

    def change_view(self, request, object_id, form_url="", extra_context=None):
        job = self.get_object(request, object_id)
        extra = {"job": job}
        if job:
            extra["progress"] = training_progress(job)
            extra["curve"] = loss_curve(job.loss_history)
            extra["previews"] = sorted(job.previews, key=lambda p: p.get("step", 0), reverse=True)
            # Nothing on this page is edited: the admin's Save buttons would only pretend.
            extra["show_save"] = extra["show_save_and_continue"] = False
        return super().change_view(request, object_id, form_url, {**(extra_context or {}), **extra})
