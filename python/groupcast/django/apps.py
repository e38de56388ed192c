"""The app's configuration."""

from django.apps import AppConfig


class GroupcastConfig(AppConfig):
    """groupcast's hook views; no models."""

    name = "groupcast.django"
    label = "groupcast"
    verbose_name = "groupcast"
