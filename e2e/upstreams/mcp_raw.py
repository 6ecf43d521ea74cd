"""A hand-written MCP Streamable HTTP server that records what it parsed, and answers in any
legal wire shape the tests ask for.

    python e2e/upstreams/mcp_raw.py --port 8082

The SDK server (mcp_server.py) answers one way; real servers differ: TypeScript-SDK servers open
every SSE answer with a priming event (`id`, `retry`, empty `data`), 2025-03-26 servers answer
JSON-RPC batches, servers behind a compressing middleware gzip whatever the client asked for,
JavaScript servers echo request ids as float64. This server does each of those on request, so
the differential tests can check that what a client decodes from an answer (and what the server
executed) is what agent-authz judged.

Endpoint /mcp (POST, GET, DELETE), with sessions: `initialize` mints an `Mcp-Session-Id`; a
request naming an unknown session gets 404; no session header is accepted (stateless use).
Tools: refund, lookup_ticket, delete_repo.

Test-only endpoints (the tests call this port directly):
  GET  /_parsed  every request received: method, path, headers, raw body, the JSON-RPC messages
                 as parsed (`last`: last duplicate key wins, as Python/JS/Go do; `first`), the
                 session id minted, and `executed`: the tool calls run, with their arguments
  POST /_reset   clears the record and the answer mode
  POST /_mode    sets the answer mode (a JSON object; missing keys take the defaults):
    answer:   "sse" (default) | "json"
    encoding: "identity" (default) | "gzip" | "deflate"  (applied whatever Accept-Encoding says)
    priming:  true: an SSE answer opens with `id: <x>`, `retry: 5000`, `data: ` and a blank line
    comments: true: `: keep-alive` comment lines before and between fields
    id_retry_only: true: an event carrying only `id:` and `retry:` before the message
    line_end: "\\n" (default) | "\\r\\n" | "\\r"
    multiline: true: the JSON message spread over several `data:` lines (split at its commas)
    bom:      true: a UTF-8 BOM opens the stream
    event_name: an `event:` field on message events (default none; "message" is the spec's default)
    split:    byte offsets (of the encoded body) at which the answer is cut into separate writes
    id_echo:  "exact" (default) | "python" (integral numbers re-spelt: 1E2 -> 100) | "js": numeric ids echoed as a JavaScript server would
              (parsed as float64, 9000000000000001 -> 9000000000000000, 1e400 -> null, -0 -> 0)
    list_json: how the tools/list result is written: "plain" (default) | "escaped" (every tool
              name spelt with JSON unicode escapes) | "utf8" (non-ASCII description text unescaped) |
              "dup_name" (each hidden tool's object first names an allowed tool, then its own:
              a last-wins client reads the hidden one) | "dup_tools" (`tools` twice: an empty
              list, then the full one)
    batch_sse: "events" (default: one event per answer) | "array" (one event holding the array)
    content_type: the answer's Content-Type spelt another way; "{}" stands for the usual one
              (e.g. "{}; charset=utf-8"), anything else replaces it (e.g. "Text/Event-Stream")
    get_list: true: the GET stream carries a tools/list answer (as a replay after Last-Event-ID)
    legacy_sse: true: the GET stream opens with an `endpoint` event, as the 2024-11-05 HTTP+SSE
              transport does (which then answers every request on that stream); it names a new
              session (`/mcp?session_id=legacy-...`), which POSTs to that URL then belong to
    legacy_prelude: SSE text written before that `endpoint` event (e.g. "id: 7\n\n")
"""

from __future__ import annotations

import gzip
import json
import math
import threading
import time
import uuid
import zlib
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit
from http_plumbing import read_body, serve

TOOLS = [
    {"name": "refund", "description": "Refund a customer on a support ticket.",
     "inputSchema": {"type": "object", "properties": {"ticket_id": {"type": "string"}, "amount_cents": {"type": "integer"}},
                     "required": ["ticket_id", "amount_cents"]}},
    {"name": "lookup_ticket", "description": "Look up a support ticket.",
     "inputSchema": {"type": "object", "properties": {"ticket_id": {"type": "string"}}, "required": ["ticket_id"]}},
    {"name": "delete_repo", "description": "Delete a source repository (dangerous).",
     "inputSchema": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}},
]
TOOL_NAMES = {t["name"] for t in TOOLS}
PROTOCOLS = ["2025-11-25", "2025-06-18", "2025-03-26"]

