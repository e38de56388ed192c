"""A Django app that answers groupcast's hooks with a consumer class, so a
Channels consumer ports by subclassing :class:`Consumer`.

::

    INSTALLED_APPS += ["groupcast.django"]
    GROUPCAST_HOOK_SECRET = os.environ["HOOK_SECRET"]      # the server's HOOK_SECRET
    GROUPCAST_CONSUMER = "chat.consumers.ChatConsumer"      # a Consumer subclass
    urlpatterns += [path("groupcast/", include("groupcast.django.urls"))]

and run the server with ``HOOK_CONNECT_URL=https://app/groupcast/connect``
(and ``join``, ``send``, ``receive``, ``disconnect``). groupcast forwards the
browser's Cookie header on every call, so Django's own session and
authentication middleware set ``request.user`` as Channels'
``AuthMiddlewareStack`` did.
"""

from .consumer import Consumer, Refuse

__all__ = ["Consumer", "Refuse"]
