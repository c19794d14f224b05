"""The researchers' side: images and their imports, studies and their readers."""

from . import images, studies  # noqa: F401  (registers the model admins)
