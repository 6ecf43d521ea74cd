"""A tiny multi-provider LLM server, standing in for the model providers behind the gateway.

    python e2e/upstreams/llm_upstream.py --port 8081

Each provider's paths answer in that provider's real wire shape, so its own SDK parses them:
  - OpenAI Chat (`/v1/chat/completions`, SSE chunks ending with `data: [DONE]` when streamed),
    Responses (`/v1/responses`), the model list (`GET /v1/models`);
  - Azure OpenAI (`/openai/deployments/{d}/chat/completions|responses`, `/openai/responses`,
    `/openai/v1/chat/completions|responses`; the deployment is the model);
  - Anthropic Messages (`/v1/messages`, SSE events when streamed);
  - Gemini (`/v1/models/{m}:generateContent`, `/v1beta/...`, `:streamGenerateContent?alt=sse`);
  - Bedrock Runtime (`/model/{id}/converse`, `converse-stream`, `invoke`,
    `invoke-with-response-stream`; streams in AWS's binary event-stream framing).
`GET /v1/models/{id}` answers one model object.
Every request is recorded (method, path, headers, body, and `parsed`: the model, tool names
and stream flag as that provider reads them; `provider_view`: every model, tool and outside
reference a provider's lenient parser would read, under either duplicate-key rule, see
provider_view.py) and can be read back at GET /_received (a JSON list) and cleared with
POST /_reset. POST /_mode {"gzip_models": true} makes the model-list answers gzip-compressed
whatever the request's Accept-Encoding says (a compressing proxy in front of the provider);
{"models_json": shape} spells the model list differently (see _model_list_text);
{"tool_calls": [{"name": ..., "arguments": {...} or "raw text"}, ...]} makes chat, Responses,
Anthropic Messages, Gemini and Bedrock Converse answers carry those tool calls (JSON `message.tool_calls` /
`tool_use` blocks / `toolUse` blocks; streamed as `delta.tool_calls` / `input_json_delta` / `delta.toolUse.input`
fragments a few bytes long, after some text), as a
model that decided to call tools would; with "calls_shape" also set, chat answers are spelt
differently (see _send_shaped_calls); with "hold_calls": true, a chat answer waits before its
first tool call (streamed: after the text) until POST /_release, so a test can act between the
request's decision and the answer's (stop Cerbos, say).
The tests talk to this port directly for those three.
"""

from __future__ import annotations

import base64
import gzip
import json
import re
import struct
import zlib
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler
from urllib.parse import unquote

from provider_view import provider_view
from http_plumbing import read_body, serve

MODELS = ["gpt-4o-mini", "gpt-4o"]

_lock = threading.Lock()
_received: list[dict] = []
_mode: dict = {}
# Opened by POST /_release, closed again by POST /_mode: see "hold_calls".
_released = threading.Event()


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


def _names(tools, name) -> list[str]:
    return [n for n in (name(t) for t in tools or [] if isinstance(t, dict)) if n]


def parse(path: str, body: dict) -> dict | None:
    """What the provider serving `path` reads of the request: the dialect, model, tool names and
    stream flag. None for a path no provider serves."""
    def chat(model):
        return {"dialect": "openai_chat", "model": model, "stream": bool(body.get("stream")),
                "tools": _names(body.get("tools"), lambda t: (t.get("function") or {}).get("name"))}

    def responses(model):
        return {"dialect": "openai_responses", "model": model, "stream": bool(body.get("stream")),
                "tools": _names(body.get("tools"), lambda t: t.get("name") or t.get("server_label") or t.get("type"))}

    def anthropic(model, stream):
        return {"dialect": "anthropic_messages", "model": model, "stream": stream,
                "tools": _names(body.get("tools"), lambda t: t.get("name"))}

    if path in ("/v1/chat/completions", "/openai/v1/chat/completions"):
        return chat(body.get("model"))
    if path in ("/v1/responses", "/openai/responses", "/openai/v1/responses"):
        return responses(body.get("model"))
    if m := re.fullmatch(r"/openai/deployments/([^/]+)/(chat/completions|responses)", path):
        return (chat if m[2] == "chat/completions" else responses)(unquote(m[1]))
    if path == "/v1/messages":
        return anthropic(body.get("model"), bool(body.get("stream")))
    if m := re.fullmatch(r"/v1(?:beta)?/models/([^/:]+):(generateContent|streamGenerateContent)", path):
        tools = []
        for entry in body.get("tools") or []:
            for key, value in entry.items():
                tools += [d.get("name") for d in value] if key == "functionDeclarations" else [key]
        return {"dialect": "gemini", "model": unquote(m[1]), "tools": tools, "stream": m[2] == "streamGenerateContent"}
    if m := re.fullmatch(r"/model/([^/]+)/(converse|converse-stream|invoke|invoke-with-response-stream)", path):
        model, op = unquote(m[1]), m[2]  # AWS decodes the model id once
        if op.startswith("converse"):
            specs = (body.get("toolConfig") or {}).get("tools")
            return {"dialect": "bedrock_converse", "model": model, "stream": op == "converse-stream",
                    "tools": _names(specs, lambda t: (t.get("toolSpec") or {}).get("name"))}
        return anthropic(model, op == "invoke-with-response-stream") | {"dialect": "bedrock_invoke"}
    return None


