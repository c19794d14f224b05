"""Admin of studies: design, the life from draft to closed, readers, the blinding audit, progress."""

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import UNUSABLE_PASSWORD_PREFIX
from django.core.exceptions import ValidationError
from django.db.models import Count, Q
from django.http import Http404
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.views.decorators.http import require_POST

from generation.measure_jobs import MeasureRefused, measure_job_create

from ..lifecycle import (
    StudyRefused,
    preparation_error,
    preparation_jobs,
    study_audit_store,
    study_back_to_draft,
    study_close,
    study_open,
    study_prepare,
)
from ..models import Presentation, Study, StudyModel, StudyReader
from ..models.studies import MAX_REASON_LENGTH, MAX_REASONS, default_reason_choices
from ..readers import parse_new_readers, password_link, readers_create
from ..selectors import study_progress
from ..services import study_reader_add, study_reader_remove
from ..validators import no_formula_start
from .results import results_download, results_page_context

Status = Study.Status
DESIGN_FIELDS = ["real_sets", "real_count", "image_size", "practice_count", "repeat_percent", "washout_hours"]
ANSWER_FIELDS = ["allow_unsure", "ask_confidence", "allow_back", "time_limit_seconds"]
SESSION_FIELDS = ["display_check", "break_every_images", "break_every_minutes", "session_max_images"]
REASON_FIELDS = [
    "ask_reasons",
    "reason_choices",
    "reasons_required",
    "ask_reason_text",
    "ask_region",
    "region_required",
]


class ReasonLines(forms.CharField):
    """The reasons offered, one per line, stored as a list."""

    widget = forms.Textarea(attrs={"rows": 8, "cols": 40})

    def prepare_value(self, value):
        if isinstance(value, list | tuple):
            return "\n".join(value)
        return value

    def to_python(self, value):
        lines = [line.strip() for line in (super().to_python(value) or "").splitlines()]
        return [line for line in lines if line]

    def validate(self, value):
        if len(value) > MAX_REASONS:
            raise ValidationError(f"At most {MAX_REASONS} reasons: one key (1 to {MAX_REASONS}) each.")
        long = [reason for reason in value if len(reason) > MAX_REASON_LENGTH]
        if long:
            raise ValidationError(f"Keep each reason under {MAX_REASON_LENGTH} characters: {long[0][:80]!r}.")
        if any(";" in reason for reason in value):
            raise ValidationError("A reason cannot hold ';': answers.csv joins a read's reasons with it.")
        seen = {reason.casefold() for reason in value}
        if len(seen) != len(value):
            raise ValidationError("Each reason once.")
        for reason in value:
            no_formula_start(reason)


class StudyModelInline(admin.TabularInline):
    model = StudyModel
    extra = 1
    fields = ["model", "count", "version", "job"]
    readonly_fields = ["version", "job"]
    verbose_name = "model under study"
    verbose_name_plural = "Models under study (each arm: its images against every real image)"

    def _editable(self, obj) -> bool:
        return obj is None or obj.is_editable

    def has_add_permission(self, request, obj=None):
        return self._editable(obj) and super().has_add_permission(request, obj)

    def has_change_permission(self, request, obj=None):
        return self._editable(obj) and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return self._editable(obj) and super().has_delete_permission(request, obj)


class StudyForm(forms.ModelForm):
    reason_choices = ReasonLines(
        required=False,
        initial=default_reason_choices,
        label="Reasons",
        help_text=f"One per line, at most {MAX_REASONS} (keys 1 to {MAX_REASONS}, in this order). "
        "Readers see them after choosing their label.",
    )

    class Meta:
        model = Study
        fields = [*["title", "instructions"], *DESIGN_FIELDS, *ANSWER_FIELDS, *REASON_FIELDS, *SESSION_FIELDS]

    def clean(self):
        cleaned = super().clean()
        asked = cleaned.get("ask_reasons", Study.AskReasons.NEVER) != Study.AskReasons.NEVER
        if asked and not cleaned.get("reason_choices") and not cleaned.get("ask_reason_text"):
            self.add_error("reason_choices", "List the reasons to offer (or offer a free-text note).")
        return cleaned

    def clean_title(self):
        no_formula_start(self.cleaned_data["title"])
        return self.cleaned_data["title"]

    def clean_repeat_percent(self):
        value = self.cleaned_data["repeat_percent"]
        if value > 50:
            raise ValidationError(
                "At most 50%: each repeat needs a first showing at least half a sequence away."
            )
        return value

    def clean_image_size(self):
        value = self.cleaned_data["image_size"]
        if not 64 <= value <= 4096:
            raise ValidationError("Choose a size from 64 to 4096 pixels.")
        return value


