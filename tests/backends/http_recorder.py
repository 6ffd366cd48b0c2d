"""An in-process HTTP server on loopback that records every request and answers through a handler."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


# (request) -> (status, content type, body)
Responder = Callable[[Recorded], tuple[int, str, bytes]]


class Recorder:
    def __init__(self, respond: Responder) -> None:
        self.requests: list[Recorded] = []
        self._respond = respond
        self.url = ""

    def handler(self) -> type[BaseHTTPRequestHandler]:
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                request = Recorded(
                    self.command,
                    self.path,
                    {name.lower(): value for name, value in self.headers.items()},
                    self.rfile.read(length),
                )
                recorder.requests.append(request)
                status, content_type, body = recorder._respond(request)
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PATCH = do_DELETE = _serve

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

        return Handler


@contextmanager
def recording(respond: Responder) -> Iterator[Recorder]:
    recorder = Recorder(respond)
    server = ThreadingHTTPServer(("127.0.0.1", 0), recorder.handler())
    recorder.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield recorder
    finally:
        server.shutdown()
        server.server_close()
