"""What a connect hook with Django session login adds to a WebSocket
connect: open, welcome, close, one after another, against a server without
hooks and one whose HOOK_CONNECT_URL is examples/django-chat on gunicorn
(the session and auth middleware run on the forwarded cookie; ChatConsumer
checks the user).

    /usr/bin/python3 python/bench/connect_hook.py --groupcast /tmp/gc --connects 300
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "python"))

from groupcast.testing import GroupcastServer, WebsocketClient, free_port  # noqa: E402

EXAMPLE = ROOT / "examples" / "django-chat"


async def connects(url: str, n: int, cookie: str) -> list[float]:
    lat = []
    for i in range(n + 20):
        t = time.perf_counter()
        ws = await WebsocketClient.connect(url, headers={"Cookie": cookie})
        lat.append(time.perf_counter() - t)
        await ws.close()
    return sorted(lat[20:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--groupcast", required=True)
    ap.add_argument("--connects", type=int, default=300)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp()
    env = {**os.environ, "DATABASE_PATH": f"{tmp}/db.sqlite3", "HOOK_SECRET": "s", "DJANGO_DEBUG": "false"}
    manage = [sys.executable, str(EXAMPLE / "manage.py")]
    subprocess.run([*manage, "migrate", "-v0"], env=env, check=True)
    out = subprocess.run([*manage, "shell", "-c",
                          "from django.contrib.auth.models import User; from django.test import Client; "
                          "User.objects.create_user('ada', password='pw'); c = Client(); c.login(username='ada', password='pw'); "
                          "print(c.cookies['sessionid'].value)"], env=env, check=True, capture_output=True, text=True)
    cookie = f"sessionid={out.stdout.strip()}"
    port = free_port()
    django = f"http://127.0.0.1:{port}"
    g = subprocess.Popen([shutil.which("gunicorn") or "gunicorn", "-b", f"127.0.0.1:{port}", "-w", "2", "--log-level",
                          "warning", "chatsite.wsgi"], cwd=EXAMPLE, env=env)
    try:
        for _ in range(150):
            try:
                urllib.request.urlopen(django + "/accounts/login/", timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        print(f"{args.connects} connects one after another (open, welcome, close), {os.cpu_count()} cores")
        for label, extra in (("no hook", {}), ("connect hook, Django session login",
                                               {"HOOK_CONNECT_URL": f"{django}/groupcast/connect", "HOOK_SECRET": "s"})):
            with GroupcastServer(args.groupcast, env=extra) as gc:
                lat = asyncio.run(connects(gc.ws_url, args.connects, cookie))
            p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1e3  # noqa: E731
            print(f"{label:<36} p50 {p(0.5):6.2f} ms   p99 {p(0.99):6.2f} ms   mean {statistics.fmean(lat) * 1e3:6.2f} ms")
    finally:
        g.terminate()
        g.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
