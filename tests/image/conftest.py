"""Fixtures for the image tests (helpers live in image_helpers.py)."""

from image_helpers import small_task  # noqa: F401  (re-exported as a fixture)
