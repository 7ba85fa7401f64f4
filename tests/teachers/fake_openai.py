"""A FAKE OpenAI-compatible chat server on 127.0.0.1, for the faults and secrets tests only.

It stands in for a hosted API where a real one can't be used: a test can't hold a real
provider's key, must see exactly which key arrived, and must make a rate limit, a 500 and a
dropped connection happen on cue. It answers POST /v1/chat/completions
with a fixed one-word answer when the request carries `Authorization: Bearer <key>`, and 401
otherwise, so a run that ends with rows proves the key reached the Ray workers. Everything
else the backend does (retries, the Ray pool, shards) is the real code.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator


def _handler(key: str | None, seen: list[str], faults: list[str], delay_s: float):
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            time.sleep(delay_s)  # a slow teacher: time to kill something mid-run
            with lock:
                seen.append(self.headers.get("Authorization", ""))
                fault = faults.pop(0) if faults else None
            if fault == "429":
                return self._send(429, {"error": {"message": "slow down"}}, {"Retry-After": "0"})
            if fault == "500":
                return self._send(500, {"error": {"message": "internal error"}})
            if fault == "drop":  # the connection closes with no answer at all
                self.close_connection = True
                return
            if key is not None and self.headers.get("Authorization") != f"Bearer {key}":
                return self._send(401, {"error": {"message": "bad key", "type": "auth"}})
            self._send(200, {
                "id": "fake", "object": "chat.completion", "created": 0,
                "model": body.get("model", "fake"),
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "positive"}}],
                "usage": {"prompt_tokens": 7, "completion_tokens": 1, "total_tokens": 8},
            })

        def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):  # keep the test output quiet
            pass

    return Handler


@contextmanager
def fake_openai(key: str | None = None, port: int = 0, faults: list[str] | None = None,
                delay_s: float = 0.0) -> Iterator[tuple[str, list[str]]]:
    """Serve on `port` (0: a free one); yields (base_url, the Authorization headers received).

    `faults`: how the first requests are answered, one each, in arrival order: "429" (with
    Retry-After), "500", "drop" (the connection closes without an answer); then normally.
    `delay_s`: each answer waits this long."""
    seen: list[str] = []
    ThreadingHTTPServer.allow_reuse_address = True
    handler = _handler(key, seen, list(faults or []), delay_s)
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", seen
    finally:
        server.shutdown()
        server.server_close()


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on: connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
