"""chatproject.serve's own server rules, in a child process (daphne installs its asyncio reactor
on import): only connections with news are looked at, with daphne's reaping rules; what is
warmed up before the first request."""

import json
import os
import subprocess

from tests.support.services import PYTHON, ROOT

SCRIPT = r"""
import asyncio, json, time
import daphne.server  # noqa: F401  installs the asyncio reactor
import django

django.setup()
from twisted.internet import reactor

from chatproject.serve import build_server

reactor.callLater = lambda *args, **kwargs: None  # each check is called by hand here


class Protocol:
    def __init__(self, name):
        self.name, self.errors = name, []

    def handle_exception(self, exc):
        self.errors.append(repr(exc))


async def app(scope, receive, send):
    kind = (await receive())["type"]
    if kind == "fail":
        raise ValueError("boom")
    if kind == "hang":
        await asyncio.sleep(3600)


server = build_server("127.0.0.1", 0, application=app)
server.connections = {}
server.application_close_timeout = 0.2
loop = asyncio.get_event_loop()
looked_at = []
check_application = server.check_application
server.check_application = lambda p, d: looked_at.append(p.name) or check_application(p, d)


def start(name, kind):
    protocol = Protocol(name)
    server.protocol_connected(protocol)
    server.create_application(protocol, {"type": "http"}).put_nowait({"type": kind})
    return protocol


def check():
    loop.run_until_complete(asyncio.sleep(0.01))  # applications run, done-callbacks fire
    server.application_checker()


def state(protocol):
    details = server.connections.get(protocol)
    if details is None:
        return "removed"
    return "running" if "application_instance" in details else "reaped"


idle = [start(f"idle{i}", "hang") for i in range(200)]
ended, failed = start("ended", "end"), start("failed", "fail")
closed, slow = start("closed", "end"), start("slow", "hang")
server.protocol_disconnected(closed)
server.protocol_disconnected(slow)
check()
out = {"first": {p.name: state(p) for p in (ended, failed, closed, slow, idle[0])}}
time.sleep(0.3)  # past application_close_timeout: the slow application is cancelled
check()
check()
out["later"] = {p.name: state(p) for p in (ended, failed, closed, slow)}
out["errors"] = failed.errors
out["looked_at"] = sorted(set(looked_at))
server._app_checks = 299  # the 5-minute full walk (daphne's own) still works
server.protocol_disconnected(ended)
check()
out["after_walk"] = {p.name: state(p) for p in (ended, failed)}
out["connections"] = len(server.connections)
print(json.dumps(out))
"""


def run_script(script: str):
    """Run the script in a child Python (daphne's reactor stays out of this process) and
    return the JSON of its last line of output."""
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="chatproject.settings")
    result = subprocess.run(
        [PYTHON, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_only_connections_with_news_are_checked_with_daphnes_rules():
    out = run_script(SCRIPT)
    assert out["first"] == {
        "ended": "reaped",
        "failed": "reaped",
        "closed": "removed",
        "slow": "running",
        "idle0": "running",
    }
    assert out["later"] == {
        "ended": "reaped",
        "failed": "reaped",
        "closed": "removed",
        "slow": "removed",
    }
    assert out["errors"] == ["ValueError('boom')"]
    assert out["looked_at"] == ["closed", "ended", "failed", "slow"]  # never the 200 idle ones
    assert out["after_walk"] == {"ended": "removed", "failed": "reaped"}
    assert out["connections"] == 201  # the idle ones and the failed one, still open


WARM_UP = r"""
import json, sys
import django

django.setup()
from django.urls import get_resolver

from chatproject import serve

before = "chatproject.api_urls" in sys.modules, get_resolver()._populated
serve.warm_up()
after = "chatproject.api_urls" in sys.modules, get_resolver()._populated
print(json.dumps({"before": before, "after": after, "metadata": "email.parser" in sys.modules}))
"""


def test_warm_up_imports_and_compiles_the_urlconf_before_the_first_request():
    out = run_script(WARM_UP)
    assert out["before"] == [False, False]  # what the first request did, on the event loop
    assert out["after"] == [True, True]
    assert out["metadata"] is True  # redis-py's version read once (importlib.metadata loaded)


ORDER = r"""
import json, sys

from chatproject import serve

calls = []
serve.warm_up = lambda: calls.append("warm_up")
serve.tune_gc = lambda threshold: calls.append("tune_gc")


def build_server(*args, **kwargs):
    calls.append("build_server")
    print(json.dumps(calls))
    sys.exit(0)


serve.build_server = build_server
serve.main(["--workers", "1"])
"""


def test_the_server_warms_up_before_it_serves():
    assert run_script(ORDER) == [
        "warm_up",
        "tune_gc",
        "build_server",
    ]
