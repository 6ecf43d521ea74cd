"""A tiny OpenAI-compatible LLM server, standing in for the model provider behind the gateway.

    python e2e/upstreams/llm_upstream.py --port 8081

POST /v1/chat/completions answers a chat.completion ("hello from <model>"), or SSE chunks ending
with `data: [DONE]` when the request has `"stream": true`. GET /v1/models lists the models.
POST /v1/responses, /v1/messages, /v1beta/models/{m}:generateContent and /model/{m}/converse
answer minimal valid OpenAI Responses, Anthropic, Gemini and Bedrock replies.
Every request is recorded (method, path, headers, body) and can be read back at GET /_received
(a JSON list) and cleared with POST /_reset. The tests talk to this port directly for those two.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODELS = ["gpt-4o-mini", "gpt-4o"]

_lock = threading.Lock()
_received: list[dict] = []


def _completion(model: str, content: str) -> dict:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
    }


def _other_dialect(path: str, body: bytes) -> dict | None:
    """Minimal valid answers for the other dialects the gateway judges (non-streaming)."""
    try:
        request = json.loads(body or b"{}")
    except ValueError:
        return None
    if path == "/v1/responses":
        model = request.get("model", "")
        return {
            "id": f"resp_{uuid.uuid4().hex[:24]}", "object": "response", "created_at": int(time.time()),
            "status": "completed", "model": model,
            "output": [{"type": "message", "id": f"msg_{uuid.uuid4().hex[:24]}", "status": "completed", "role": "assistant",
                        "content": [{"type": "output_text", "text": f"hello from {model}", "annotations": []}]}],
            "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
            "usage": {"input_tokens": 1, "output_tokens": 3, "total_tokens": 4,
                      "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}},
        }
    if path == "/v1/messages":
        model = request.get("model", "")
        return {
            "id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": f"hello from {model}"}],
            "stop_reason": "end_turn", "stop_sequence": None, "usage": {"input_tokens": 1, "output_tokens": 3},
        }
    if path.startswith("/v1beta/models/") and ":" in path:
        model = path.split("/models/", 1)[1].split(":", 1)[0]
        return {"candidates": [{"content": {"role": "model", "parts": [{"text": f"hello from {model}"}]}, "finishReason": "STOP"}]}
    if path.startswith("/model/") and path.endswith("/converse"):
        model = path[len("/model/"):-len("/converse")]
        return {"output": {"message": {"role": "assistant", "content": [{"text": f"hello from {model}"}]}},
                "stopReason": "end_turn", "usage": {"inputTokens": 1, "outputTokens": 3, "totalTokens": 4}}
    return None


def _chunk(chunk_id: str, model: str, delta: dict, finish_reason: str | None) -> dict:
    return {
        "id": chunk_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "llm-upstream/1"

    def log_message(self, fmt: str, *args) -> None:  # one line per request on stderr
        super().log_message(fmt, *args)

    # --- helpers -----------------------------------------------------------------------
    def _read_body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def _send_json(self, status: int, obj) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _record(self, body: bytes) -> None:
        entry = {
            "method": self.command,
            "path": self.path,
            # Repeated headers are joined with ", " so a duplicated (e.g. forged) header shows.
            "headers": {k.lower(): ", ".join(self.headers.get_all(k)) for k in dict.fromkeys(self.headers.keys())},
            "body": body.decode("utf-8", errors="replace"),
        }
        with _lock:
            _received.append(entry)

    # --- routes --------------------------------------------------------------------------
    def do_GET(self) -> None:
        if self.path == "/_received":
            with _lock:
                snapshot = list(_received)
            self._send_json(200, snapshot)
            return
        self._record(b"")
        if self.path.split("?")[0] == "/v1/models":
            self._send_json(
                200,
                {
                    "object": "list",
                    "data": [{"id": m, "object": "model", "created": 0, "owned_by": "demo"} for m in MODELS],
                },
            )
            return
        self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found", "code": None}})

    def do_POST(self) -> None:
        body = self._read_body()
        if self.path == "/_reset":
            with _lock:
                _received.clear()
            self._send_json(200, {"ok": True})
            return
        self._record(body)
        path = self.path.split("?")[0]
        other = _other_dialect(path, body)
        if other is not None:
            self._send_json(200, other)
            return
        if path != "/v1/chat/completions":
            self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found", "code": None}})
            return
        try:
            request = json.loads(body or b"{}")
            model = request["model"]
        except (ValueError, KeyError, TypeError):
            self._send_json(
                400, {"error": {"message": "body must be JSON with a model", "type": "invalid_request_error", "code": None}}
            )
            return
        content = f"hello from {model}"
        if not request.get("stream"):
            self._send_json(200, _completion(model, content))
            return
        chunk_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("connection", "close")
        self.end_headers()
        events = [_chunk(chunk_id, model, {"role": "assistant", "content": ""}, None)]
        events += [_chunk(chunk_id, model, {"content": word}, None) for word in ("hello ", "from ", model)]
        events.append(_chunk(chunk_id, model, {}, "stop"))
        for event in events:
            self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
            self.wfile.flush()
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        self.close_connection = True

    def do_DELETE(self) -> None:
        self._record(self._read_body())
        self._send_json(404, {"error": {"message": "not found", "type": "not_found", "code": None}})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    print(f"llm upstream listening on http://{args.host}:{args.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
