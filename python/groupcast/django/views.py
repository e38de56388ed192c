"""The hook views: check HOOK_SECRET, build the consumer, answer.

A consumer that refuses answers ``{"error":{...}}``; one that raises
anything else is logged and answered as a refusal (``server_error``), so
the client gets an error frame or a refused upgrade instead of a socket
left waiting.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, JsonResponse
from django.utils.module_loading import import_string
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from .consumer import Consumer, Refuse

EVENTS = ("connect", "join", "send", "receive", "disconnect")

log = logging.getLogger("groupcast.django")


def _refusal(code: str, message: str, status: int = 200) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "message": message}}, status=status)


def consumer_class() -> type[Consumer]:
    """settings.GROUPCAST_CONSUMER, imported (default: Consumer)."""
    path = getattr(settings, "GROUPCAST_CONSUMER", None)
    cls = import_string(path) if path else Consumer
    if not (isinstance(cls, type) and issubclass(cls, Consumer)):
        raise ImproperlyConfigured(f"GROUPCAST_CONSUMER {path!r} is not a groupcast.django.Consumer subclass")
    return cls


def _authorized(request: HttpRequest) -> bool:
    secret = getattr(settings, "GROUPCAST_HOOK_SECRET", None)
    if not secret:
        raise ImproperlyConfigured("set GROUPCAST_HOOK_SECRET to the groupcast server's HOOK_SECRET")
    got = request.headers.get("Authorization", "")
    return hmac.compare_digest(got.encode(), f"Bearer {secret}".encode())


@csrf_exempt
@require_POST
def hook(request: HttpRequest, event: str) -> JsonResponse:
    """Answers one hook call for event (connect, join, send, receive or
    disconnect)."""
    try:
        if not _authorized(request):
            return _refusal("forbidden", "bad hook secret", 403)
    except ImproperlyConfigured as e:
        log.error("groupcast hook refused: %s", e)
        return _refusal("server_error", "the application is not configured for groupcast")
    try:
        call: Any = json.loads(request.body)
    except ValueError:
        return _refusal("invalid_json", "the hook body must be JSON", 400)
    if not isinstance(call, dict) or call.get("event", event) != event:
        return _refusal("invalid_data", f"this URL answers {event!r} calls", 400)
    call["event"] = event
    try:
        return JsonResponse(consumer_class()(request, call).answer())
    except Refuse as r:
        return _refusal(r.code, r.message)
    except Exception:
        log.exception("groupcast %s hook failed (channel %s, user %s)", event, call.get("channel"), call.get("user"))
        if event == "disconnect":
            return JsonResponse({})
        return _refusal("server_error", "the application failed to answer")
