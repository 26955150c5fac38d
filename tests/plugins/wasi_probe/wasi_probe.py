"""A hostile plugin for the sandbox tests (never an example): it tries what a plugin must not
be able to do through the WASI imports its toolchain forces (read files, list directories,
read the environment, open sockets, resolve names, write to stdout) and posts what happened
as one JSON text message, which the test checks.

The request body names the targets: {"path": "/etc/hostname", "port": 12345}; with
{"crash": true} it raises an exception instead (which traps the instance). It also reports how
many calls this instance has served and the robot's config `who`, for the warm-instance tests.
"""

import encodings.idna  # noqa: F401 - socket calls encode host names with it; snapshot it now
import json
import os
import socket
import sys

import wit_world
from wit_world.imports import host, types

CALLS = 0


def attempt(action):
    """What an action did: {"ok": result} or {"error": its exception's class}."""
    try:
        return {"ok": action()}
    except Exception as e:  # noqa: BLE001 - every failure is a result here
        return {"error": type(e).__name__, "why": str(e)[:120]}


def connect(port):
    """A plain connect to a numeric address: no name lookup on the way to wasi:sockets."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        s.connect(("127.0.0.1", port))
        s.sendall(b"escaped\n")
        return "connected"


def probe(target):
    global CALLS
    CALLS += 1
    if target.get("crash"):
        raise RuntimeError("the probe crashes on request")
    path, port = target.get("path", "/etc/hostname"), int(target.get("port", 80))
    print("a plugin's stdout goes nowhere")
    print("nor does its stderr", file=sys.stderr)
    return {
        "read": attempt(lambda: open(path).read(64)),
        "listdir": attempt(lambda: os.listdir("/")),
        "cwd_listdir": attempt(lambda: os.listdir(".")),
        "write": attempt(lambda: open("/tmp/herald-plugin-escape", "w").write("x")),
        "environ": dict(os.environ),
        "argv": list(sys.argv),
        "connect": attempt(lambda: connect(port)),
        "resolve": attempt(lambda: socket.getaddrinfo("localhost", port)[0][4][0]),
        "calls": CALLS,
        "who": host.config("who"),
    }


class WitWorld(wit_world.WitWorld):
    def handle(self, request: types.HttpRequest) -> types.Output:
        result = probe(json.loads(bytes(request.body) or b"{}"))
        return types.Output(
            messages=[
                types.Message(
                    event="probe",
                    content=types.Content_Text(json.dumps(result, sort_keys=True)),
                    mentions=types.Mentions(user_ids=[], mobiles=[], all=False, hints=[]),
                    facts=types.Facts(branch=None, tag=None, labels=[], actor=None,
                                      actor_is_bot=False, conclusion=None, severity=None),
                    dedupe_key=None,
                    thread_key=None,
                )
            ],
            reply=None,
        )
