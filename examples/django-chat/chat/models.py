from django.conf import settings
from django.db import models


class Message(models.Model):
    """A message said in a room; saving one publishes it (chat/signals.py)."""

    room = models.CharField(max_length=80)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    text = models.TextField(max_length=2000)
    created = models.DateTimeField(auto_now_add=True)
