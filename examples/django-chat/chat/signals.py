"""group_send from a post_save signal, unchanged from the Channels version."""

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db.models.signals import post_save
from django.dispatch import receiver

from .models import Message


@receiver(post_save, sender=Message)
def publish_message(sender, instance: Message, created: bool, **kwargs) -> None:
    if created:
        async_to_sync(get_channel_layer().group_send)(
            f"room.{instance.room}",
            {"type": "chat.message", "text": instance.text, "user": instance.user.username, "id": instance.pk})