class ReadersForm(forms.Form):
    existing = forms.ModelMultipleChoiceField(
        queryset=get_user_model().objects.none(),
        required=False,
        widget=forms.SelectMultiple(attrs={"size": 10}),
        label="Existing accounts",
        help_text="Hold Ctrl (Cmd on a Mac) to pick several.",
    )
    new = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 5, "placeholder": "dr_lee lee@example.org\ndr_khan"}),
        label="New reader accounts",
        help_text="One per line: a username, and optionally an email address. Each gets a one-time link "
        "to set a password.",
    )

    def __init__(self, *args, study: Study, **kwargs):
        super().__init__(*args, **kwargs)
        taken = study.readers.filter(removed__isnull=True).values("reader")  # a removed one may come back
        # Readers only: a researcher's own staff account has no business in the sequence.
        self.fields["existing"].queryset = (
            get_user_model()
            .objects.filter(is_active=True, is_staff=False, is_superuser=False)
            .exclude(pk__in=taken)
            .order_by("username")
        )

    def clean_new(self):
        return parse_new_readers(self.cleaned_data["new"])


@admin.register(Study)
class StudyAdmin(admin.ModelAdmin):
    form = StudyForm
    list_display = ["title", "status", "image_count", "reader_count", "created"]
    list_filter = ["status"]
    search_fields = ["title"]
    filter_horizontal = ["real_sets"]
    inlines = [StudyModelInline]
    change_form_template = "admin/studies/study/change_form.html"
    fieldsets = [
        (None, {"fields": ["title", "instructions"]}),
        ("Images", {"fields": DESIGN_FIELDS}),
        ("Answers", {"fields": ANSWER_FIELDS}),
        ("Why and where an image looks fake", {"fields": REASON_FIELDS}),
        ("Reading sessions", {"fields": SESSION_FIELDS}),
    ]

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(
                n_images=Count("images", distinct=True),
                n_readers=Count("readers", filter=Q(readers__removed__isnull=True), distinct=True),
            )
        )

    @admin.display(description="Images", ordering="n_images")
    def image_count(self, obj):
        return obj.n_images

    @admin.display(description="Readers", ordering="n_readers")
    def reader_count(self, obj):
        return obj.n_readers

    def get_readonly_fields(self, request, obj=None):
        if obj is None or obj.is_editable:
            return []
        frozen = list(DESIGN_FIELDS)
        if obj.status == Status.PREPARING:  # the page reloads itself: nothing to type there
            return ["title", "instructions", *DESIGN_FIELDS, *ANSWER_FIELDS, *REASON_FIELDS, *SESSION_FIELDS]
        if obj.status in (Status.OPEN, Status.CLOSED):
            frozen += ANSWER_FIELDS + REASON_FIELDS + SESSION_FIELDS
        return frozen

    def get_urls(self):
        def view(fn, name, post=True):
            wrapped = self.admin_site.admin_view(require_POST(fn) if post else fn)
            return path(f"<int:pk>/{name}/", wrapped, name=f"studies_study_{name.replace('-', '_')}")

        return [
            view(self.prepare_view, "prepare"),
            view(self.draft_view, "back-to-draft"),
            view(self.open_view, "open"),
            view(self.close_view, "close"),
            view(self.audit_view, "audit"),
            view(self.measure_view, "measure"),
            view(self.readers_view, "readers", post=False),
            view(self.link_view, "link"),
            view(self.remove_reader_view, "remove-reader"),
            view(self.results_view, "results", post=False),
            path(
                "<int:pk>/results/<str:name>",
                self.admin_site.admin_view(self.download_view),
                name="studies_study_download",
            ),
            *super().get_urls(),
        ]

    def _study(self, request, pk, *, view_only=False) -> Study:
        # One answer, 404, for 'no such study' and 'not yours': a 403 would confirm the id exists.
        study = Study.objects.filter(pk=pk).first()
        allowed = self.has_view_permission if view_only else self.has_change_permission
        if study is None or not allowed(request, study):
            raise Http404
        return study

    def _visible_or_404(self, request) -> None:
        """Django's own object pages answer 403 (exists) or a redirect (missing): 404 for both."""
        if not self.has_view_or_change_permission(request):
            raise Http404

    def history_view(self, request, object_id, extra_context=None):
        self._visible_or_404(request)
        return super().history_view(request, object_id, extra_context)

    def delete_view(self, request, object_id, extra_context=None):
        if not self.has_delete_permission(request):
            raise Http404
        return super().delete_view(request, object_id, extra_context)

    def _step(self, request, pk, step, done: str):
        study = self._study(request, pk)
        try:
            step(study)
        except StudyRefused as exc:
            messages.error(request, str(exc))
        else:
            messages.success(request, done)
        return redirect("admin:studies_study_change", pk)

    def prepare_view(self, request, pk):
        return self._step(
            request, pk, lambda s: study_prepare(study=s), "Preparing: missing images are being generated."
        )

    def draft_view(self, request, pk):
        return self._step(request, pk, lambda s: study_back_to_draft(study=s), "The study is a draft again.")

    def open_view(self, request, pk):
        reason = request.POST.get("override_reason", "")
        return self._step(
            request,
            pk,
            lambda s: study_open(study=s, user=request.user, override_reason=reason),
            "The study is open: its readers can start.",
        )

    def close_view(self, request, pk):
        return self._step(request, pk, lambda s: study_close(study=s), "The study is closed.")

    def audit_view(self, request, pk):
        return self._step(
            request, pk, lambda s: study_audit_store(study=s), "The blinding audit was run again."
        )

    def measure_view(self, request, pk):
        """Queue the machine measures of each arm against the study's real images."""
        study = self._study(request, pk)
        try:
            job = measure_job_create(study=study)
        except MeasureRefused as exc:
            messages.error(request, str(exc))
            return redirect("admin:studies_study_change", pk)
        return redirect("admin:generation_measurejob_change", job.pk)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        self._visible_or_404(request)
        study = Study.objects.filter(pk=object_id).first()
        extra = dict(extra_context or {})
        if study is not None:
            # While preparing, the page refreshes to show progress; the workers move the study on.
            extra.update(_lifecycle_context(study))
        return super().change_view(request, object_id, form_url, extra_context=extra)

    def readers_view(self, request, pk):
        study = self._study(request, pk)
        form = ReadersForm(request.POST or None, study=study)
        created = []
        if request.method == "POST" and form.is_valid():
            # One reader refused (blinding across studies) must not keep the others out.
            added = 0
            for user in form.cleaned_data["existing"]:
                try:
                    study_reader_add(study=study, reader=user)
                    added += 1
                except StudyRefused as exc:
                    messages.error(request, str(exc))
            try:
                created = readers_create(
                    study=study, accounts=form.cleaned_data["new"], base_url=request.build_absolute_uri("/")
                )
            except StudyRefused as exc:
                messages.error(request, str(exc))
            added += len(created)
            messages.success(request, f"{added} reader{'s' if added != 1 else ''} added.")
            if not created:
                return redirect("admin:studies_study_readers", pk)
            form = ReadersForm(study=study)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "study": study,
            "form": form,
            "created": created,
            "progress": study_progress(study),
            "awaiting_password": _awaiting_password(study),
            "title": f"Readers of {study}",
        }
        return TemplateResponse(request, "admin/studies/study/readers.html", context)

    def link_view(self, request, pk):
        """A new one-time link for a reader who has not set a password (lost, expired)."""
        study = self._study(request, pk)
        place = _member(study, request.POST.get("reader", ""))
        if place is None:
            messages.error(request, "That reader is not in this study (any more).")
        elif place.reader.has_usable_password():
            messages.error(request, f"{place.reader} has set a password already; they can log in.")
        else:
            link = password_link(place.reader, base_url=request.build_absolute_uri("/"))
            messages.success(request, f"A new one-time link for {place.reader}: {link}")
        return redirect("admin:studies_study_readers", pk)

    def remove_reader_view(self, request, pk):
        """Take a reader out of the study: a confirmation page first; both steps are POSTs."""
        study = self._study(request, pk)
        place = _member(study, request.POST.get("reader", ""))
        if place is None:
            messages.error(request, "That reader is not in this study (any more).")
            return redirect("admin:studies_study_readers", pk)
        if request.POST.get("confirm") != "yes":
            context = {
                **self.admin_site.each_context(request),
                "opts": self.model._meta,
                "study": study,
                "place": place,
                "title": f"Remove {place.reader} from {study}?",
            }
            return TemplateResponse(request, "admin/studies/study/remove_reader.html", context)
        study_reader_remove(study=study, reader=place.reader)
        messages.success(
            request,
            f"{place.reader} is removed from the study. Their answers are kept and left out of the results "
            "unless you include removed readers; adding them again restores their place.",
        )
        return redirect("admin:studies_study_readers", pk)

    def results_view(self, request, pk):
        study = self._study(request, pk, view_only=True)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "study": study,
            "title": f"Results of {study}",
            # The wide tables get the whole width: no admin menu beside them.
            "is_nav_sidebar_enabled": False,
            **results_page_context(study, include_removed=_include_removed(request)),
        }
        return TemplateResponse(request, "admin/studies/study/results.html", context)

    def download_view(self, request, pk, name):
        study = self._study(request, pk, view_only=True)
        return results_download(study, name, include_removed=_include_removed(request))