def _model_list_text(shape: str) -> str:
    """The model list in another legal (or ambiguous) spelling, for the differential tests:
    "escaped" (ids as JSON unicode escapes), "dup_id" (each model object names gpt-4o-mini,
    then its own id), "dup_data" (`data` twice: the first model only, then all), "pretty"."""
    def model(m: str, id_text: str | None = None) -> str:
        return '{"id":' + (id_text or json.dumps(m)) + ',"object":"model","created":0,"owned_by":"demo"}'

    if shape == "escaped":
        items = [model(m, '"' + "".join(f"\\u{ord(c):04x}" for c in m) + '"') for m in MODELS]
    elif shape == "dup_id":
        items = [model(m, '"gpt-4o-mini","id":' + json.dumps(m)) for m in MODELS]
    else:
        items = [model(m) for m in MODELS]
    if shape == "dup_data":
        return '{"object":"list","data":[' + items[0] + '],"data":[' + ",".join(items) + "]}"
    if shape == "pretty":
        return json.dumps(json.loads('{"object":"list","data":[' + ",".join(items) + "]}"), indent=4)
    return '{"object":"list","data":[' + ",".join(items) + "]}"


def _responses_answer(model: str) -> dict:
    return {
        "id": f"resp_{uuid.uuid4().hex[:24]}", "object": "response", "created_at": int(time.time()),
        "status": "completed", "model": model,
        "output": [{"type": "message", "id": f"msg_{uuid.uuid4().hex[:24]}", "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": f"hello from {model}", "annotations": []}]}],
        "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
        "usage": {"input_tokens": 1, "output_tokens": 3, "total_tokens": 4,
                  "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}},
    }


def _anthropic_message(model: str) -> dict:
    return {
        "id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": f"hello from {model}"}],
        "stop_reason": "end_turn", "stop_sequence": None, "usage": {"input_tokens": 1, "output_tokens": 3},
    }


def _anthropic_events(model: str) -> list[dict]:
    """The events of a streamed Anthropic message saying "hello from <model>"."""
    start = _anthropic_message(model) | {"content": [], "stop_reason": None}
    return [
        {"type": "message_start", "message": start},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        *({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}}
          for w in ("hello ", "from ", model)),
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": 3}},
        {"type": "message_stop"},
    ]


def _gemini_answer(model: str, text: str) -> dict:
    return {"candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 3, "totalTokenCount": 4},
            "modelVersion": model}


def _converse_events(model: str) -> list[tuple[str, dict]]:
    return [
        ("messageStart", {"role": "assistant"}),
        *(("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": w}}) for w in ("hello ", "from ", model)),
        ("contentBlockStop", {"contentBlockIndex": 0}),
        ("messageStop", {"stopReason": "end_turn"}),
        ("metadata", {"usage": {"inputTokens": 1, "outputTokens": 3, "totalTokens": 4}, "metrics": {"latencyMs": 1}}),
    ]


def event_stream_message(event_type: str, payload: dict | str, headers: list[tuple[str, str]] | None = None) -> bytes:
    """One message of AWS's `application/vnd.amazon.eventstream` framing (what botocore parses):
    `payload` as JSON (a str is sent as it is), string headers (the usual three by default)."""
    encoded = b""
    for name, value in headers or ((":event-type", event_type), (":content-type", "application/json"), (":message-type", "event")):
        encoded += bytes([len(name)]) + name.encode() + b"\x07" + struct.pack(">H", len(value)) + value.encode()
    body = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
    total = 12 + len(encoded) + len(body) + 4
    prelude = struct.pack(">II", total, len(encoded))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    message = prelude + encoded + body
    return message + struct.pack(">I", zlib.crc32(message))


