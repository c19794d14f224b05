from django.urls import path

from . import views

urlpatterns = [
    path("", views.home, name="home"),
    path("study/<int:study_id>/", views.study_label, name="study_label"),
    path("study/<int:study_id>/state", views.study_state, name="study_state"),
    path("study/<int:study_id>/session", views.study_session, name="study_session"),
    path("study/<int:study_id>/display-check", views.study_display_check, name="study_display_check"),
    path("study/<int:study_id>/done/", views.study_done, name="study_done"),
    path("p/<uuid:presentation_id>/image", views.presentation_image, name="presentation_image"),
    path("p/<uuid:presentation_id>/answer", views.presentation_answer, name="presentation_answer"),
]
