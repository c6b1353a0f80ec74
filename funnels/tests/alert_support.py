"""Loopback receivers for the alert channels: a ping URL, an SMTP server, a Sentry DSN.

Each runs in a thread of the test process on 127.0.0.1 and an ephemeral port, and keeps
what it received for the test to read.
"""

from __future__ import annotations

import gzip
import json
import socketserver
import threading
from email import message_from_bytes
from email.header import decode_header, make_header
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Server:
    def __init__(self, server) -> None:
        self.server = server
        self.thread = threading.Thread(target=server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.shutdown()
        self.server.server_close()


class PingReceiver(_Server):
    """Records the path of every GET, healthchecks.io style."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        paths = self.paths

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                paths.append(self.path)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")

            def log_message(self, *args):
                pass

        super().__init__(ThreadingHTTPServer(("127.0.0.1", 0), Handler))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/ping/run-token"


class SentryReceiver(_Server):
    """Accepts Sentry envelopes (POST /api/<project>/envelope/) and keeps their items."""

    def __init__(self) -> None:
        self.items: list[tuple[dict, dict]] = []  # (item header, payload)
        items = self.items

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                lines = body.split(b"\n")
                # envelope header, then (item header, payload) pairs
                for header, payload in zip(lines[1::2], lines[2::2]):
                    if header.strip():
                        items.append((json.loads(header), json.loads(payload or b"{}")))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        super().__init__(ThreadingHTTPServer(("127.0.0.1", 0), Handler))

    @property
    def dsn(self) -> str:
        return f"http://public0key@127.0.0.1:{self.port}/42"

    def events(self) -> list[dict]:
        return [payload for header, payload in self.items if header.get("type") == "event"]


class SmtpSink(_Server):
    """Just enough SMTP to accept Django's mail: every message is kept, parsed."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.refuse = False  # answer 421 to everything, as a server going down does
        sink = self

        class Handler(socketserver.StreamRequestHandler):
            def reply(self, text: str) -> None:
                self.wfile.write(text.encode() + b"\r\n")

            def handle(self):
                if sink.refuse:
                    self.reply("421 sink closing")
                    return
                self.reply("220 sink ESMTP")
                while True:
                    line = self.rfile.readline()
                    if not line:
                        return
                    verb = line.decode(errors="replace").strip().split(" ")[0].upper()
                    if verb in ("EHLO", "HELO"):
                        self.reply("250 sink")
                    elif verb == "DATA":
                        self.reply("354 go ahead")
                        data = b""
                        while not data.endswith(b"\r\n.\r\n"):
                            chunk = self.rfile.readline()
                            if not chunk:
                                return
                            data += chunk
                        sink.messages.append(message_from_bytes(data[: -len(b".\r\n")]))
                        self.reply("250 queued")
                    elif verb == "QUIT":
                        self.reply("221 bye")
                        return
                    else:  # MAIL, RCPT, RSET, NOOP
                        self.reply("250 OK")

        server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        super().__init__(server)

    def subjects(self) -> list[str]:
        return [str(make_header(decode_header(m["Subject"]))) for m in self.messages]

    def bodies(self) -> list[str]:
        return [m.get_payload(decode=True).decode(m.get_content_charset() or "utf-8")
                for m in self.messages]