def _converse_tool_answer(script: list[dict]) -> dict:
    """A Converse answer: a text block, then one `toolUse` block per scripted call (raw text
    arguments are sent as the JSON string they are)."""
    content = [{"text": "Let me do that."}]
    content += [{"toolUse": {"toolUseId": f"tooluse_{n}_{c['name']}", "name": c["name"], "input": c["arguments"]}}
                for n, c in enumerate(script)]
    return {"output": {"message": {"role": "assistant", "content": content}}, "stopReason": "tool_use",
            "usage": {"inputTokens": 1, "outputTokens": 9, "totalTokens": 10}, "metrics": {"latencyMs": 1}}


def _converse_tool_events(script: list[dict]) -> list[tuple[str, dict]]:
    """The same answer as ConverseStream sends it: the text block's delta, then each call's
    contentBlockStart and its input's JSON text in `delta.toolUse.input` fragments of at most
    7 characters (raw text arguments as they are)."""
    events = [("messageStart", {"role": "assistant"}),
              ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Let me do that."}}),
              ("contentBlockStop", {"contentBlockIndex": 0})]
    for n, call in enumerate(script, start=1):
        text = call["arguments"] if isinstance(call["arguments"], str) else json.dumps(call["arguments"])
        events.append(("contentBlockStart", {"contentBlockIndex": n, "start": {
            "toolUse": {"toolUseId": f"tooluse_{n - 1}_{call['name']}", "name": call["name"]}}}))
        events += [("contentBlockDelta", {"contentBlockIndex": n, "delta": {"toolUse": {"input": text[at:at + 7]}}})
                   for at in range(0, len(text), 7)]
        events.append(("contentBlockStop", {"contentBlockIndex": n}))
    events += [("messageStop", {"stopReason": "tool_use"}),
               ("metadata", {"usage": {"inputTokens": 1, "outputTokens": 9, "totalTokens": 10}, "metrics": {"latencyMs": 1}})]
    return events


def _scripted_calls(script: list[dict]) -> list[dict]:
    """The scripted tool calls as Chat Completions `tool_calls` entries."""
    calls = []
    for n, call in enumerate(script):
        arguments = call["arguments"] if isinstance(call["arguments"], str) else json.dumps(call["arguments"])
        calls.append({"id": f"call_{n}_{call['name']}", "type": "function",
                      "function": {"name": call["name"], "arguments": arguments}})
    return calls


def _tool_call_chunks(chunk_id: str, model: str, calls: list[dict]) -> list[dict]:
    """A streamed answer calling `calls`: a text delta, each call in fragments of at most
    7 argument characters (the first naming it), then finish_reason tool_calls."""
    chunks = [_chunk(chunk_id, model, {"role": "assistant", "content": ""}, None),
              _chunk(chunk_id, model, {"content": "Let me do that."}, None)]
    for index, call in enumerate(calls):
        first = {"index": index, "id": call["id"], "type": "function",
                 "function": {"name": call["function"]["name"], "arguments": ""}}
        chunks.append(_chunk(chunk_id, model, {"tool_calls": [first]}, None))
        text = call["function"]["arguments"]
        for at in range(0, len(text), 7):
            piece = {"index": index, "function": {"arguments": text[at:at + 7]}}
            chunks.append(_chunk(chunk_id, model, {"tool_calls": [piece]}, None))
    chunks.append(_chunk(chunk_id, model, {}, "tool_calls"))
    return chunks


def _hold_calls() -> None:
    """With "hold_calls", waits (at most a minute) for POST /_release."""
    if _mode.get("hold_calls"):
        _released.wait(60)


def _held_from(pieces: list[bytes], at: int):
    """`pieces`, waiting before `pieces[at]` as `_hold_calls` says."""
    yield from pieces[:at]
    _hold_calls()
    yield from pieces[at:]


def _responses_tool_answer(model: str, script: list[dict]) -> dict:
    """A Responses answer: a message item, then one `function_call` item per scripted call."""
    answer = _responses_answer(model)
    for n, call in enumerate(script):
        arguments = call["arguments"] if isinstance(call["arguments"], str) else json.dumps(call["arguments"])
        answer["output"].append({"type": "function_call", "id": f"fc_{n}_{call['name']}", "call_id": f"call_{n}_{call['name']}",
                                 "name": call["name"], "arguments": arguments, "status": "completed"})
    return answer


