"""A callback receiver built on the PyPI `standardwebhooks` package, for herald's tests.

Every POST is checked with each configured secret (`POST /secrets` sets them, newest first):
the genuine request must verify, a tampered body and an old timestamp must not, and
DingTalk's `sign` header must match the newest secret. `GET /results` lists the findings.
Prints `listening <port>` once ready.
"""

import base64
import datetime
import hashlib
import hmac
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook

secrets = []
results = []


def passes(secret, body, headers):
    try:
        Webhook(secret).verify(body, headers)
        return True
    except Exception:  # WebhookVerificationError, or ValueError for a malformed entry
        return False


def old_replay_passes(secret, body, headers):
    """Re-signs the same body at a timestamp an hour old, correctly: must still fail."""
    wh = Webhook(secret)
    old = datetime.datetime.now(tz=datetime.timezone.utc) - datetime.timedelta(hours=1)
    signature = wh.sign(headers["webhook-id"], old, body.decode())
    replay = dict(headers, **{"webhook-timestamp": str(int(old.timestamp())), "webhook-signature": signature})
    return passes(secret, body, replay)


def dingtalk_ok(secret, headers):
    text = f"{headers.get('timestamp')}\n{secret}".encode()
    expected = base64.b64encode(hmac.new(secret.encode(), text, hashlib.sha256).digest()).decode()
    return hmac.compare_digest(expected, headers.get("sign", ""))


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def answer(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.answer(200, results)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.path == "/secrets":
            secrets[:] = json.loads(body)
            return self.answer(200, {})
        headers = {k.lower(): v for k, v in self.headers.items()}
        tampered_ts = dict(headers, **{"webhook-timestamp": str(int(headers.get("webhook-timestamp", "0")) - 3600)})
        results.append({
            "event": json.loads(body).get("event"),
            "signatures": len(headers.get("webhook-signature", "").split()),
            "verified": [passes(s, body, headers) for s in secrets],
            "tampered_body_passes": any(passes(s, body + b" ", headers) for s in secrets),
            "old_timestamp_passes": any(passes(s, body, tampered_ts) for s in secrets),
            "old_replay_passes": any(old_replay_passes(s, body, headers) for s in secrets),
            "dingtalk_sign_ok": bool(secrets) and dingtalk_ok(secrets[0], headers),
        })
        self.answer(200, {})


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(f"listening {server.server_address[1]}", flush=True)
server.serve_forever()
