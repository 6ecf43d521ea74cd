"""A slow streaming upstream: an LLM provider and an MCP server whose answers take their time.

    python e2e/upstreams/slow_stream.py --port 8081

Stands in for both upstreams in the edge tests (e2e/tests/test_edge.py), where what matters is
how long an answer streams through Envoy, not what it says:
  - POST /v1/chat/completions with `"stream": true`: OpenAI chat chunks, one delta every
    `x-slow-interval` seconds (default 1), `x-slow-deltas` of them (default 3), then
    `data: [DONE]`.
  - POST /mcp (a JSON-RPC request): an SSE answer with one `notifications/progress` event per
    interval, then the result for the request's id.
Every request is recorded (method, path, headers, body): GET /_received lists them, POST
/_reset clears them, as in llm_upstream.py.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler
from http_plumbing import read_body, serve

_lock = threading.Lock()
_received: list[dict] = []


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "slow-stream/1"

    def log_message(self, fmt: str, *args) -> None:
        super().log_message(fmt, *args)

    def _read_body(self) -> bytes:
        return read_body(self)

    def _send_json(self, status: int, obj) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/_received":
            with _lock:
                self._send_json(200, list(_received))
            return
        self._send_json(404, {"error": "not found"})

    def do_POST(self) -> None:
        body = self._read_body()
        if self.path == "/_reset":
            with _lock:
                _received.clear()
            self._send_json(200, {"ok": True})
            return
        with _lock:
            _received.append({
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): ", ".join(self.headers.get_all(k)) for k in dict.fromkeys(self.headers.keys())},
                "body": body.decode("utf-8", errors="replace"),
            })
        try:
            request = json.loads(body or b"{}")
        except ValueError:
            self._send_json(400, {"error": "body must be JSON"})
            return
        deltas = int(self.headers.get("x-slow-deltas", "3"))
        interval = float(self.headers.get("x-slow-interval", "1"))
        path = self.path.split("?")[0]
        if path == "/v1/chat/completions" and request.get("stream"):
            events = [self._chat_chunk(request["model"], {"content": f"delta {i} "}) for i in range(deltas)]
            final = [self._chat_chunk(request["model"], {}, "stop"), "[DONE]"]
        elif path == "/mcp" and "id" in request:
            events = [{"jsonrpc": "2.0", "method": "notifications/progress",
                       "params": {"progressToken": request["id"], "progress": i, "total": deltas}}
                      for i in range(deltas)]
            final = [{"jsonrpc": "2.0", "id": request["id"],
                      "result": {"content": [{"type": "text", "text": "done"}], "isError": False}}]
        else:
            self._send_json(404, {"error": f"no streaming route {self.path}"})
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("connection", "close")
        self.end_headers()
        for event in events:
            self._event(event)
            time.sleep(interval)
        for event in final:
            self._event(event)
        self.close_connection = True

    def _event(self, event) -> None:
        data = event if isinstance(event, str) else json.dumps(event)
        self.wfile.write(f"data: {data}\n\n".encode())
        self.wfile.flush()

    @staticmethod
    def _chat_chunk(model: str, delta: dict, finish_reason: str | None = None) -> dict:
        return {"id": "chatcmpl-slow", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}


def main() -> None:
    serve(Handler, __doc__, 8081, "slow stream upstream")

if __name__ == "__main__":
    main()
