from django.contrib import admin, messages
from django.shortcuts import redirect
from django.urls import path
from django.views.decorators.http import require_POST

from .models import WorkerReport
from .services import worker_reports_request


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

    def ask_view(self, request):
        worker_reports_request()
        messages.info(request, "Asked a GPU worker to report. Reload this page in a few seconds.")
        return redirect("admin:generation_workerreport_changelist")
