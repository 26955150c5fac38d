"""Jenkins -> herald: an adapter plugin for the Jenkins Notification plugin's JSON format.

The Notification plugin (Job > Job Notifications > Endpoint, Format JSON, Protocol HTTP) posts
the job's state at each build phase:

  - QUEUED     -> answered 202, nothing posted
  - STARTED    -> a markdown card "job #n started" (thread key = the build)
  - COMPLETED  -> the build's result on the same card/thread, with the culprits mentioned
  - FINALIZED  -> the same message as COMPLETED with the same dedupe key, so an endpoint set to
                  send every phase posts the result once, and one set to FINALIZED only posts it too

Robot config:
  token      (optional) when set, the request's `token` query parameter (or `X-Jenkins-Token`
             header) must equal it, or the request is rejected with 401. The Notification plugin
             cannot sign requests: append `?token=...` to the endpoint URL.
  log_lines  (optional, default 10) how many lines of the build log's tail to quote on a
             failure; 0 quotes none. The endpoint's "Log lines" setting must send them.

Built by scripts/build-plugins with componentize-py (PyPI) against plugins/wit/adapter-0.1.0.
The toolchain imports WASI; herald links it with an empty context (no files, env or network),
and this module needs none of it: everything it uses is imported at build time.
"""

import json
from urllib.parse import unquote

import wit_world
from componentize_py_types import Err
from wit_world.imports import host, types

# Jenkins' Result names -> the conclusion fact robots filter on, an icon, and a verb.
RESULTS = {
    "SUCCESS": ("success", "\u2705", "succeeded"),
    "UNSTABLE": ("unstable", "\u26a0\ufe0f", "is unstable"),
    "FAILURE": ("failure", "\u274c", "failed"),
    "NOT_BUILT": ("not_built", "\u23ed\ufe0f", "was not built"),
    "ABORTED": ("aborted", "\u23f9\ufe0f", "was aborted"),
}

# Results worth waking someone for, as the severity fact.
SEVERITY = {"FAILURE": "error", "UNSTABLE": "warning"}

MAX_LOG_CHARS = 1500


def reject(status, message):
    raise Err(types.Rejection(status=status, message=message))


def header(request, name):
    for key, value in request.headers:
        if key == name:
            return value
    return None


def query(request, name):
    for key, value in request.query:
        if key == name:
            return value
    return None


def same_secret(a, b):
    """Compares two secrets through their HMACs, so the time taken does not depend on where
    they first differ."""
    key = b"herald-jenkins-token"
    return host.hmac_sha256(key, a.encode()) == host.hmac_sha256(key, b.encode())


def check_token(request):
    expected = host.config("token")
    if not expected:
        return
    given = query(request, "token") or header(request, "x-jenkins-token") or ""
    if not same_secret(given, expected):
        reject(401, "invalid Jenkins token: append ?token=<the robot's token> to the endpoint URL")


def parse(request):
    ctype = (header(request, "content-type") or "application/json").lower()
    if "xml" in ctype:
        reject(415, "set the Notification endpoint's Format to JSON, not XML")
    try:
        doc = json.loads(bytes(request.body).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        reject(400, "the body is not JSON from the Jenkins Notification plugin")
    if not isinstance(doc, dict) or not isinstance(doc.get("build"), dict):
        reject(400, "expected a Jenkins Notification plugin JSON object with a `build`")
    if not isinstance(doc.get("name"), str) or not isinstance(doc["build"].get("number"), int):
        reject(400, "the notification lacks the job `name` or `build.number`")
    return doc


def text(value):
    return value if isinstance(value, str) else ""


def strings(value):
    return [v for v in value if isinstance(v, str) and v] if isinstance(value, list) else []


def branch_of(scm):
    branch = text(scm.get("branch"))
    for prefix in ("refs/heads/", "origin/", "refs/remotes/origin/"):
        if branch.startswith(prefix):
            return branch[len(prefix):]
    return branch


def duration(ms):
    if not isinstance(ms, int) or ms <= 0:
        return ""
    seconds = ms // 1000
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60}m"


def build_url(build):
    url = text(build.get("full_url"))
    return url if url.startswith(("https://", "http://")) else ""


def log_tail(build):
    try:
        lines = int(host.config("log_lines") or "10")
    except ValueError:
        lines = 10
    log = text(build.get("log")).rstrip()
    if lines <= 0 or not log:
        return ""
    tail = "\n".join(log.splitlines()[-lines:])[-MAX_LOG_CHARS:]
    return "```\n" + tail.replace("```", "'''") + "\n```"


