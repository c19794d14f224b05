"""Writes of the generation app: worker reports, the model registry, versioned settings."""

import contextlib
import tempfile
import uuid
from pathlib import Path

from django.db import transaction

from analysis.cells import formula_refusal

from .models import GenerativeModel, ModelVersion, WorkerReport
from .registry import ALLOWED_PIPELINES, ModelRefused, inspect_lora, inspect_pipeline, unpack_zip
from .store import LORA_WEIGHTS, ModelUnavailable, folder_files, model_store

TEXT_PIPELINES = {name for name, text in ALLOWED_PIPELINES.items() if text}


def describe_device() -> tuple[str, str]:
    """The device a worker would generate on, and the torch version, as text.

    torch is imported here, inside the worker's child process, never at module
    import: CUDA must not be initialised in the prefork parent.
    """
    import torch

    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)}", torch.__version__
    return "cpu", torch.__version__


def worker_report_create(*, request_id: str, hostname: str) -> WorkerReport:
    device, torch_version = describe_device()
    report, _ = WorkerReport.objects.get_or_create(
        request_id=request_id,
        hostname=hostname,
        defaults={"device": device, "torch_version": torch_version},
    )
    return report


def worker_reports_request() -> uuid.UUID:
    """Ask a worker on the `gpu` queue to report; returns the request's id.

    Like every task of this app, it is sent only once the surrounding transaction
    commits, so a worker never looks for rows that are not there yet.
    """
    from .tasks import report_worker

    request_id = uuid.uuid4()
    report_worker.delay_on_commit(str(request_id))
    return request_id


# --- The model registry --------------------------------------------------------------


def model_register(
    *, name: str, path: str, lora_path: str = "", description: str = "", path_label: str = "",
    lora_label: str = "", **settings
) -> GenerativeModel:  # fmt: skip
    """Check the pipeline folder (or .zip) and the adapter, store them, and register the model
    with its first settings version.

    The files are read here once: they are stored content-addressed (generation/store.py),
    and every worker fetches them from the storage, so the folder need not outlive this
    call nor be visible to any worker. `path_label` and `lora_label` replace the folders in
    what the registry shows (a trained model names its training job). The checks, the
    unpacking of a zip and the storing run before the transaction: they can be slow, and
    SQLite would hold its write lock throughout.
    """
    if problem := formula_refusal(name, "a model's name"):
        raise ModelRefused(problem)
    if GenerativeModel.objects.filter(name=name).exists():
        raise ModelRefused(f"a model named {name!r} is already registered")
    with contextlib.ExitStack() as stack:
        folder = Path(path)
        if folder.suffix.lower() == ".zip" and folder.is_file():
            # Unpacked on this host's temporary disk only for the checks and the storing.
            unpacked = stack.enter_context(tempfile.TemporaryDirectory(prefix="readerstudy-model-"))
            folder = unpack_zip(folder, Path(unpacked))
        info = inspect_pipeline(folder)
        lora = inspect_lora(lora_path, info.pipeline_class) if lora_path else None
        if settings.get("prompts") and not info.text_conditioned:
            raise ModelRefused(f"{info.pipeline_class} takes no prompt; leave the prompts out")
        if info.text_conditioned and not settings.get("prompts"):
            raise ModelRefused(
                f"{info.pipeline_class} is a text-to-image model: it needs at least one prompt"
            )
        settings = _checked(settings, pipeline_class=info.pipeline_class)
        try:
            digest = model_store(folder_files(folder))
            lora_digest = model_store({LORA_WEIGHTS: lora}) if lora else ""
        except ModelUnavailable as exc:
            raise ModelRefused(str(exc)) from None
    with transaction.atomic():
        model = GenerativeModel.objects.create(
            name=name,
            path=path_label or str(Path(path).resolve()),
            pipeline_class=info.pipeline_class,
            lora_path=lora_label or (str(lora) if lora else ""),
            digest=digest,
            lora_digest=lora_digest,
            native_size=info.native_size,
            description=description,
        )
        ModelVersion.objects.create(model=model, number=1, **settings)
    return model


def _checked(settings: dict, *, pipeline_class: str) -> dict:
    from .pipelines import COMPATIBLE_SCHEDULERS

    text = pipeline_class in TEXT_PIPELINES
    unknown = set(settings) - set(ModelVersion.SETTINGS)
    if unknown:
        raise ModelRefused(f"unknown setting(s): {', '.join(sorted(unknown))}")
    if "scheduler" in settings and settings["scheduler"] not in ModelVersion.Scheduler.values:
        raise ModelRefused(
            f"unknown scheduler {settings['scheduler']!r}; choose one of "
            f"{', '.join(v for v in ModelVersion.Scheduler.values if v)}"
        )
    if settings.get("scheduler", "") not in COMPATIBLE_SCHEDULERS[pipeline_class]:
        usable = ", ".join(sorted(s or "(its own)" for s in COMPATIBLE_SCHEDULERS[pipeline_class]))
        raise ModelRefused(
            f"{pipeline_class} cannot run the {settings['scheduler']!r} scheduler; it can run: {usable}"
        )
    if "steps" in settings and not 1 <= int(settings["steps"]) <= 1000:
        raise ModelRefused("steps must be between 1 and 1000")
    if "size" in settings and settings["size"] and not 16 <= int(settings["size"]) <= 4096:
        raise ModelRefused("size must be between 16 and 4096 pixels (or 0 for the model's own)")
    if "batch_size" in settings and not 1 <= int(settings["batch_size"]) <= 256:
        raise ModelRefused("batch size must be between 1 and 256")
    if "prompts" in settings:
        prompts = [str(p).strip() for p in settings["prompts"] or [] if str(p).strip()]
        if text and not prompts:
            raise ModelRefused("a text-to-image model needs at least one prompt")
        settings = {**settings, "prompts": prompts}
    return settings


@transaction.atomic
def model_settings_update(*, model: GenerativeModel, **settings) -> ModelVersion:
    """Change generation settings. Settings a job has used are frozen: a change then
    starts the next version, so every image keeps pointing at what made it."""
    current = ModelVersion.objects.select_for_update().filter(model=model).order_by("-number").first()
    settings = _checked(settings, pipeline_class=model.pipeline_class)
    changed = {k: v for k, v in settings.items() if getattr(current, k) != v}
    if not changed:
        return current
    # Frozen from the first job on, not the first image: a queued job must make
    # its images with the settings it was launched with.
    if not current.jobs.exists():
        for key, value in changed.items():
            setattr(current, key, value)
        current.save()
        return current
    fields = {**current.settings_dict(), **changed}
    return ModelVersion.objects.create(model=model, number=current.number + 1, **fields)
