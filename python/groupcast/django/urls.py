"""The hook URLs: include under a prefix, e.g. ``path("groupcast/", include("groupcast.django.urls"))``
gives /groupcast/connect, /groupcast/join, /groupcast/send, /groupcast/receive and /groupcast/disconnect."""

from django.urls import path

from . import views

app_name = "groupcast"

urlpatterns = [path(event, views.hook, {"event": event}, name=event) for event in views.EVENTS]
