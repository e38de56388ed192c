"""The response parser, on answers split anywhere and on garbage: it
completes with the right body or raises ConnectionFailed, nothing else."""

from __future__ import annotations

import random

import pytest

from groupcast._http import ConnectionFailed, _Parser

GOOD = [
    (b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}", b'{"ok":true}'),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n", b"hello world"),
    (b"HTTP/1.1 204 No Content\r\nDate: x\r\n\r\n", b""),
    (b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: 2\r\n\r\n{}", b"{}"),
]


@pytest.mark.parametrize("raw,body", GOOD)
def test_any_split_gives_the_body(raw: bytes, body: bytes) -> None:
    rng = random.Random(1)
    for _ in range(200):
        p = _Parser()
        cuts = sorted(rng.sample(range(1, len(raw)), min(len(raw) - 1, rng.randint(1, 6))))
        parts = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)])]
        done = [p.feed(part) for part in parts]
        assert done[-1] and not any(done[:-1]) and p.body == body


def test_garbage_raises_connection_failed_only() -> None:
    rng = random.Random(2)
    pieces = [b"HTTP/1.1 ", b"200", b"abc", b" OK\r\n", b"Content-Length: ", b"-5", b"zz", b"\r\n\r\n",
              b"Transfer-Encoding: chunked\r\n", b"fffffffffffffffffffff\r\n", b"-1\r\n", b"\x00\xff", b"\r\n"]
    for _ in range(3000):
        p = _Parser()
        try:
            for _ in range(rng.randint(1, 8)):
                junk = rng.choice(pieces) if rng.random() < 0.8 else bytes(rng.randrange(256) for _ in range(rng.randint(1, 20)))
                if p.feed(junk):
                    assert p.body is not None
                    break
        except ConnectionFailed:
            pass
