from django.contrib import admin
from django.urls import include, path

from .health import healthz

admin.site.site_header = "Reader study administration"
admin.site.site_title = "Reader study admin"
admin.site.index_title = "Studies, images and models"

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("", include("studies.urls")),
]

# A database outage met before a view (loading the session or the user) answers 503, not 500.
handler500 = "config.outage.server_error"