def _responses_tool_events(model: str, script: list[dict]) -> list[dict]:
    """The same answer streamed as the Responses API does: each item added, its arguments in
    fragments of at most 7 characters, done; then response.completed listing every item."""
    final = _responses_tool_answer(model, script)
    events = [{"type": "response.created", "response": final | {"status": "in_progress", "output": []}},
              {"type": "response.in_progress", "response": final | {"status": "in_progress", "output": []}}]
    for index, item in enumerate(final["output"]):
        if item["type"] == "message":
            text = item["content"][0]["text"]
            events += [{"type": "response.output_item.added", "output_index": index, "item": item | {"status": "in_progress", "content": []}},
                       {"type": "response.content_part.added", "item_id": item["id"], "output_index": index, "content_index": 0,
                        "part": {"type": "output_text", "text": "", "annotations": []}},
                       {"type": "response.output_text.delta", "item_id": item["id"], "output_index": index, "content_index": 0, "delta": text},
                       {"type": "response.output_text.done", "item_id": item["id"], "output_index": index, "content_index": 0, "text": text},
                       {"type": "response.content_part.done", "item_id": item["id"], "output_index": index, "content_index": 0,
                        "part": item["content"][0]},
                       {"type": "response.output_item.done", "output_index": index, "item": item}]
            continue
        text = item["arguments"]
        events.append({"type": "response.output_item.added", "output_index": index, "item": item | {"arguments": "", "status": "in_progress"}})
        events += [{"type": "response.function_call_arguments.delta", "item_id": item["id"], "output_index": index, "delta": text[at:at + 7]}
                   for at in range(0, len(text), 7)]
        events += [{"type": "response.function_call_arguments.done", "item_id": item["id"], "output_index": index, "arguments": text},
                   {"type": "response.output_item.done", "output_index": index, "item": item}]
    events.append({"type": "response.completed", "response": final})
    return [e | {"sequence_number": n} for n, e in enumerate(events)]


def _gemini_tool_answer(model: str, script: list[dict]) -> dict:
    """A Gemini answer: a text part, then one `functionCall` part per scripted call."""
    answer = _gemini_answer(model, "Let me do that.")
    answer["candidates"][0]["content"]["parts"] += [{"functionCall": {"name": c["name"], "args": c["arguments"]}} for c in script]
    return answer


def _gemini_tool_chunks(model: str, script: list[dict]) -> list[dict]:
    """The same answer streamed: the text, then each call in its own chunk, the last one
    finishing the candidate."""
    chunks = [_gemini_answer(model, "Let me do that.")]
    chunks[0]["candidates"][0].pop("finishReason")
    for n, call in enumerate(script):
        chunk = _gemini_answer(model, "")
        chunk["candidates"][0]["content"]["parts"] = [{"functionCall": {"name": call["name"], "args": call["arguments"]}}]
        if n < len(script) - 1:
            chunk["candidates"][0].pop("finishReason")
        chunks.append(chunk)
    return chunks


def _anthropic_tool_message(model: str, script: list[dict]) -> dict:
    """A Messages answer: a text block, then one `tool_use` block per scripted call."""
    blocks = [{"type": "text", "text": "Let me do that."}]
    for n, call in enumerate(script):
        arguments = call["arguments"]
        blocks.append({"type": "tool_use", "id": f"toolu_{n}_{call['name']}", "name": call["name"],
                       "input": json.loads(arguments) if isinstance(arguments, str) else arguments})
    return _anthropic_message(model) | {"content": blocks, "stop_reason": "tool_use"}


