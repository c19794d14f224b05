"""Admin of real image sets, their imports, and the images readers see."""

import logging

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import RequestDataTooBig, TooManyFilesSent
from django.db.models import Count
from django.http import FileResponse, Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.decorators import method_decorator
from django.utils.html import format_html
from django.views.decorators.csrf import csrf_exempt, csrf_protect

from config.storage import storage_error_text, storage_errors

from ..forms import ImageUploadForm
from ..imports import import_jobs_retry
from ..models import Image, ImageSet, ImportJob, ImportResult
from ..uploads import import_job_create
from ..validators import no_formula_start

logger = logging.getLogger(__name__)


class ImageSetForm(forms.ModelForm):
    class Meta:
        model = ImageSet
        fields = ["name", "description"]

    def clean_name(self):
        no_formula_start(self.cleaned_data["name"])
        return self.cleaned_data["name"]


@admin.register(ImageSet)
class ImageSetAdmin(admin.ModelAdmin):
    form = ImageSetForm
    list_display = ["name", "image_count", "created"]
    search_fields = ["name"]
    change_form_template = "admin/studies/imageset/change_form.html"

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(n_images=Count("images"))

    @admin.display(description="Images", ordering="n_images")
    def image_count(self, obj):
        return obj.n_images

    def get_urls(self):
        view = self.admin_site.admin_view(self.import_view)
        return [path("<int:pk>/import/", view, name="studies_imageset_import"), *super().get_urls()]

    # Django reads an upload in its CSRF check, before any view runs, and turns too
    # many files into a bare "Bad Request (400)". This view reads the upload first
    # and answers a refused one with its own page, which changes nothing; every
    # other request then goes through the CSRF check as usual.
    @csrf_exempt
    def import_view(self, request, pk):
        image_set = get_object_or_404(ImageSet, pk=pk)
        if not self.has_change_permission(request, image_set):
            raise Http404
        try:
            request.FILES  # noqa: B018 (reading it parses the upload)
        except TooManyFilesSent:
            messages.error(
                request,
                f"At most {settings.DATA_UPLOAD_MAX_NUMBER_FILES} files in one upload; put them in a .zip "
                "(folders inside are fine), or upload them in parts.",
            )
            return self._import_page(request, image_set, ImageUploadForm(), status=400)
        except RequestDataTooBig:
            messages.error(request, "The form's fields are too large to take; upload the files again.")
            return self._import_page(request, image_set, ImageUploadForm(), status=400)
        return self._import_form(request, image_set)

    @method_decorator(csrf_protect)
    def _import_form(self, request, image_set):
        form = ImageUploadForm(request.POST or None, request.FILES or None)
        if request.method == "POST" and form.is_valid():
            try:
                job = import_job_create(
                    image_set=image_set,
                    files=form.cleaned_data["files"],
                    findings=form.cleaned_data["findings"],
                )
            except storage_errors() as exc:  # a full disk, object storage away: nothing was kept
                logger.exception("An upload could not be stored")
                messages.error(
                    request,
                    f"The files could not be stored ({storage_error_text(exc)}); nothing was "
                    "imported. Try again later, or tell whoever runs the server that its storage failed.",
                )
                return self._import_page(request, image_set, form, status=503)
            messages.info(request, "The files are uploaded; a worker is importing them.")
            return redirect("admin:studies_importjob_change", job.pk)
        return self._import_page(request, image_set, form)

    def _import_page(self, request, image_set, form, *, status=200):
        context = {
            **self.admin_site.each_context(request),
            "form": form,
            "image_set": image_set,
            "opts": self.model._meta,
            "title": f"Import images into {image_set}",
        }
        return TemplateResponse(request, "admin/studies/imageset/import.html", context, status=status)


class ImportResultInline(admin.TabularInline):
    model = ImportResult
    fields = ["name", "status", "reason", "image_link"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request, obj=None):
        return False

    @admin.display(description="Image")
    def image_link(self, obj):
        if not obj.image_id:
            return ""
        return format_html(
            '<a href="{}">#{}</a>', reverse("admin:studies_image_change", args=[obj.image_id]), obj.image_id
        )


@admin.register(ImportJob)
class ImportJobAdmin(admin.ModelAdmin):
    list_display = ["__str__", "status", "done", "total", "created", "finished"]
    list_filter = ["status", "image_set"]
    fields = ["image_set", "status", "error", "created", "finished"]
    readonly_fields = fields
    inlines = [ImportResultInline]
    change_form_template = "admin/studies/importjob/change_form.html"
    actions = ["retry"]

    @admin.action(description="Retry the selected failed imports")
    def retry(self, request, queryset):
        retried = import_jobs_retry(jobs=queryset)
        messages.info(request, f"{retried} import(s) queued again; files already imported are skipped.")

    def has_add_permission(self, request):
        return False

    def change_view(self, request, object_id, form_url="", extra_context=None):
        job = self.get_object(request, object_id)
        extra = {"job": job, "counts": job.counts() if job else {}}
        return super().change_view(request, object_id, form_url, {**(extra_context or {}), **extra})


@admin.register(Image)
class ImageAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "thumbnail",
        "origin",
        "image_set",
        "source_name",
        "source_format",
        "dimensions",
        "modality",
        "finding",
        "created",
    ]
    list_filter = ["origin", "image_set", "source_format", "modality"]
    search_fields = ["source_name", "finding", "source_sha256"]
    readonly_fields = [
        "preview",
        "origin",
        "image_set",
        "size",
        "png_sha256",
        "source_sha256",
        "source_name",
        "source_format",
        "source_width",
        "source_height",
        "source_bit_depth",
        "modality",
        "photometric",
        "transfer_syntax",
        "original_link",
        "created",
    ]
    fields = ["preview", "finding", *readonly_fields[1:]]

    def has_add_permission(self, request):
        return False

    @admin.display(description="Source size")
    def dimensions(self, obj):
        return f"{obj.source_width} × {obj.source_height}"

    @admin.display(description="")
    def thumbnail(self, obj):
        return format_html(
            '<img src="{}" alt="" width="64" height="64" loading="lazy">',
            reverse("admin:studies_image_png", args=[obj.pk]),
        )

    @admin.display(description="Reader image")
    def preview(self, obj):
        return format_html(
            '<img src="{}" alt="" width="384" height="384">',
            reverse("admin:studies_image_png", args=[obj.pk]),
        )

    @admin.display(description="Original file")
    def original_link(self, obj):
        if not obj.original:
            return "not kept"
        return format_html(
            '<a href="{}">download</a>', reverse("admin:studies_image_original", args=[obj.pk])
        )

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path("<int:pk>/png/", wrap(self.png_view), name="studies_image_png"),
            path("<int:pk>/original/", wrap(self.original_view), name="studies_image_original"),
            *super().get_urls(),
        ]

    def _image(self, request, pk) -> Image:
        image = get_object_or_404(Image, pk=pk)
        if not self.has_view_permission(request, image):
            raise Http404
        return image

    def png_view(self, request, pk):
        image = self._image(request, pk)
        with image.file.open("rb") as f:
            response = HttpResponse(f.read(), content_type="image/png")
        response["Cache-Control"] = "private, max-age=3600"
        return response

    def original_view(self, request, pk):
        image = self._image(request, pk)
        if not image.original:
            raise Http404
        name = image.source_name.rsplit("/", 1)[-1] or f"image-{image.pk}"
        return FileResponse(image.original.open("rb"), as_attachment=True, filename=name)
