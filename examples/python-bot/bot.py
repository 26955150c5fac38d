"""A minimal herald outgoing bot in Python, built on the `standardwebhooks` package.

    python -m venv .venv && .venv/bin/pip install -r requirements.txt
    BOT_SECRET=whsec_... .venv/bin/python bot.py 9001

It verifies each callback (Standard Webhooks headers), answers @-mentions synchronously, and
posts a second, later reply through the event's sessionWebhook.
"""

import json
import os
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

webhook = Webhook(os.environ["BOT_SECRET"])


def later(session_webhook, text):
    """An asynchronous reply: POST a DingTalk-format message to the sessionWebhook."""
    body = json.dumps({"msgtype": "markdown", "markdown": {"title": "done", "text": text}}).encode()
    request = urllib.request.Request(session_webhook, body, {"content-type": "application/json"})
    urllib.request.urlopen(request, timeout=5).read()


class Bot(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        try:
            event = webhook.verify(body, {k.lower(): v for k, v in self.headers.items()})
        except (WebhookVerificationError, ValueError):
            self.send_response(401)
            self.end_headers()
            return
        if not event.get("event", "").startswith("message."):
            self.send_response(204)
            self.end_headers()
            return
        question = event.get("text", {}).get("content", "")
        if event.get("sessionWebhook"):
            threading.Timer(1.0, later, (event["sessionWebhook"], f"finished: {question}")).start()
        reply = json.dumps({"msgtype": "text", "text": {"content": f"working on: {question}"}}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9001
    print(f"bot listening on http://127.0.0.1:{port}", flush=True)
    ThreadingHTTPServer(("127.0.0.1", port), Bot).serve_forever()