def _anthropic_tool_events(model: str, script: list[dict]) -> list[dict]:
    """The same answer streamed; each call's input as `input_json_delta` fragments of at
    most 7 characters (raw text arguments are sent as they are)."""
    start = _anthropic_message(model) | {"content": [], "stop_reason": None}
    events = [{"type": "message_start", "message": start},
              {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
              {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let me do that."}},
              {"type": "content_block_stop", "index": 0}]
    for n, call in enumerate(script, start=1):
        text = call["arguments"] if isinstance(call["arguments"], str) else json.dumps(call["arguments"])
        events.append({"type": "content_block_start", "index": n, "content_block": {
            "type": "tool_use", "id": f"toolu_{n - 1}_{call['name']}", "name": call["name"], "input": {}}})
        events += [{"type": "content_block_delta", "index": n, "delta": {"type": "input_json_delta", "partial_json": text[at:at + 7]}}
                   for at in range(0, len(text), 7)]
        events.append({"type": "content_block_stop", "index": n})
    events += [{"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None}, "usage": {"output_tokens": 9}},
               {"type": "message_stop"}]
    return events


def _chunk(chunk_id: str, model: str, delta: dict, finish_reason: str | None) -> dict:
    return {
        "id": chunk_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


def _respell_names(text: str, names: list[str], shape: str) -> str:
    """The differential shapes every format's tool-call answers share: "escaped_name" (each
    call's name as JSON unicode escapes) and "dup_name" (each call names get_weather, then its
    own tool: a reader that takes the first name judges another call than the SDK runs)."""
    for name in names:
        if shape == "escaped_name":
            text = text.replace(f'"name": "{name}"', '"name": "' + "".join(f"\\u{ord(c):04x}" for c in name) + '"')
        if shape == "dup_name":
            text = text.replace(f'"name": "{name}"', f'"name": "get_weather", "name": "{name}"')
    return text


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "llm-upstream/1"

    def log_message(self, fmt: str, *args) -> None:  # one line per request on stderr
        super().log_message(fmt, *args)

    # --- helpers -----------------------------------------------------------------------
    def _read_body(self) -> bytes:
        return read_body(self)

    def _send_json(self, status: int, obj, *, compress: bool = False) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        if compress:
            body = gzip.compress(body)
            self.send_header("content-encoding", "gzip")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_raw_json(self, text: str, *, compress: bool = False) -> None:
        body = text.encode()
        if compress:
            body = gzip.compress(body)
        self.send_response(200)
        self.send_header("content-type", "application/json")
        if compress:
            self.send_header("content-encoding", "gzip")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_shaped_calls(self, model: str, calls: list[dict], stream: bool) -> None:
        """A tool-call answer spelt as `_mode` says (the differential tests): calls_shape "plain" |
        "escaped_name" (names as JSON unicode escapes) | "dup_name" (each function object names
        get_weather, then its own tool) | "dup_tool_calls" (`tool_calls` twice, empty first) |
        "split_name" (streamed: a call's name in two fragments, as SDKs concatenate them);
        sse_eol (line end), sse_comments (a comment line before each event), gzip_chat
        (compressed whatever Accept-Encoding says)."""
        shape = _mode["calls_shape"]
        eol = _mode.get("sse_eol", "\n")

        def spell(text: str) -> str:
            text = _respell_names(text, [c["function"]["name"] for c in calls], shape)
            if shape == "dup_tool_calls":
                text = text.replace('"tool_calls": [', '"tool_calls": [], "tool_calls": [', 1)
            return text

        if not stream:
            answer = _completion(model, "")
            answer["choices"][0]["message"] |= {"content": None, "tool_calls": calls}
            answer["choices"][0]["finish_reason"] = "tool_calls"
            pieces = [spell(json.dumps(answer)).encode()]
            content_type = "application/json"
        else:
            chunk_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
            events = _tool_call_chunks(chunk_id, model, calls)
            if shape == "split_name":
                split = []
                for event in events:
                    fragments = event["choices"][0]["delta"].get("tool_calls") or []
                    first = fragments[0] if fragments else {}
                    name = (first.get("function") or {}).get("name")
                    if name:
                        first["function"]["name"] = name[:3]
                        split.append(event)
                        split.append(_chunk(chunk_id, model, {"tool_calls": [{"index": first["index"], "function": {"name": name[3:]}}]}, None))
                    else:
                        split.append(event)
                events = split
            comment = f": keep-alive{eol}" if _mode.get("sse_comments") else ""
            pieces = [f"{comment}data: {spell(json.dumps(e))}{eol}{eol}".encode() for e in events]
            pieces.append(f"data: [DONE]{eol}{eol}".encode())
            content_type = "text/event-stream"
        self._write_pieces(content_type, pieces)

    def _send_shaped_anthropic(self, model: str, script: list[dict], stream: bool) -> None:
        """A Messages tool_use answer spelt as `_mode` says: calls_shape "plain" | "escaped_name"
        | "dup_name" (each tool_use block names get_weather, then its own tool) | "dup_input"
        (JSON: `input` twice, {} first) | "dup_content" (JSON: `content` twice, empty first) |
        "input_in_start" (streamed: the input in content_block_start, no input_json_delta);
        sse_eol, sse_comments and gzip_chat as for Chat Completions."""
        shape = _mode["calls_shape"]
        eol = _mode.get("sse_eol", "\n")

        def spell(text: str) -> str:
            text = _respell_names(text, [c["name"] for c in script], shape)
            if shape == "dup_input":
                text = text.replace('"input": {', '"input": {}, "input": {')
            if shape == "dup_content":
                text = text.replace('"content": [', '"content": [], "content": [', 1)
            return text

        if not stream:
            pieces = [spell(json.dumps(_anthropic_tool_message(model, script))).encode()]
            content_type = "application/json"
        else:
            events = _anthropic_tool_events(model, script)
            if shape == "input_in_start":
                inputs = {n: call["arguments"] for n, call in enumerate(script, start=1)}
                kept = []
                for event in events:
                    if event["type"] == "content_block_start" and event["content_block"]["type"] == "tool_use":
                        event["content_block"]["input"] = inputs[event["index"]]
                    if event["type"] == "content_block_delta" and event["delta"]["type"] == "input_json_delta":
                        continue
                    kept.append(event)
                events = kept
            comment = f": keep-alive{eol}" if _mode.get("sse_comments") else ""
            pieces = [f"{comment}event: {e['type']}{eol}data: {spell(json.dumps(e))}{eol}{eol}".encode() for e in events]
            content_type = "text/event-stream"
        self._write_pieces(content_type, pieces)

    def _send_shaped_converse(self, script: list[dict], stream: bool) -> None:
        """A Converse toolUse answer spelt as `_mode` says: calls_shape "plain" | "escaped_name"
        | "dup_name" (each toolUse names get_weather, then its own tool) | "dup_input" (JSON:
        `input` twice, {} first) | "dup_header" (streamed: each tool block's start carries
        `:event-type` twice, metadata first; botocore keeps the last); gzip_chat as for Chat
        Completions. Streams are AWS event-stream messages."""
        shape = _mode["calls_shape"]

        def spell(text: str) -> str:
            text = _respell_names(text, [c["name"] for c in script], shape)
            if shape == "dup_input":
                text = text.replace('"input": {', '"input": {}, "input": {')
            return text

        if not stream:
            self._write_pieces("application/json", [spell(json.dumps(_converse_tool_answer(script))).encode()])
            return
        pieces = []
        for name, payload in _converse_tool_events(script):
            body = spell(json.dumps(payload))
            headers = [(":event-type", name), (":content-type", "application/json"), (":message-type", "event")]
            if shape == "dup_header" and name == "contentBlockStart" and "toolUse" in payload["start"]:
                headers.insert(0, (":event-type", "metadata"))
            pieces.append(event_stream_message(name, body, headers))
        self._write_pieces("application/vnd.amazon.eventstream", pieces)

    def _send_shaped_responses(self, model: str, script: list[dict], stream: bool) -> None:
        """A Responses function_call answer spelt as `_mode` says: calls_shape "plain" |
        "escaped_name" | "dup_name" (each function_call item names get_weather, then its own
        tool) | "completed_adds" (streamed: response.completed also lists a delete_repo call no
        other event announced) | "done_differs" (streamed: output_item.done names delete_repo
        where output_item.added named the scripted tool); sse_eol, sse_comments, gzip_chat."""
        shape = _mode["calls_shape"]
        eol = _mode.get("sse_eol", "\n")

        def spell(text: str) -> str:
            text = _respell_names(text, [c["name"] for c in script], shape)
            return text

        if not stream:
            pieces = [spell(json.dumps(_responses_tool_answer(model, script))).encode()]
            content_type = "application/json"
        else:
            events = _responses_tool_events(model, script)
            extra = {"type": "function_call", "id": "fc_extra", "call_id": "call_extra", "name": "delete_repo",
                     "arguments": json.dumps({"name": "agent-authz"}), "status": "completed"}
            for event in events:
                if shape == "completed_adds" and event["type"] == "response.completed":
                    event["response"] = event["response"] | {"output": [*event["response"]["output"], extra]}
                if shape == "done_differs" and event["type"] == "response.output_item.done" and event["item"]["type"] == "function_call":
                    event["item"] = event["item"] | {"name": "delete_repo"}
            comment = f": keep-alive{eol}" if _mode.get("sse_comments") else ""
            pieces = [f"{comment}event: {e['type']}{eol}data: {spell(json.dumps(e))}{eol}{eol}".encode() for e in events]
            content_type = "text/event-stream"
        self._write_pieces(content_type, pieces)

    def _send_shaped_gemini(self, model: str, script: list[dict], stream: bool) -> None:
        """A Gemini functionCall answer spelt as `_mode` says: calls_shape "plain" | "snake_case"
        (`function_call`, the proto field name, which proto3 JSON readers such as google-genai
        accept) | "escaped_name" | "dup_name"; sse_eol, sse_comments, gzip_chat."""
        shape = _mode["calls_shape"]
        eol = _mode.get("sse_eol", "\n")

        def spell(text: str) -> str:
            if shape == "snake_case":
                text = text.replace('"functionCall"', '"function_call"')
            text = _respell_names(text, [c["name"] for c in script], shape)
            return text

        if not stream:
            pieces = [spell(json.dumps(_gemini_tool_answer(model, script))).encode()]
            content_type = "application/json"
        else:
            comment = f": keep-alive{eol}" if _mode.get("sse_comments") else ""
            pieces = [f"{comment}data: {spell(json.dumps(c))}{eol}{eol}".encode() for c in _gemini_tool_chunks(model, script)]
            content_type = "text/event-stream"
        self._write_pieces(content_type, pieces)

    def _write_pieces(self, content_type: str, pieces: list[bytes]) -> None:
        """Writes an answer piece by piece (gzip-compressed as it streams with gzip_chat)."""
        self.send_response(200)
        self.send_header("content-type", content_type)
        self.send_header("connection", "close")
        if _mode.get("gzip_chat"):
            self.send_header("content-encoding", "gzip")
            compressor = zlib.compressobj(wbits=31)
            pieces = [compressor.compress(p) + compressor.flush(zlib.Z_SYNC_FLUSH) for p in pieces]
            pieces.append(compressor.flush(zlib.Z_FINISH))
        self.end_headers()
        for piece in pieces:
            self.wfile.write(piece)
            self.wfile.flush()
        self.close_connection = True

    def _stream(self, content_type: str, chunks) -> None:
        """Sends each chunk as it is produced; the connection closes at the end."""
        self.send_response(200)
        self.send_header("content-type", content_type)
        self.send_header("cache-control", "no-cache")
        self.send_header("connection", "close")
        self.end_headers()
        for chunk in chunks:
            self.wfile.write(chunk)
            self.wfile.flush()
        self.close_connection = True

    def _record(self, body: bytes, parsed: dict | None = None) -> None:
        entry = {
            "parsed": parsed,
            "method": self.command,
            "path": self.path,
            # Repeated headers are joined with ", " so a duplicated (e.g. forged) header shows.
            "headers": {k.lower(): ", ".join(self.headers.get_all(k)) for k in dict.fromkeys(self.headers.keys())},
            "body": body.decode("utf-8", errors="replace"),
            "provider_view": provider_view(self.command, self.path, body),
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
        path = self.path.split("?")[0]
        compress = bool(_mode.get("gzip_models"))
        if path == "/v1/models" and _mode.get("models_json"):
            self._send_raw_json(_model_list_text(_mode["models_json"]), compress=compress)
            return
        if path == "/v1/models":
            self._send_json(
                200,
                {
                    "object": "list",
                    "data": [{"id": m, "object": "model", "created": 0, "owned_by": "demo"} for m in MODELS],
                },
                compress=compress,
            )
            return
        if path.startswith("/v1/models/") and path[len("/v1/models/"):] in MODELS:
            model = path[len("/v1/models/"):]
            self._send_json(200, {"id": model, "object": "model", "created": 0, "owned_by": "demo"}, compress=compress)
            return
        self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found", "code": None}})

    def do_POST(self) -> None:
        body = self._read_body()
        if self.path == "/_reset":
            with _lock:
                _received.clear()
                _mode.clear()
            self._send_json(200, {"ok": True})
            return
        if self.path == "/_mode":
            with _lock:
                _mode.clear()
                _mode.update(json.loads(body or b"{}"))
                _released.clear()
            self._send_json(200, dict(_mode))
            return
        if self.path == "/_release":
            _released.set()
            self._send_json(200, dict(_mode))
            return
        path = self.path.split("?")[0]
        try:
            request = json.loads(body or b"{}")
        except ValueError:
            request = None
        parsed = parse(path, request) if isinstance(request, dict) else None
        self._record(body, parsed)
        if parsed is None or not parsed.get("model"):
            self._send_json(404 if parsed is None and isinstance(request, dict) else 400,
                            {"error": {"message": f"cannot serve {self.path}", "type": "invalid_request_error", "code": None}})
            return
        model, stream, dialect = parsed["model"], parsed["stream"], parsed["dialect"]
        sse = lambda events: (f"data: {json.dumps(e)}\n\n".encode() for e in events)  # noqa: E731
        script = _mode.get("tool_calls")
        if dialect == "openai_chat" and script and _mode.get("calls_shape"):
            calls = _scripted_calls(script)
            self._send_shaped_calls(model, calls, stream)
        elif dialect == "openai_chat" and script:
            calls = _scripted_calls(script)
            if not stream:
                answer = _completion(model, "")
                answer["choices"][0]["message"] |= {"content": None, "tool_calls": calls}
                answer["choices"][0]["finish_reason"] = "tool_calls"
                _hold_calls()
                self._send_json(200, answer)
                return
            chunk_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
            chunks = [*sse(_tool_call_chunks(chunk_id, model, calls)), b"data: [DONE]\n\n"]
            # The role and the text first (never held by the gateway), then the calls.
            self._stream("text/event-stream", _held_from(chunks, 2))
        elif dialect == "openai_chat":
            if not stream:
                self._send_json(200, _completion(model, f"hello from {model}"))
                return
            chunk_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
            events = [_chunk(chunk_id, model, {"role": "assistant", "content": ""}, None)]
            events += [_chunk(chunk_id, model, {"content": word}, None) for word in ("hello ", "from ", model)]
            events.append(_chunk(chunk_id, model, {}, "stop"))
            self._stream("text/event-stream", [*sse(events), b"data: [DONE]\n\n"])
        elif dialect == "openai_responses" and script and _mode.get("calls_shape"):
            self._send_shaped_responses(model, script, stream)
        elif dialect == "openai_responses" and script:
            if not stream:
                self._send_json(200, _responses_tool_answer(model, script))
                return
            self._stream("text/event-stream",
                         (f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in _responses_tool_events(model, script)))
        elif dialect == "openai_responses":
            self._send_json(200, _responses_answer(model))
        elif dialect == "anthropic_messages" and script and _mode.get("calls_shape"):
            self._send_shaped_anthropic(model, script, stream)
        elif dialect == "anthropic_messages" and script:
            if not stream:
                self._send_json(200, _anthropic_tool_message(model, script))
                return
            self._stream("text/event-stream",
                         (f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in _anthropic_tool_events(model, script)))
        elif dialect == "anthropic_messages":
            if not stream:
                self._send_json(200, _anthropic_message(model))
                return
            self._stream("text/event-stream",
                         (f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in _anthropic_events(model)))
        elif dialect == "gemini" and script and _mode.get("calls_shape"):
            self._send_shaped_gemini(model, script, stream)
        elif dialect == "gemini" and script:
            if not stream:
                self._send_json(200, _gemini_tool_answer(model, script))
                return
            self._stream("text/event-stream", sse(_gemini_tool_chunks(model, script)))
        elif dialect == "gemini":
            if not stream:
                self._send_json(200, _gemini_answer(model, f"hello from {model}"))
                return
            self._stream("text/event-stream", sse(_gemini_answer(model, w) for w in ("hello ", "from ", model)))
        elif dialect == "bedrock_converse" and script and _mode.get("calls_shape"):
            self._send_shaped_converse(script, stream)
        elif dialect == "bedrock_converse" and script:
            if not stream:
                self._send_json(200, _converse_tool_answer(script))
                return
            self._stream("application/vnd.amazon.eventstream",
                         (event_stream_message(name, payload) for name, payload in _converse_tool_events(script)))
        elif dialect == "bedrock_converse":
            if not stream:
                self._send_json(200, {"output": {"message": {"role": "assistant", "content": [{"text": f"hello from {model}"}]}},
                                      "stopReason": "end_turn", "usage": {"inputTokens": 1, "outputTokens": 3, "totalTokens": 4},
                                      "metrics": {"latencyMs": 1}})
                return
            self._stream("application/vnd.amazon.eventstream",
                         (event_stream_message(name, payload) for name, payload in _converse_events(model)))
        else:  # bedrock_invoke: an Anthropic body answers the Anthropic message
            if "anthropic" not in model:
                self._send_json(200, {"generation": f"hello from {model}", "stop_reason": "stop"})
                return
            if not stream:
                self._send_json(200, _anthropic_message(model))
                return
            chunk = lambda e: {"bytes": base64.b64encode(json.dumps(e).encode()).decode()}  # noqa: E731
            self._stream("application/vnd.amazon.eventstream",
                         (event_stream_message("chunk", chunk(e)) for e in _anthropic_events(model)))

    def do_DELETE(self) -> None:
        self._record(self._read_body())
        self._send_json(404, {"error": {"message": "not found", "type": "not_found", "code": None}})


def main() -> None:
    serve(Handler, __doc__, 8081, "llm upstream")

if __name__ == "__main__":
    main()
