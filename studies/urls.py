from django.urls import path

from . import views

urlpatterns = [
    path("", views.home, name="home"),
    path("p/<uuid:presentation_id>/image", views.presentation_image, name="presentation_image"),
]
