"""A FAKE OpenAI-compatible teacher on 127.0.0.1, for the one fault no real small engine gives
on demand: a teacher that answers one label to every prompt (or exactly what a test says).

It speaks just enough of /v1/chat/completions for `teachers.http_engine.OpenAIGenerator`, and
counts the requests it served, so a test can tell whether an engine was asked again.
"""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterator


class FakeTeacher:
    def __init__(self, answer: Callable[[str], str]):
        self.answer = answer  # the last user message -> the reply
        self.requests = 0
        self.url = ""


def _handler(fake: FakeTeacher):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep the test output quiet
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            fake.requests += 1
            text = fake.answer(body["messages"][-1]["content"])
            payload = json.dumps({
                "id": f"fake-{fake.requests}", "object": "chat.completion", "created": 0,
                "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": 20, "completion_tokens": 1, "total_tokens": 21},
            }).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
    return Handler


@contextmanager
def fake_teacher(answer: Callable[[str], str]) -> Iterator[FakeTeacher]:
    fake = FakeTeacher(answer)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    fake.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