_lock = threading.Lock()
_parsed: list[dict] = []
_sessions: set[str] = set()
_mode: dict = {}


class RawNumber(str):
    """A JSON number kept as its text, so ids are echoed exactly as sent."""


def _first_wins(pairs):
    out = {}
    for key, value in pairs:
        out.setdefault(key, value)
    return out


def parse(text: str, first: bool = False):
    return json.loads(
        text,
        parse_int=RawNumber,
        parse_float=RawNumber,
        object_pairs_hook=_first_wins if first else None,
    )


def plain(value):
    """A parsed value with numbers as Python numbers (for the record)."""
    if isinstance(value, RawNumber):
        try:
            return int(value)
        except ValueError:
            f = float(value)
            return f if math.isfinite(f) else str(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def id_text(request_id) -> str:
    """The id as this server writes it back."""
    if isinstance(request_id, RawNumber):
        if _mode.get("id_echo") == "js":
            f = float(request_id)
            if not math.isfinite(f):
                return "null"
            return str(int(f)) if f == int(f) and abs(f) < 1e21 else repr(f)
        if _mode.get("id_echo") == "python":  # pydantic's int | str: 1E2 -> 100, -0 -> 0
            f = float(request_id)
            return str(int(f)) if math.isfinite(f) and f == int(f) else str(request_id)
        return str(request_id)
    return json.dumps(request_id)


def answer_text(request_id, *, result=None, error=None, result_text: str | None = None) -> str:
    if result_text is not None:
        payload = '{"result":' + result_text + "}"
    else:
        payload = json.dumps({"error": error}) if error is not None else json.dumps({"result": result})
    return '{"jsonrpc":"2.0","id":' + id_text(request_id) + "," + payload[1:]


def tools_list_text() -> str:
    """The tools/list result in the wire shape the mode asks for."""
    shape = _mode.get("list_json", "plain")
    tools = [dict(t, description=t["description"] + " \u00e9\u2014\u2603") for t in TOOLS] if shape == "utf8" else TOOLS
    if shape == "utf8":
        return json.dumps({"tools": tools}, ensure_ascii=False)
    if shape == "dup_tools":
        return '{"tools":[],"tools":' + json.dumps(TOOLS) + "}"
    parts = []
    for tool in tools:
        rest = json.dumps({k: v for k, v in tool.items() if k != "name"})[1:]
        if shape == "escaped":
            name = '"' + "".join(f"\\u{ord(c):04x}" for c in tool["name"]) + '"'
        else:
            name = json.dumps(tool["name"])
        if shape == "dup_name" and tool["name"] == "delete_repo":
            parts.append('{"name":"lookup_ticket","name":' + name + "," + rest)
        else:
            parts.append('{"name":' + name + "," + rest)
    return '{"tools":[' + ",".join(parts) + "]}"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "mcp-raw/1"

    # ------------------------------------------------------------------ plumbing
    def _read_body(self) -> bytes:
        return read_body(self)

    def _send(self, status: int, body: bytes, content_type: str | None, headers: dict | None = None,
              *, encode: bool = True) -> None:
        encoding = _mode.get("encoding", "identity") if encode else "identity"
        if encode and content_type and _mode.get("content_type"):
            content_type = _mode["content_type"].replace("{}", content_type)
        if encoding == "gzip":
            body = gzip.compress(body)
        elif encoding == "deflate":
            body = zlib.compress(body)
        self.send_response(status)
        if content_type:
            self.send_header("content-type", content_type)
        if encoding != "identity":
            self.send_header("content-encoding", encoding)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        cuts = sorted({c for c in _mode.get("split", []) if 0 < c < len(body)}) if encode else []
        if not cuts:
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
            return
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        for start, end in zip([0, *cuts], [*cuts, len(body)]):
            piece = body[start:end]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.flush()
            time.sleep(0.01)  # separate writes reach Envoy (and ext_proc) as separate chunks
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _send_json(self, status: int, obj) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json", encode=False)

    def _entry(self, body: bytes) -> dict:
        return {
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): ", ".join(self.headers.get_all(k)) for k in dict.fromkeys(self.headers.keys())},
            "body": body.decode("utf-8", errors="replace"),
            "messages": [],
            "executed": [],
        }

    def _store(self, entry: dict) -> None:
        with _lock:
            _parsed.append(entry)

    # ------------------------------------------------------------------ SSE framing
    def _sse(self, messages: list[str], *, endpoint: str | None = None) -> bytes:
        eol = _mode.get("line_end", "\n")
        out = []
        if _mode.get("bom"):
            out.append("\ufeff")
        if endpoint:  # the 2024-11-05 HTTP+SSE transport opens its stream with the POST endpoint
            if _mode.get("comments"):
                out.append(f": hello{eol}")
            if _mode.get("id_retry_only"):
                out.append(f"retry: 3000{eol}{eol}")
            out.append(_mode.get("legacy_prelude", "").replace("\n", eol))
            out.append(f"event: endpoint{eol}data: /mcp?session_id={endpoint}{eol}{eol}")
        if _mode.get("priming"):
            out.append(f"id: prime-{uuid.uuid4().hex[:8]}{eol}retry: 5000{eol}data: {eol}{eol}")
        for n, message in enumerate(messages):
            lines = []
            if _mode.get("comments"):
                lines.append(": keep-alive")
            if _mode.get("id_retry_only"):
                out.append(f"id: only-{n}{eol}retry: 3000{eol}{eol}")
            if _mode.get("event_name"):
                lines.append(f"event: {_mode['event_name']}")
            lines.append(f"id: ev-{n}")
            if _mode.get("comments"):
                lines.append(":")
            if _mode.get("multiline"):
                parts = message.split(",")
                lines += [f"data: {p}" + ("," if i < len(parts) - 1 else "") for i, p in enumerate(parts)]
            else:
                lines.append(f"data: {message}")
            out.append(eol.join(lines) + eol + eol)
        return "".join(out).encode()

    def _answer(self, answers: list[str], batch: bool, headers: dict) -> None:
        if not answers:
            self._send(202, b"", None, headers, encode=False)
            return
        if _mode.get("answer", "sse") == "json":
            text = "[" + ",".join(answers) + "]" if batch else answers[0]
            self._send(200, text.encode(), "application/json", headers)
            return
        if batch and _mode.get("batch_sse") == "array":
            answers = ["[" + ",".join(answers) + "]"]
        headers = {"cache-control": "no-cache", **headers}
        self._send(200, self._sse(answers), "text/event-stream", headers)

    # ------------------------------------------------------------------ MCP
    def _handle(self, message, entry: dict, minted: list[str]) -> str | None:
        if not isinstance(message, dict):
            return answer_text(None, error={"code": -32600, "message": "invalid request"})
        method = message.get("method")
        request_id = message.get("id")
        params = message.get("params") if isinstance(message.get("params"), dict) else {}
        if method is None:  # a client's response to a server request
            return None
        if "id" not in message:  # notification
            return None
        if method == "initialize":
            session = f"srv-{uuid.uuid4().hex}"
            minted.append(session)
            with _lock:
                _sessions.add(session)
            asked = params.get("protocolVersion")
            version = asked if asked in PROTOCOLS else PROTOCOLS[0]
            return answer_text(request_id, result={
                "protocolVersion": version,
                "capabilities": {"tools": {"listChanged": False}},
                "serverInfo": {"name": "support-raw", "version": "1.0"},
            })
        if method == "ping":
            return answer_text(request_id, result={})
        if method == "tools/list":
            return answer_text(request_id, result_text=tools_list_text())
        if method == "tools/call":
            name = params.get("name")
            arguments = plain(params.get("arguments") or {})
            if name not in TOOL_NAMES:
                return answer_text(request_id, error={"code": -32602, "message": f"unknown tool {name}"})
            entry["executed"].append({"tool": name, "arguments": arguments,
                                      "decision_id": entry["headers"].get("x-agent-authz-decision-id")})
            return answer_text(request_id, result={"content": [{"type": "text", "text": f"{name} done"}], "isError": False})
        return answer_text(request_id, error={"code": -32601, "message": f"method not found: {method}"})

    def _session_ok(self, entry: dict) -> bool:
        session = self.headers.get("mcp-session-id")
        query = parse_qs(urlsplit(self.path).query).get("session_id")
        if query:  # the 2024-11-05 HTTP+SSE transport names its session in the endpoint URL
            session = query[0]
            entry["legacy_session"] = session
        if session is None:
            return True
        with _lock:
            known = session in _sessions
        if not known:
            entry["refused"] = "unknown session"
            self._store(entry)
            self._send_json(404, {"jsonrpc": "2.0", "id": None, "error": {"code": -32001, "message": "session not found"}})
        return known

    def do_POST(self) -> None:
        body = self._read_body()
        if self.path == "/_reset":
            with _lock:
                _parsed.clear()
                _mode.clear()
            self._send_json(200, {"ok": True})
            return
        if self.path == "/_mode":
            with _lock:
                _mode.clear()
                _mode.update(json.loads(body or b"{}"))
            self._send_json(200, dict(_mode))
            return
        entry = self._entry(body)
        if urlsplit(self.path).path != "/mcp":
            self._store(entry)
            self._send_json(404, {"error": "no route"})
            return
        if not self._session_ok(entry):
            return
        try:
            text = body.decode("utf-8")
            last, first = parse(text), parse(text, first=True)
        except ValueError as e:
            entry["refused"] = f"parse error: {e}"
            self._store(entry)
            self._send_json(400, {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "parse error"}})
            return
        batch = isinstance(last, list)
        messages = last if batch else [last]
        entry["messages"] = plain(messages)
        entry["messages_first_wins"] = plain(first if batch else [first])
        minted: list[str] = []
        answers = [a for a in (self._handle(m, entry, minted) for m in messages) if a is not None]
        entry["minted_session"] = minted[0] if minted else None
        self._store(entry)
        self._answer(answers, batch, {"mcp-session-id": minted[0]} if minted else {})

    def do_GET(self) -> None:
        if self.path == "/_parsed":
            with _lock:
                snapshot = list(_parsed)
            self._send_json(200, snapshot)
            return
        entry = self._entry(b"")
        if not self._session_ok(entry):
            return
        self._store(entry)  # (minted_session is filled in below, on the stored entry)
        # The server's own requests to the client (here a sampling request carrying the session
        # owner's data), then the stream ends.
        request = json.dumps({"jsonrpc": "2.0", "id": "srv-1", "method": "sampling/createMessage",
                              "params": {"messages": [{"role": "user", "content": {"type": "text", "text": "private to the session owner"}}],
                                         "maxTokens": 10}})
        if _mode.get("get_list"):  # a replayed (or misdirected) tools/list answer on the GET stream
            request = answer_text(RawNumber("1"), result_text=tools_list_text())
        legacy = None
        if _mode.get("legacy_sse"):
            legacy = f"legacy-{uuid.uuid4().hex}"
            entry["minted_session"] = legacy
            with _lock:
                _sessions.add(legacy)
        stream = self._sse([request], endpoint=legacy)
        self._send(200, stream, "text/event-stream", {"cache-control": "no-cache"})

    def do_DELETE(self) -> None:
        entry = self._entry(self._read_body())
        if not self._session_ok(entry):
            return
        self._store(entry)
        session = self.headers.get("mcp-session-id")
        with _lock:
            _sessions.discard(session)
        self._send(200, b"", None, encode=False)

    def log_message(self, fmt: str, *args) -> None:
        super().log_message(fmt, *args)


def main() -> None:
    serve(Handler, __doc__, 8082, "raw mcp server")

if __name__ == "__main__":
    main()