def _include_removed(request) -> bool:
    """Results count removed readers' answers only when asked (?include_removed=1)."""
    return request.GET.get("include_removed") == "1"


def _member(study: Study, reader_id: str) -> StudyReader | None:
    """The study's (not removed) reader with this id as posted by a form; None for anything else."""
    if not reader_id.isdecimal():
        return None
    return StudyReader.objects.filter(study=study, reader_id=int(reader_id), removed__isnull=True).first()


def _awaiting_password(study: Study) -> set[int]:
    """The study's readers who have not set a password yet: only they may get a new one-time link
    (a link for a working account would let it reset a reader's password without their asking)."""
    return set(
        study.readers.filter(reader__password__startswith=UNUSABLE_PASSWORD_PREFIX).values_list(
            "reader_id", flat=True
        )
    )


def _lifecycle_context(study: Study) -> dict:
    from generation.jobs import job_progress

    jobs = [(job, job_progress(job)) for job in preparation_jobs(study)]
    counts = study.images.aggregate(
        study=Count("pk", filter=Q(practice=False)), practice=Count("pk", filter=Q(practice=True))
    )
    return {
        "study": study,
        "steps": Status.choices,
        "jobs": jobs,
        "preparation_error": preparation_error(study) if study.status == Status.PREPARING else "",
        "image_counts": counts,
        "audit": study.audit_report or None,
        "progress": study_progress(study),
        "readers_url": reverse("admin:studies_study_readers", args=[study.pk]),
        "presentations": Presentation.objects.filter(study=study).count(),
        "measure_job": study.measure_jobs.order_by("-created").first(),
    }


@admin.register(Presentation)
class PresentationAdmin(admin.ModelAdmin):
    """Read only: presentations are made by the app when a study opens or a reader joins it."""

    list_display = ["study", "reader", "position", "image", "is_practice", "is_repeat"]
    list_filter = ["study", "is_practice", "is_repeat"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
