"""What a model provider would read from a request body: the model it would run and the tools
it would offer the model, parsed as leniently as the provider's own parser is.

The e2e differential tests compare this view with what agent-authz's decision log says was
judged: any tool the provider would see must have been judged and allowed. Two readings are
kept, because parsers disagree on duplicate object keys: `last` (the last duplicate wins:
Python, JavaScript, Go) and `first` (the first wins). Field spellings follow each provider:
Gemini's API reads proto3 JSON, which accepts the lowerCamelCase JSON name and the proto's
snake_case field name for every field; the others read the names their docs give.

Anything the provider would add from elsewhere (a stored prompt, cached content) is listed in
`references`: agent-authz cannot see inside it, so a request carrying one must not pass unjudged.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import unquote


def _first_wins(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        out.setdefault(key, value)
    return out


def _field(obj: Any, *names: str) -> Any:
    """The first present spelling of a field (proto3 JSON: either spelling is accepted)."""
    if not isinstance(obj, dict):
        return None
    for name in names:
        if name in obj:
            return obj[name]
    return None


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(part.title() for part in rest)


def _g(obj: Any, snake: str) -> Any:
    """A Gemini field under either of its proto3 JSON spellings."""
    return _field(obj, _camel(snake), snake)


GEMINI_BUILTINS = ("google_search", "google_search_retrieval", "code_execution", "url_context", "computer_use",
                   "file_search", "google_maps", "enterprise_web_search", "retrieval")


def _openai_chat(body: dict) -> tuple[list, list, list]:
    tools = []
    for t in _list(body.get("tools")):
        if not isinstance(t, dict):
            continue
        name = (_field(t.get("function"), "name") if t.get("type", "function") == "function" else None) \
            or _field(t.get("custom"), "name") or t.get("name")
        tools.append(name if isinstance(name, str) else f"<{t.get('type')}>")
    for f in _list(body.get("functions")):
        tools.append(_field(f, "name"))
    return [body.get("model")], tools, []


def _openai_responses(body: dict) -> tuple[list, list, list]:
    tools, refs = [], []
    for t in _list(body.get("tools")):
        if not isinstance(t, dict):
            continue
        kind = t.get("type")
        if kind == "mcp":
            allowed = t.get("allowed_tools")
            names = allowed.get("tool_names") if isinstance(allowed, dict) else allowed
            if isinstance(names, list):
                tools += [f"mcp:{n}" for n in names]
            else:
                tools.append("mcp:*")
        elif kind in ("function", "custom"):
            tools.append(t.get("name"))
        elif kind == "namespace":
            tools += [x.get("name") for x in _list(t.get("tools")) if isinstance(x, dict)]
        else:
            tools.append(kind)
    if body.get("prompt") is not None:
        refs.append("stored prompt")
    return [body.get("model")], tools, refs


def _anthropic(body: dict) -> tuple[list, list, list]:
    tools = []
    for t in _list(body.get("tools")):
        if isinstance(t, dict):
            tools.append(t.get("name") if t.get("type") != "mcp_toolset" else f"mcp_toolset:{t.get('mcp_server_name')}")
    for server in _list(body.get("mcp_servers")):
        if not isinstance(server, dict):
            continue
        config = server.get("tool_configuration") or {}
        allowed = config.get("allowed_tools") if isinstance(config, dict) else None
        if isinstance(config, dict) and config.get("enabled") is False:
            continue
        if isinstance(allowed, list):
            tools += [f"mcp:{n}" for n in allowed]
        else:
            tools.append("mcp:*")
    return [body.get("model")], tools, []


def _gemini(path: str, body: dict) -> tuple[list, list, list]:
    model = unquote(path.split("/models/", 1)[1].split(":", 1)[0])
    tools, refs = [], []
    for t in _list(body.get("tools")):
        if not isinstance(t, dict):
            continue
        # Both spellings at once: a parser may keep either (or merge them); count both.
        for decl in _list(t.get("functionDeclarations")) + _list(t.get("function_declarations")):
            tools.append(_field(decl, "name"))
        for builtin in GEMINI_BUILTINS:
            if _g(t, builtin) is not None:
                tools.append(builtin)
    if _g(body, "cached_content") is not None:
        refs.append("cached content")
    return [model], tools, refs


def _bedrock(path: str, body: dict) -> tuple[list, list, list]:
    model = unquote(path[len("/model/"):].rsplit("/", 1)[0])
    tools = []
    for t in _list(_field(body.get("toolConfig"), "tools")):
        spec = _field(t, "toolSpec")
        if isinstance(spec, dict):
            tools.append(spec.get("name"))
        elif isinstance(t, dict) and "cachePoint" not in t:
            tools.append("<tool>")
    extra = body.get("additionalModelRequestFields")
    for t in _list(_field(extra, "tools")):
        tools.append(t.get("name") if isinstance(t, dict) else "<tool>")
    refs = ["prompt resource"] if body.get("promptVariables") is not None else []
    return [model], tools, refs


def _view(method: str, path: str, body: dict) -> dict:
    deployment = re.fullmatch(r"/openai/deployments/([^/]+)/(chat/completions|responses)", path)
    bedrock = re.fullmatch(r"/model/([^/]+)/(converse|converse-stream|invoke|invoke-with-response-stream)", path)
    if path in ("/v1/chat/completions", "/openai/v1/chat/completions"):
        models, tools, refs = _openai_chat(body)
    elif path in ("/v1/responses", "/openai/responses", "/openai/v1/responses"):
        models, tools, refs = _openai_responses(body)
    elif deployment:
        reader = _openai_chat if deployment[2] == "chat/completions" else _openai_responses
        models, tools, refs = reader(body)
        models = [unquote(deployment[1])]
    elif path == "/v1/messages":
        models, tools, refs = _anthropic(body)
    elif re.fullmatch(r"/v1(beta)?/models/[^/:]+:(generateContent|streamGenerateContent)", path):
        models, tools, refs = _gemini(path, body)
    elif bedrock and bedrock[2].startswith("converse"):
        models, tools, refs = _bedrock(path, body)
    elif bedrock:  # InvokeModel with an Anthropic body
        models, tools, refs = _anthropic(body)
        models = [unquote(bedrock[1])]
    elif method == "GET" and path.startswith("/v1/models/"):
        models, tools, refs = [path[len("/v1/models/"):]], [], []
    else:
        return {}
    return {"models": [m for m in models if m is not None], "tools": tools, "references": refs}


def provider_view(method: str, path: str, raw: bytes) -> dict:
    """{"last": view, "first": view}, or {"error": ...} when the provider could not parse it."""
    path = path.split("?", 1)[0]
    if method == "GET":
        return {"last": _view(method, path, {}), "first": _view(method, path, {})}
    try:
        text = raw.decode("utf-8")
        last = json.loads(text)
        first = json.loads(text, object_pairs_hook=_first_wins)
    except ValueError as e:
        return {"error": str(e)}
    if not isinstance(last, dict):
        return {"error": "not a JSON object"}
    return {"last": _view(method, path, last), "first": _view(method, path, first)}
