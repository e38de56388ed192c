"""groupcast for Python: a Django Channels layer (:mod:`groupcast.layers`), a
client of the server API (:mod:`groupcast.client`), a Django app that
answers the server's hooks (:mod:`groupcast.django`) and test helpers
(:mod:`groupcast.testing`)."""

from .client import AsyncClient, Client
from .errors import GroupcastError, NotFound, TooLarge, Unauthorized, Unavailable, Unsupported
from .tokens import mint_token

__all__ = ["AsyncClient", "Client", "GroupcastError", "NotFound", "TooLarge", "Unauthorized",
           "Unavailable", "Unsupported", "mint_token"]