def details(build, scm):
    """The card's body lines: where, what, who, how long."""
    lines = []
    branch, commit = branch_of(scm), text(scm.get("commit"))[:10]
    if branch or commit:
        lines.append(" \u00b7 ".join(p for p in (
            f"**Branch** {branch}" if branch else "",
            f"**Commit** `{commit}`" if commit else "") if p))
    params = build.get("parameters")
    if isinstance(params, dict) and params:
        shown = ", ".join(f"{k}={v}" for k, v in sorted(params.items())[:8])
        lines.append(f"**Parameters** {shown}")
    took = duration(build.get("duration"))
    if took:
        lines.append(f"**Duration** {took}")
    culprits = strings(scm.get("culprits"))
    if culprits:
        lines.append("**Changes by** " + ", ".join(culprits))
    notes = text(build.get("notes")).strip()
    if notes:
        lines.append(notes[:500])
    return lines


def facts(build, scm, conclusion=None, severity=None):
    culprits = strings(scm.get("culprits"))
    return types.Facts(
        branch=branch_of(scm) or None,
        tag=None,
        labels=[],
        actor=culprits[0] if culprits else None,
        actor_is_bot=False,
        conclusion=conclusion,
        severity=severity,
    )


def job_title(doc):
    """The job's full name from its URL (`job/payments/job/api/job/main/` -> `payments/api/main`):
    `name` alone is only the last segment, e.g. a multibranch job's branch."""
    parts = text(doc.get("url")).strip("/").split("/")
    names = [p for i, p in enumerate(parts) if i % 2 == 1 and parts[i - 1] == "job"]
    return "/".join(unquote(n) for n in names) if names else doc["name"]


def build_key(doc):
    """One Jenkins build, across its phases: the job's URL (unique per Jenkins folder) and the
    build number."""
    return f"jenkins:{text(doc.get('url')) or doc['name']}#{doc['build']['number']}"


def started(doc):
    build, scm = doc["build"], doc["build"].get("scm") or {}
    title = f"{job_title(doc)} #{build['number']} started"
    body = [f"### \U0001f528 {title}"] + details(build, scm)
    url = build_url(build)
    if url:
        body.append(f"[Open the build]({url})")
    return message(doc, "build.started", title, body, facts(build, scm), [], "started")


def finished(doc):
    build, scm = doc["build"], doc["build"].get("scm") or {}
    status = text(build.get("status")).upper() or "UNKNOWN"
    conclusion, icon, verb = RESULTS.get(status, (status.lower(), "\u2139\ufe0f", f"ended: {status}"))
    title = f"{job_title(doc)} #{build['number']} {verb}"
    body = [f"### {icon} {title}"] + details(build, scm)
    if status in SEVERITY:
        tail = log_tail(build)
        if tail:
            body.append(tail)
    url = build_url(build)
    if url:
        body.append(f"[Open the build]({url}) \u00b7 [Console]({url.rstrip('/')}/console)")
    hints = strings(scm.get("culprits")) if status in SEVERITY else []
    return message(doc, "build.completed", title, body,
                   facts(build, scm, conclusion, SEVERITY.get(status)), hints, "done")


def message(doc, event, title, body, build_facts, hints, phase_key):
    key = build_key(doc)
    return types.Message(
        event=event,
        content=types.Content_Markdown(types.Markdown(title=title, text="\n\n".join(body))),
        mentions=types.Mentions(user_ids=[], mobiles=[], all=False, hints=hints),
        facts=build_facts,
        dedupe_key=f"{key}/{phase_key}",
        thread_key=key,
    )


def ignored(status, why):
    reply = types.Reply(status=status, headers=[("content-type", "application/json")],
                        body=json.dumps({"errcode": 0, "errmsg": why}).encode())
    return types.Output(messages=[], reply=reply)


class WitWorld(wit_world.WitWorld):
    def handle(self, request: types.HttpRequest) -> types.Output:
        check_token(request)
        doc = parse(request)
        phase = text(doc["build"].get("phase")).upper()
        if phase == "STARTED":
            return types.Output(messages=[started(doc)], reply=None)
        if phase in ("COMPLETED", "FINALIZED"):
            return types.Output(messages=[finished(doc)], reply=None)
        if phase == "QUEUED":
            return ignored(202, "queued builds are not posted")
        reject(400, f"unknown Jenkins build phase {phase!r}")
