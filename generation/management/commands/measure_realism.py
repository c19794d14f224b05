"""`python manage.py measure_realism --model NAME --reference-set SET [...] | --study ID [--wait]`."""

from django.core.management.base import BaseCommand, CommandError

from generation.management.following import job_follow
from generation.measure_jobs import MeasureRefused, measure_job_create, reference_sets_named
from generation.models import GenerativeModel, MeasureJob
from studies.models import Study


def progress_line(job: MeasureJob, width: int = 30) -> str:
    filled = int(width * job.done / job.total) if job.total else (width if job.status == "done" else 0)
    return f"[{'#' * filled}{'.' * (width - filled)}] {job.done}/{job.total} images through the extractors"


def summary(results: dict) -> list[str]:
    """The figures as lines of text, each saying what it was computed on."""
    if "arms" in results:
        lines = [f"Study {results['study']!r}: each arm against its {results['n_real']} real images"]
        lines += [f"note: {note}" for note in results.get("left_out", [])]
        for name, found in results["arms"].items():
            lines.append(f"Arm {name}: {found['n_synthetic']} synthetic images of {found['version']}")
            lines += [f"  {line}" for line in arm_summary(found)]
        return lines
    lines = [
        f"{results['n_synthetic']} synthetic images of {results['version']} against {results['n_real']} real "
        f"({', '.join(results['reference_sets'])})"
    ]
    lines += [f"note: {note}" for note in results.get("left_out", [])]
    return lines + arm_summary(results)


def arm_summary(results: dict) -> list[str]:
    lines = []
    for name, figures in results["extractors"].items():
        if "skipped" in figures:
            lines.append(f"{name}: skipped. {figures['skipped']}")
            continue
        parts = [f"FD {figures['frechet_distance']:.4g}"] if "frechet_distance" in figures else []
        if "kid" in figures:
            parts.append(
                f"KID {figures['kid']:.4g} "
                f"(95% of subsets {figures['kid_ci_low']:.3g}..{figures['kid_ci_high']:.3g})"
            )
        for key in ("precision", "recall", "density", "coverage"):
            if key in figures:
                parts.append(f"{key} {figures[key]:.3f}")
        lines.append(f"{name} (weights sha256 {figures['weights_sha256'][:12]}): " + ", ".join(parts))
        lines += [f"  note: {note}" for note in figures["notes"]]
    for kind, found in results["diversity"].items():
        value = "n/a" if found["ms_ssim"] is None else f"{found['ms_ssim']:.3f} over {found['n_pairs']} pairs"
        lines.append(f"diversity (mean MS-SSIM) of the {kind} set: {value}")
    memorisation = results["memorisation"]
    for kind in ("training", "reference"):
        found = memorisation.get(kind)
        if found and "flagged" in found:
            lines.append(
                f"possible copies of {kind} images: {len(found['flagged'])} of {results['n_synthetic']} "
                f"({found['share_flagged']:.1%}; highest SSIM {found['max_ssim']:.3f})"
            )
    if "note" in memorisation:
        lines.append(f"memorisation: {memorisation['note']}")
    return lines


class Command(BaseCommand):
    help = (
        "Compute machine measures (Fréchet distance, KID, precision/recall/density/coverage, "
        "diversity, memorisation) of a model's images against sets of real radiographs, on a GPU worker."
    )

    def add_arguments(self, parser):
        what = parser.add_mutually_exclusive_group(required=True)
        what.add_argument("--model", help="measure the current version's images (needs --reference-set)")
        what.add_argument("--study", help="measure each arm of a prepared study (its id or title)")
        parser.add_argument("--reference-set", action="append", default=[], dest="reference_sets")
        parser.add_argument(
            "--extractor", action="append", choices=MeasureJob.Extractor.values, dest="extractors"
        )
        parser.add_argument(
            "--wait", action="store_true", help="show progress and the figures; exit 1 if it fails"
        )

    def handle(self, *args, model, study, reference_sets, extractors, wait, **options):
        try:
            if study is not None:
                if reference_sets:
                    raise CommandError(
                        "A study is measured against its own real images: drop --reference-set."
                    )
                found = _study_named(study)
                job = measure_job_create(study=found, extractors=extractors)
                self.stdout.write(f"Measure job {job.pk}: each arm of {found} against its real images.")
            else:
                job = measure_job_create(
                    version=_model_named(model).current_version,
                    reference_sets=reference_sets_named(reference_sets),
                    extractors=extractors,
                )
                self.stdout.write(f"Measure job {job.pk}: {job.version} against {', '.join(reference_sets)}.")
        except MeasureRefused as exc:
            raise CommandError(str(exc)) from None
        if not wait:
            return
        job_follow(self, job, line=progress_line)
        if job.status != MeasureJob.Status.DONE:
            raise CommandError(f"Measure job {job.pk} {job.status}: {job.error or 'no error recorded'}")
        for line in summary(job.results):
            self.stdout.write(line)


def _model_named(name: str) -> GenerativeModel:
    registered = GenerativeModel.objects.filter(name=name).first()
    if registered is None:
        names = ", ".join(GenerativeModel.objects.values_list("name", flat=True)) or "none yet"
        raise CommandError(f"No model named {name!r} (registered: {names}).")
    return registered


def _study_named(key: str) -> Study:
    found = Study.objects.filter(pk=int(key)).first() if key.isdigit() else None
    found = found or Study.objects.filter(title=key).first()
    if found is None:
        raise CommandError(f"No study with the id or title {key!r}.")
    return found
