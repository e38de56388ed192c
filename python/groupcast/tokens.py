"""Minting connection tokens for the groupcast server (HS256, its JWT_SECRET)."""

from __future__ import annotations

import time
from typing import Any, Iterable


def mint_token(secret: str, sub: str | int, *, ttl: float = 3600, join: Iterable[str] | None = None,
               send: Iterable[str] | None = None, group: str | None = None, info: Any = None,
               issuer: str | None = None, audience: str | None = None, now: float | None = None) -> str:
    """A token with the documented claims: ``sub`` (the user, shown as
    ``user``), ``exp`` (now + ttl seconds), and optionally ``join`` /
    ``send`` (group names or prefixes ending in ``*``), ``group`` (a
    per-group token for one join), ``info`` (presence info, one JSON value of
    at most 1 KiB), ``iss`` and ``aud``. The secret is the server's
    JWT_SECRET (32 bytes or more)."""
    import jwt  # PyJWT (Debian: python3-jwt)

    if len(secret.encode()) < 32:
        raise ValueError("the secret must be 32 bytes or more, as the server's JWT_SECRET")
    claims: dict[str, Any] = {"sub": str(sub), "exp": int((now if now is not None else time.time()) + ttl)}
    if join is not None:
        claims["join"] = list(join)
    if send is not None:
        claims["send"] = list(send)
    if group is not None:
        claims["group"] = group
    if info is not None:
        claims["info"] = info
    if issuer is not None:
        claims["iss"] = issuer
    if audience is not None:
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm="HS256")
