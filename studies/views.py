"""Reader-facing pages. Views stay thin: parse, call a service or selector, render."""

from django.shortcuts import render


def home(request):
    """The landing page after login: a reader's studies, or the way to the admin."""
    return render(request, "studies/home.html")
