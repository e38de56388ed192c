import re
import urllib.request
from functools import lru_cache

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_POST

from .models import Message

ROOM = re.compile(r"^[A-Za-z0-9_-]{1,80}$")


def _room(room: str) -> str:
    if not ROOM.match(room):
        raise Http404("no such room")
    return room


@login_required
def index(request: HttpRequest) -> HttpResponse:
    return render(request, "chat/index.html")


@login_required
def room(request: HttpRequest, room: str) -> HttpResponse:
    return render(request, "chat/room.html", {"room": _room(room), "groupcast": settings.GROUPCAST_PUBLIC_URL})


@login_required
@require_POST
def post_message(request: HttpRequest, room: str) -> JsonResponse:
    """Saves a message; the post_save signal publishes it."""
    text = request.POST.get("text", "").strip()[:2000]
    if not text:
        return JsonResponse({"error": "empty message"}, status=400)
    m = Message.objects.create(room=_room(room), user=request.user, text=text)
    return JsonResponse({"id": m.pk})


@login_required
@require_POST
def announce(request: HttpRequest, room: str) -> JsonResponse:
    """group_send straight from a view, as before."""
    async_to_sync(get_channel_layer().group_send)(
        f"room.{_room(room)}", {"type": "chat.notice", "text": request.POST.get("text", "")[:200]})
    return JsonResponse({"ok": True})


@lru_cache(maxsize=1)
def _client_js() -> bytes:
    with urllib.request.urlopen(settings.CHANNEL_LAYERS["default"]["CONFIG"]["url"] + "/client.js", timeout=5) as r:
        return r.read()


def client_js(request: HttpRequest) -> HttpResponse:
    """Development only: groupcast's /client.js from this origin (a module
    script from another origin would need CORS). In production the load
    balancer routes /client.js to groupcast."""
    return HttpResponse(_client_js(), content_type="text/javascript; charset=utf-8")
