"""The class behind issue 13: agent-authz's view of a message and the receiver's view diverged.

A generator of legal variants of four plain exchanges, sent through the real stack (Envoy,
agent-authz, Cerbos), judged by what the receiver parsed:

  answers   tools/list answers from e2e/upstreams/mcp_raw.py in every wire shape it can write
            (ids of every type and size and how servers echo them, batches, JSON and SSE,
            SSE framings: priming event, comments, id/retry-only events, CRLF / CR, multi-line
            data, BOM, event names, writes split at any byte; gzip / deflate; JSON escapes and
            duplicate keys in the list). Oracle: the tool names the client decodes.
  calls     MCP requests whose bodies are spelt differently (escapes, duplicate keys, number
            spellings, casing, batches, BOM, charsets, chunked uploads, compression). Oracle:
            every call the server executed (as it parsed it, under either duplicate-key rule)
            was judged and allowed with those same arguments, under the same decision id.
  llm       LLM requests in five dialects spelt differently (escapes, duplicate keys, Gemini's
            proto3 JSON spellings, casing, tools declared in other fields, chunked uploads,
            compression). Oracle: every model and tool the provider would read
            (e2e/upstreams/provider_view.py, under either duplicate-key rule) was judged and
            allowed, under the same decision id; nothing it would fetch from elsewhere.
  sessions  another principal presenting alice's Mcp-Session-Id in every shape (sealed, the
            server's own id, two headers, comma-joined, re-cased, re-tagged). Oracle: the
            session ids the server received; bob's own session is the control.

Every variant either gets the verdict of its plain form or is refused; none gets through
unjudged. Each family's failures are collected and reported together (the request, what the
receiver parsed, what was judged).

Bounded for CI by default; longer outside it:
    E2E_VARIANTS=3000 E2E_VARIANTS_SEED=$RANDOM .tools/venv/bin/pytest -q e2e/tests/test_variants.py
(E2E_VARIANTS is the number of variants per family; the seed picks the random combinations.)
"""

from __future__ import annotations

import gzip
import itertools
import json
import os
import random
import re
from typing import Any, Callable, Iterator

import httpx
import pytest

from receivers import (
    ALICE_VISIBLE,
    VARIANT_COUNTS,
    RawMcp,
    decisions_for,
    decoded_tool_names,
    mcp_headers,
    sse_event_data,
)
from stack import Stack

BUDGET = int(os.environ.get("E2E_VARIANTS", "150"))
SEED = int(os.environ.get("E2E_VARIANTS_SEED", "13"))
MAX_REPORTED = 15


@pytest.fixture(scope="module")
def vstack():
    from conftest import require_stack_binaries

    require_stack_binaries()
    with Stack(name="variants", mcp_script="e2e/upstreams/mcp_raw.py") as s:
        yield s


# Divergences known and not fixed yet: mutation name -> why. Strict, like a strict xfail: a
# variant of these that stops diverging fails the test until its entry is removed here.
OPEN: dict[str, str] = {
}


def split_open(failures: list[tuple[list[str], str]], tried_names: set[str]) -> list[str]:
    """The failures that count: those of no OPEN mutation, and a line for each OPEN mutation
    that was tried and no longer fails (its entry must go)."""
    counted = [text for names, text in failures if not any(n in OPEN for n in names)]
    still_open = {n for names, _ in failures for n in names if n in OPEN}
    for name in sorted((set(OPEN) & tried_names) - still_open):
        counted.append(f"FIXED: {name} no longer diverges ({OPEN[name]}): remove it from OPEN")
    for name in sorted(still_open):
        print(f"open: {name}: {OPEN[name]}")
    return counted


# How the variants ended, per family ("forwarded" / "refused"), so a run shows the oracle was
# exercised both ways.
OUTCOMES: dict[str, dict[str, int]] = {}


def outcome(family: str, forwarded: bool) -> None:
    counts = OUTCOMES.setdefault(family, {"forwarded": 0, "refused": 0})
    counts["forwarded" if forwarded else "refused"] += 1


def report(family: str, tried: int, failures: list[str]) -> None:
    VARIANT_COUNTS[family] = VARIANT_COUNTS.get(family, 0) + tried
    print(f"\n{family}: {tried} variants tried {OUTCOMES.get(family, {})}, {len(failures)} failed (seed {SEED})")
    if failures:
        shown = "\n\n".join(failures[:MAX_REPORTED])
        more = f"\n\n... and {len(failures) - MAX_REPORTED} more" if len(failures) > MAX_REPORTED else ""
        pytest.fail(f"{family}: {len(failures)} of {tried} variants diverged (seed {SEED}):\n\n{shown}{more}", pytrace=False)


def esc(text: str) -> str:
    """A JSON string literal with every character as a \\u escape."""
    return '"' + "".join(f"\\u{ord(c):04x}" for c in text) + '"'


def numbers_equal(a: Any, b: Any) -> bool:
    """JSON equality with numbers compared by value (1 == 1.0), as a policy sees them."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(numbers_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(numbers_equal(x, y) for x, y in zip(a, b))
    return a == b


def chunked(body: bytes, rng: random.Random) -> Iterator[bytes]:
    """The body as a chunked upload, cut at random bytes."""
    cuts = sorted(rng.sample(range(1, len(body)), min(3, len(body) - 1)))
    for start, end in zip([0, *cuts], [*cuts, len(body)]):
        yield body[start:end]


# ====================================================================== family 1: tools/list answers
ANSWER_IDS = {
    "small": "1", "2^53+1": "9007199254740993", "neg-big": "-9000000000000001", "2^64+1": "18446744073709551617",
    "string": '"req-1"', "long-string": '"' + "x" * 4000 + '"', "escaped-string": '"\\u0061b"',
    "1E2": "1E2", "-0": "-0", "1e400": "1e400", "1.5": "1.5",
}
CANONICAL_IDS = {"small", "2^53+1", "neg-big", "2^64+1", "string", "long-string", "escaped-string"}
SSE_FLAGS = ["priming", "comments", "id_retry_only", "multiline", "bom", "event_name"]
LINE_ENDS = {"lf": "\n", "crlf": "\r\n", "cr": "\r"}
WRAPS = ["single", "batch", "batch-after-ping", "single-2026-07-28"]
# The answer arrives on a GET stream: resumed (Last-Event-ID), on the 2024-11-05 HTTP+SSE
# transport's stream (opened by an `endpoint` event), or on a Streamable HTTP GET stream.
GET_WRAPS = ["get-stream", "get-stream-resumed", "get-stream-legacy-sse"]
# What a 2024-11-05 HTTP+SSE server may write before its `endpoint` event (clients skip each).
LEGACY_PRELUDES = {"none": "", "id-only": "id: 7\n\n", "ping-event": "event: ping\ndata: {}\n\n",
                   "empty-data": "data:\n\n", "comment-and-retry": ": hi\n\nretry: 10\n\n"}
LIST_SHAPES = ["plain", "escaped", "utf8", "dup_name", "dup_tools"]
# Content-Type spellings of the answer ("{}" is the usual type); clients compare it lower-cased.
CONTENT_TYPES = ["{}", "{}; charset=utf-8", "{};charset=UTF-8", "UPPER", "Capitalised"]


def answer_variants(rng: random.Random) -> Iterator[dict]:
    plain = {"id": "small", "id_echo": "exact", "wrap": "single", "answer": "sse", "flags": [], "line_end": "lf",
             "encoding": "identity", "list_json": "plain", "split": [], "content_type": "{}", "prelude": "none"}
    yield plain
    # Every value of every dimension alone.
    singles = (
        [{"id": k} for k in ANSWER_IDS]
        + [{"id": k, "id_echo": e} for k in ("2^53+1", "1E2", "-0", "1e400", "neg-big") for e in ("python", "js")]
        + [{"wrap": w} for w in WRAPS[1:]] + [{"wrap": w, "answer": "json"} for w in WRAPS[1:]]
        + [{"answer": "json"}]
        + [{"wrap": w} for w in GET_WRAPS] + [{"wrap": w, "flags": ["priming"]} for w in GET_WRAPS]
        + [{"wrap": "get-stream-legacy-sse", "prelude": p} for p in list(LEGACY_PRELUDES)[1:]]
        + [{"wrap": "get-stream-legacy-sse", **more} for more in (
            {"flags": ["comments"]}, {"flags": ["id_retry_only"]}, {"flags": ["bom"]}, {"line_end": "crlf"},
            {"line_end": "cr"}, {"split": [3]}, {"split": [10]}, {"split": [20]}, {"split": [40]})]
        + [{"flags": [f]} for f in SSE_FLAGS] + [{"line_end": e} for e in ("crlf", "cr")]
        + [{"flags": ["priming"], "line_end": e} for e in ("crlf", "cr")]
        + [{"encoding": e, "answer": a} for e in ("gzip", "deflate") for a in ("sse", "json")]
        + [{"content_type": c, "answer": a} for c in CONTENT_TYPES[1:] for a in ("sse", "json")]
        + [{"list_json": s} for s in LIST_SHAPES[1:]] + [{"list_json": s, "answer": "json"} for s in LIST_SHAPES[1:]]
        + [{"split": [k]} for k in (1, 2, 3, 5, 6, 7, 40, 60, 200, 500)]
        + [{"flags": ["bom"], "split": [1]}, {"flags": ["bom"], "split": [2]}, {"line_end": "crlf", "split": [15]}]
        + [{"list_json": "utf8", "split": [k]} for k in (150, 151, 152)]
    )
    for single in singles:
        yield {**plain, **single}
    # Then random combinations.
    while True:
        yield {
            "id": rng.choice(list(ANSWER_IDS)),
            "id_echo": rng.choice(["exact", "exact", "python", "js"]),
            "wrap": rng.choice(WRAPS + GET_WRAPS),
            "answer": rng.choice(["sse", "sse", "json"]),
            "flags": rng.sample(SSE_FLAGS, rng.randint(0, len(SSE_FLAGS))),
            "line_end": rng.choice(list(LINE_ENDS)),
            "encoding": rng.choice(["identity", "identity", "identity", "gzip", "deflate"]),
            "list_json": rng.choice(LIST_SHAPES),
            "split": sorted(rng.sample(range(1, 1200), rng.randint(0, 3))),
            "content_type": rng.choice(CONTENT_TYPES),
            "prelude": rng.choice(list(LEGACY_PRELUDES)),
        }


def answer_names(v: dict) -> list[str]:
    """The names OPEN may list for an answer variant: its wrap, and the combinations known to
    matter on their own."""
    names = [v["wrap"]]
    if v["wrap"] == "get-stream-legacy-sse" and "id_retry_only" in v["flags"]:
        names.append("legacy-sse-retry-first")
    if v["wrap"] == "get-stream-legacy-sse" and v["prelude"] != "none":
        names.append(f"legacy-sse-{v['prelude']}-first")
    return names


def must_be_filtered(v: dict) -> bool:
    """Variants legal enough that refusing them would break a correct server: the plain
    verdict is required (the SSE spec's framings, escapes, ids echoed exactly)."""
    return (v["encoding"] == "identity" and v["list_json"] in ("plain", "escaped", "utf8")
            and v["id"] in CANONICAL_IDS and v["id_echo"] == "exact")


def send_answer_variant(stack: Stack, raw: RawMcp, token: str, v: dict) -> str | None:
    mode = {"answer": v["answer"], "encoding": v["encoding"], "line_end": LINE_ENDS[v["line_end"]],
            "list_json": v["list_json"], "split": v["split"], "id_echo": v["id_echo"],
            **{flag: True for flag in v["flags"]}}
    if "event_name" in v["flags"]:
        mode["event_name"] = "message"
    usual = "application/json" if v["answer"] == "json" and v["wrap"] not in GET_WRAPS else "text/event-stream"
    mode["content_type"] = {"UPPER": usual.upper(), "Capitalised": usual.title()}.get(v["content_type"], v["content_type"])
    if v["wrap"] in GET_WRAPS:
        mode["get_list"] = True
        mode["answer"] = "sse"  # a GET stream is always SSE
        mode["legacy_sse"] = v["wrap"] == "get-stream-legacy-sse"
        mode["legacy_prelude"] = LEGACY_PRELUDES[v["prelude"]]
    raw.reset(**mode)
    listing = '{"jsonrpc":"2.0","id":%s,"method":"tools/list"}' % ANSWER_IDS[v["id"]]
    version, extra_headers = "2025-11-25", {}
    if v["wrap"] == "single-2026-07-28":
        version, extra_headers = "2026-07-28", {"mcp-method": "tools/list"}
    if v["wrap"] == "batch":
        body, version = f"[{listing}]", "2025-03-26"
    elif v["wrap"] == "batch-after-ping":
        body, version = '[{"jsonrpc":"2.0","id":"p","method":"ping"},' + listing + "]", "2025-03-26"
    else:
        body = listing
    try:
        if v["wrap"] in GET_WRAPS:
            body = "(GET)"
            resume = {"last-event-id": "ev-0"} if v["wrap"] == "get-stream-resumed" else {}
            r = httpx.get(stack.mcp_url, headers=mcp_headers(token, version, **resume), timeout=15)
        else:
            r = httpx.post(stack.mcp_url, content=body.encode(), headers=mcp_headers(token, version, **extra_headers),
                           timeout=15)
        names = decoded_tool_names(r)
        status = r.status_code
    except httpx.HTTPError as e:  # a broken stream: the client got no list
        names, status = None, f"transport error {e!r}"
    parsed = raw.parsed()
    outcome("tools/list answers", names is not None)
    what = f"variant {json.dumps(v)}\n  request {body[:200]}\n  server parsed {[m.get('method') for e in parsed for m in e['messages']]}"
    if names is not None and "delete_repo" in names:
        return f"BYPASS: the client decoded {sorted(names)} (status {status})\n  {what}"
    if names is not None and names != ALICE_VISIBLE:
        return f"WRONG LIST: the client decoded {sorted(names)} (status {status})\n  {what}"
    if names is None and must_be_filtered(v):
        return f"REFUSED a legal answer: status {status}, no list decoded\n  {what}"
    if names is not None and v["wrap"] not in GET_WRAPS:
        decision_id = parsed[0]["headers"].get("x-agent-authz-decision-id") if parsed else None
        if not decision_id or not decisions_for(stack, decision_id, phase="response"):
            return f"UNJUDGED: a list reached the client without a response-phase decision ({decision_id})\n  {what}"
    return None


def test_tools_list_answers_in_every_wire_shape(vstack):
    raw, token, rng = RawMcp(vstack), vstack.token_for("alice"), random.Random(SEED)
    failures, tried, names_tried = [], 0, set()
    for v in itertools.islice(answer_variants(rng), BUDGET):
        tried += 1
        names = answer_names(v)
        names_tried.update(names)
        failure = send_answer_variant(vstack, raw, token, v)
        if failure:
            failures.append((names, failure))
    raw.reset()
    report("tools/list answers", tried, split_open(failures, names_tried))


# ====================================================================== family 2: MCP requests
CALL_BASES = {
    "lookup-allowed": ("lookup_ticket", {"ticket_id": "T-100"}, True),
    "refund-allowed": ("refund", {"ticket_id": "T-100", "amount_cents": 5000}, True),
    "refund-over-limit": ("refund", {"ticket_id": "T-100", "amount_cents": 200000}, False),
    "refund-other-ticket": ("refund", {"ticket_id": "T-999", "amount_cents": 10}, False),
    "delete-denied": ("delete_repo", {"name": "agent-authz"}, False),
}


def call_text(tool_lit: str, args_text: str, *, id_text: str = "7", method_lit: str = '"tools/call"',
              extra: str = "") -> str:
    return ('{"jsonrpc":"2.0","id":' + id_text + ',"method":' + method_lit + ',"params":{"name":' + tool_lit
            + ',"arguments":' + args_text + extra + "}}")


def args_text(args: dict, amount: str | None = None, key: Callable[[str], str] = json.dumps) -> str:
    parts = []
    for k, v in args.items():
        value = amount if (k == "amount_cents" and amount is not None) else json.dumps(v)
        parts.append(key(k) + ":" + value)
    return "{" + ",".join(parts) + "}"


# A mutation: (tool, args) -> (body text, extra headers, protocol version, upload style)
Mutation = Callable[[str, dict], tuple[str, dict, str, str]]


def m(body: str, headers: dict | None = None, version: str = "2025-11-25", upload: str = "plain"):
    return body, headers or {}, version, upload


CALL_MUTATIONS: dict[str, Mutation] = {
    "plain": lambda t, a: m(call_text(json.dumps(t), args_text(a))),
    "pretty": lambda t, a: m(json.dumps(json.loads(call_text(json.dumps(t), args_text(a))), indent=3)),
    "escaped-name": lambda t, a: m(call_text(esc(t), args_text(a))),
    "escaped-method": lambda t, a: m(call_text(json.dumps(t), args_text(a), method_lit='"tools\\/call"')),
    "escaped-method-u": lambda t, a: m(call_text(json.dumps(t), args_text(a), method_lit=esc("tools/call"))),
    "escaped-arg-keys": lambda t, a: m(call_text(json.dumps(t), args_text(a, key=esc))),
    "escaped-values": lambda t, a: m(call_text(json.dumps(t), "{" + ",".join(
        json.dumps(k) + ":" + (esc(v) if isinstance(v, str) else json.dumps(v)) for k, v in a.items()) + "}")),
    "dup-name-allowed-first": lambda t, a: m(call_text('"lookup_ticket","name":' + json.dumps(t), args_text(a))),
    "dup-name-allowed-last": lambda t, a: m(call_text(json.dumps(t) + ',"name":"lookup_ticket"', args_text(a))),
    "dup-arguments": lambda t, a: m(call_text(json.dumps(t), '{"ticket_id":"T-100"},"arguments":' + args_text(a))),
    "dup-arg-key": lambda t, a: m(call_text(json.dumps(t), args_text(
        {**{k: v for k, v in a.items() if k != "amount_cents"}, **({"amount_cents": 1} if "amount_cents" in a else {})})[:-1]
        + (',"amount_cents":' + json.dumps(a["amount_cents"]) if "amount_cents" in a else ',"ticket_id":"T-100"') + "}")),
    "dup-method": lambda t, a: m(call_text(json.dumps(t), args_text(a), method_lit='"ping","method":"tools/call"')),
    "dup-params": lambda t, a: m('{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"lookup_ticket",'
                                 '"arguments":{"ticket_id":"T-100"}},"params":{"name":' + json.dumps(t)
                                 + ',"arguments":' + args_text(a) + "}}"),
    "dup-id": lambda t, a: m(call_text(json.dumps(t), args_text(a), id_text='7,"id":8')),
    "amount-exponent": lambda t, a: m(call_text(json.dumps(t), args_text(a, amount=f"{a.get('amount_cents', 0):.1e}"))),
    "amount-decimal": lambda t, a: m(call_text(json.dumps(t), args_text(a, amount=f"{a.get('amount_cents', 0)}.0"))),
    "amount-E": lambda t, a: m(call_text(json.dumps(t), args_text(a, amount=f"{a.get('amount_cents', 0) / 10:g}E1"))),
    "amount-string": lambda t, a: m(call_text(json.dumps(t), args_text(a, amount=json.dumps(str(a.get("amount_cents", 0)))))),
    "id-null": lambda t, a: m(call_text(json.dumps(t), args_text(a), id_text="null")),
    "with-result": lambda t, a: m(call_text(json.dumps(t), args_text(a))[:-1] + ',"result":{}}'),
    "with-error": lambda t, a: m(call_text(json.dumps(t), args_text(a))[:-1] + ',"error":{"code":1,"message":"x"}}'),
    "result-first": lambda t, a: m('{"result":{},' + call_text(json.dumps(t), args_text(a))[1:]),
    "no-jsonrpc": lambda t, a: m(call_text(json.dumps(t), args_text(a)).replace('"jsonrpc":"2.0",', "", 1)),
    "id-big": lambda t, a: m(call_text(json.dumps(t), args_text(a), id_text="9007199254740993")),
    "id-long-string": lambda t, a: m(call_text(json.dumps(t), args_text(a), id_text='"' + "i" * 5000 + '"')),
    "meta-extra": lambda t, a: m(call_text(json.dumps(t), args_text(a), extra=',"_meta":{"progressToken":1}')),
    "batch": lambda t, a: m("[" + call_text(json.dumps(t), args_text(a)) + "]", version="2025-03-26"),
    "batch-after-lookup": lambda t, a: m('[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"lookup_ticket",'
                                         '"arguments":{"ticket_id":"T-100"}}},' + call_text(json.dumps(t), args_text(a)) + "]",
                                         version="2025-03-26"),
    "batch-in-2025-11-25": lambda t, a: m("[" + call_text(json.dumps(t), args_text(a)) + "]"),
    "bom": lambda t, a: m("\ufeff" + call_text(json.dumps(t), args_text(a))),
    "whitespace": lambda t, a: m(" \r\n\t" + call_text(json.dumps(t), args_text(a)) + "\n "),
    "method-case": lambda t, a: m(call_text(json.dumps(t), args_text(a), method_lit='"Tools/Call"')),
    "name-case": lambda t, a: m(call_text(json.dumps(t.upper()), args_text(a))),
    "charset": lambda t, a: m(call_text(json.dumps(t), args_text(a)), {"content-type": "application/json; charset=utf-8"}),
    "content-type-case": lambda t, a: m(call_text(json.dumps(t), args_text(a)), {"content-type": "Application/JSON"}),
    "content-type-text": lambda t, a: m(call_text(json.dumps(t), args_text(a)), {"content-type": "text/plain"}),
    "version-header-case": lambda t, a: m(call_text(json.dumps(t), args_text(a)), {"MCP-PROTOCOL-VERSION": "2025-11-25"}),
    "chunked-upload": lambda t, a: m(call_text(json.dumps(t), args_text(a)), upload="chunked"),
    "gzip-upload": lambda t, a: m(call_text(json.dumps(t), args_text(a)), {"content-encoding": "gzip"}, upload="gzip"),
    "gzip-upload-upper": lambda t, a: m(call_text(json.dumps(t), args_text(a)), {"content-encoding": "GZIP"}, upload="gzip"),
    "identity-encoding": lambda t, a: m(call_text(json.dumps(t), args_text(a)), {"content-encoding": "identity"}),
    "utf16": lambda t, a: m(call_text(json.dumps(t), args_text(a)), {"content-type": "application/json; charset=utf-16"},
                            upload="utf16"),
}


def judged_call(records: list[dict], tool: str, arguments: dict) -> bool:
    for record in records:
        for res in record.get("resources") or []:
            if (res.get("effect") in ("allow", "EFFECT_ALLOW") and res.get("action") == f"tools/call/{tool}"
                    and res.get("id") == tool
                    and numbers_equal((res.get("attr") or {}).get("arguments"), arguments)):
                return True
    return False


def send_call_variant(stack: Stack, raw: RawMcp, token: str, base: str, names: list[str], rng: random.Random) -> str | None:
    tool, args, allowed = CALL_BASES[base]
    # Mutations compose left to right only where they can; a combination applies the last
    # body-shaping mutation and the headers / upload style of all.
    body, headers, version, upload = CALL_MUTATIONS[names[0]](tool, args)
    for name in names[1:]:
        b2, h2, v2, u2 = CALL_MUTATIONS[name](tool, args)
        if b2 != CALL_MUTATIONS["plain"](tool, args)[0]:
            body, version = b2, v2
        headers, upload = {**headers, **h2}, u2 if u2 != "plain" else upload
    raw.reset()
    all_headers = {**mcp_headers(token, version), **headers}
    if "MCP-PROTOCOL-VERSION" in headers:
        all_headers.pop("mcp-protocol-version", None)
    data = body.encode("utf-16") if upload == "utf16" else body.encode()
    content: Any = gzip.compress(data) if upload == "gzip" else data
    if upload == "chunked":
        content = chunked(data, rng)
    try:
        r = httpx.post(stack.mcp_url, content=content, headers=all_headers, timeout=15)
        status = r.status_code
    except httpx.HTTPError as e:
        status = f"transport error {e!r}"
    parsed = raw.parsed()
    executed = [c for e in parsed for c in e["executed"]]
    outcome("MCP requests", bool(parsed))
    what = f"variant {base} + {names}\n  request {body[:300]!r} headers {headers}\n  status {status}"
    for entry in parsed:
        if entry["executed"] and entry["messages"] != entry.get("messages_first_wins"):
            return (f"AMBIGUOUS BODY EXECUTED: last-wins read {entry['messages']}, first-wins read "
                    f"{entry['messages_first_wins']}\n  {what}")
    for call in executed:
        records = decisions_for(stack, call["decision_id"] or "", phase="request")
        if not judged_call(records, call["tool"], call["arguments"]):
            judged = [(r.get("action"), r.get("effect"), (r.get("attr") or {}).get("arguments"))
                      for rec in records for r in rec.get("resources") or []]
            return f"UNJUDGED EXECUTION: the server ran {call['tool']}({call['arguments']}); judged {judged}\n  {what}"
    ran_base = [c for c in executed if c["tool"] == tool and numbers_equal(c["arguments"], args)]
    if not allowed and any(c["tool"] == tool for c in executed):
        return f"DENIED CALL EXECUTED: {executed}\n  {what}"
    if allowed and not ran_base and isinstance(status, int) and status < 300 and names == ["plain"]:
        return f"PLAIN ALLOWED CALL NOT EXECUTED\n  {what}"
    return None


def call_variants(rng: random.Random) -> Iterator[tuple[str, list[str]]]:
    mutations = list(CALL_MUTATIONS)
    for name in mutations:
        for base in CALL_BASES:
            yield base, [name]
    while True:
        yield rng.choice(list(CALL_BASES)), rng.sample(mutations[1:], rng.randint(2, 3))


def test_mcp_requests_in_every_spelling(vstack):
    raw, token, rng = RawMcp(vstack), vstack.token_for("alice"), random.Random(SEED)
    failures, tried, names_tried = [], 0, set()
    budget = max(BUDGET, len(CALL_MUTATIONS) * len(CALL_BASES))
    for base, names in itertools.islice(call_variants(rng), budget):
        tried += 1
        names_tried.update(names)
        failure = send_call_variant(vstack, raw, token, base, names, rng)
        if failure:
            failures.append((names, failure))
    report("MCP requests", tried, split_open(failures, names_tried))


# ====================================================================== family 3: LLM requests
def fn(name: str) -> dict:
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": {}}}}


# Each base: (path builder from model, body builder from (model, [tool names]) -> body text)
HELLO = [{"role": "user", "content": "hi"}]
DIALECTS: dict[str, tuple[Callable[[str], str], Callable[[str, list[str]], dict]]] = {
    "openai_chat": (lambda model: "/v1/chat/completions",
                    lambda model, tools: {"model": model, "messages": HELLO, "tools": [fn(t) for t in tools]}),
    "openai_responses": (lambda model: "/v1/responses",
                         lambda model, tools: {"model": model, "input": "hi",
                                               "tools": [{"type": "function", "name": t, "parameters": {"type": "object"}} for t in tools]}),
    "anthropic": (lambda model: "/v1/messages",
                  lambda model, tools: {"model": model, "max_tokens": 10, "messages": HELLO,
                                        "tools": [{"name": t, "input_schema": {"type": "object"}} for t in tools]}),
    "gemini": (lambda model: f"/v1beta/models/{model}:generateContent",
               lambda model, tools: {"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
                                     "tools": [{"functionDeclarations": [{"name": t} for t in tools]}]}),
    "bedrock_invoke": (lambda model: f"/model/{model}/invoke",
                       lambda model, tools: {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 10, "messages": HELLO,
                                             "tools": [{"name": t, "input_schema": {"type": "object"}} for t in tools]}),
    "bedrock": (lambda model: f"/model/{model}/converse",
                lambda model, tools: {"messages": [{"role": "user", "content": [{"text": "hi"}]}],
                                      "toolConfig": {"tools": [{"toolSpec": {"name": t, "inputSchema": {"json": {"type": "object"}}}} for t in tools]}}),
}
LLM_BASES = {  # (model, tools): alice may invoke gpt-4o-mini and expose get_weather
    "tools-mixed": ("gpt-4o-mini", ["get_weather", "delete_repo"]),
    "model-denied": ("gpt-4o", ["get_weather"]),
}


def dump(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def replace_once(text: str, old: str, new: str) -> str:
    return text.replace(old, new, 1) if old in text else text


def gemini_snake(body: dict) -> dict:
    out = json.loads(dump(body))
    for t in out.get("tools", []):
        if "functionDeclarations" in t:
            t["function_declarations"] = t.pop("functionDeclarations")
    return out


# A body mutation: (dialect, body dict, body text) -> (body text, headers, upload)
LlmMutation = Callable[[str, dict, str], tuple[str, dict, str]]
LLM_MUTATIONS: dict[str, LlmMutation] = {
    "plain": lambda d, b, t: (t, {}, "plain"),
    "pretty": lambda d, b, t: (json.dumps(b, indent=2), {}, "plain"),
    "escaped-tool": lambda d, b, t: (t.replace('"delete_repo"', esc("delete_repo")).replace('"get_weather"', esc("get_weather")), {}, "plain"),
    "escaped-model": lambda d, b, t: (t.replace('"gpt-4o-mini"', esc("gpt-4o-mini")).replace('"gpt-4o"', esc("gpt-4o")), {}, "plain"),
    "dup-model-denied-last": lambda d, b, t: (replace_once(t, '"model":', '"model":"gpt-4o-mini","model":'), {}, "plain")
    if d not in ("gemini", "bedrock") else (replace_once(t, "{", '{"model":"gpt-4o",'), {}, "plain"),
    "dup-model-denied-first": lambda d, b, t: (replace_once(t, '"model":', '"model":"gpt-4o","model":'), {}, "plain")
    if d not in ("gemini", "bedrock") else (replace_once(t, "{", '{"model":"gpt-4o-mini",'), {}, "plain"),
    "dup-tool-name": lambda d, b, t: (replace_once(t, '"name":"get_weather"', '"name":"get_weather","name":"delete_repo"'), {}, "plain"),
    "dup-tool-name-rev": lambda d, b, t: (replace_once(t, '"name":"delete_repo"', '"name":"delete_repo","name":"get_weather"'), {}, "plain"),
    "dup-tools-key": lambda d, b, t: (replace_once(t, '"tools":', '"tools":[],"tools":'), {}, "plain"),
    "dup-tools-key-rev": lambda d, b, t: (t[:-1] + ',"tools":[]}', {}, "plain"),
    "tools-key-case": lambda d, b, t: (replace_once(t, '"tools":', '"Tools":'), {}, "plain"),
    "gemini-snake": lambda d, b, t: (dump(gemini_snake(b)) if d == "gemini" else t, {}, "plain"),
    "gemini-both-spellings": lambda d, b, t: (
        replace_once(t, '"functionDeclarations":', '"function_declarations":[{"name":"delete_repo"}],"functionDeclarations":')
        if d == "gemini" else t, {}, "plain"),
    "gemini-builtin-snake": lambda d, b, t: (replace_once(t, '"tools":[', '"tools":[{"code_execution":{}},') if d == "gemini" else t, {}, "plain"),
    "gemini-cached-content": lambda d, b, t: (t[:-1] + ',"cached_content":"cachedContents/abc"}' if d == "gemini" else t, {}, "plain"),
    "gemini-cached-content-camel": lambda d, b, t: (t[:-1] + ',"cachedContent":"cachedContents/abc"}' if d == "gemini" else t, {}, "plain"),
    "chat-legacy-functions": lambda d, b, t: (t[:-1] + ',"functions":[{"name":"delete_repo","parameters":{}}]}' if d == "openai_chat" else t, {}, "plain"),
    "responses-mcp-tool": lambda d, b, t: (replace_once(t, '"tools":[', '"tools":[{"type":"mcp","server_label":"support","server_url":"https://mcp.example.com","allowed_tools":["delete_repo"]},')
                                           if d == "openai_responses" else t, {}, "plain"),
    "responses-mcp-tool-names": lambda d, b, t: (replace_once(t, '"tools":[', '"tools":[{"type":"mcp","server_label":"support","server_url":"https://mcp.example.com","allowed_tools":{"tool_names":["delete_repo"]}},')
                                                 if d == "openai_responses" else t, {}, "plain"),
    "responses-prompt": lambda d, b, t: (t[:-1] + ',"prompt":{"id":"pmpt_abc"}}' if d == "openai_responses" else t, {}, "plain"),
    "anthropic-mcp-servers": lambda d, b, t: (t[:-1] + ',"mcp_servers":[{"type":"url","url":"https://mcp.example.com","name":"support","tool_configuration":{"allowed_tools":["delete_repo"]}}]}'
                                              if d in ("anthropic", "bedrock_invoke") else t, {}, "plain"),
    "bedrock-additional-tools": lambda d, b, t: (t[:-1] + ',"additionalModelRequestFields":{"tools":[{"type":"bash_20250124","name":"bash"}]}}'
                                                 if d == "bedrock" else t, {}, "plain"),
    "bom": lambda d, b, t: ("\ufeff" + t, {}, "plain"),
    "whitespace": lambda d, b, t: ("\n\t " + t + " \r\n", {}, "plain"),
    "charset": lambda d, b, t: (t, {"content-type": "application/json; charset=utf-8"}, "plain"),
    "content-type-case": lambda d, b, t: (t, {"content-type": "Application/Json"}, "plain"),
    "chunked-upload": lambda d, b, t: (t, {}, "chunked"),
    "gzip-upload": lambda d, b, t: (t, {"content-encoding": "gzip"}, "gzip"),
    "gzip-upload-upper": lambda d, b, t: (t, {"content-encoding": "GZip"}, "gzip"),
    "identity-encoding": lambda d, b, t: (t, {"content-encoding": "identity"}, "plain"),
    # Path spellings (applied in send_llm_variant): the provider decodes the model id once.
    "path-percent": lambda d, b, t: (t, {}, "plain"),
    "path-query": lambda d, b, t: (t, {}, "plain"),
    "path-gemini-v1": lambda d, b, t: (t, {}, "plain"),
    "stream": lambda d, b, t: (t[:-1] + ',"stream":true}' if d in ("openai_chat", "openai_responses", "anthropic") else t, {}, "plain"),
    "bedrock-invoke-stream-path": lambda d, b, t: (t, {}, "plain"),
}


def _as_json(text: str, body: Any) -> Any:
    """What the next mutation starts from: the text as JSON, or the unmutated body when an
    earlier mutation left text that is not one JSON document (trailing data, a broken value)."""
    try:
        return json.loads(text.lstrip("\ufeff")) if text.strip() else body
    except json.JSONDecodeError:
        return body


def send_llm_variant(stack: Stack, token: str, dialect: str, base: str, names: list[str], rng: random.Random) -> str | None:
    model, tools = LLM_BASES[base]
    path_of, body_of = DIALECTS[dialect]
    body = body_of(model, tools)
    text, headers, upload = dump(body), {"content-type": "application/json"}, "plain"
    for name in names:
        text, h, u = LLM_MUTATIONS[name](dialect, _as_json(text, body), text)
        headers, upload = {**headers, **h}, u if u != "plain" else upload
    path = path_of(model)
    if "path-percent" in names and model in path:
        path = path.replace(model, model.replace("-", "%2D"), 1)
    if "bedrock-invoke-stream-path" in names and dialect == "bedrock_invoke":
        path = path.replace("/invoke", "/invoke-with-response-stream")
    if "path-gemini-v1" in names and dialect == "gemini":
        path = path.replace("/v1beta/", "/v1/", 1)
    if "path-query" in names:
        path += "?alt=sse&model=gpt-4o" if dialect == "gemini" else "?model=gpt-4o"
    stack.llm_reset()
    data = text.encode()
    content: Any = gzip.compress(data) if upload == "gzip" else data
    if upload == "chunked":
        content = chunked(data, rng)
    try:
        r = httpx.post(f"{stack.envoy_url}{path}", content=content,
                       headers={"authorization": f"Bearer {token}", **headers}, timeout=15)
        status = r.status_code
    except httpx.HTTPError as e:
        status = f"transport error {e!r}"
    received = stack.llm_received()
    outcome("LLM requests", bool(received))
    what = f"variant {dialect} {base} + {names}\n  request {path} {text[:300]!r} headers {headers}\n  status {status}"
    if not received:
        if isinstance(status, int) and status < 400:
            return f"ANSWERED WITHOUT THE PROVIDER? status {status}\n  {what}"
        return None
    for seen in received:
        decision_id = seen["headers"].get("x-agent-authz-decision-id")
        records = decisions_for(stack, decision_id or "", phase="request")
        allowed = {(res.get("kind"), res.get("id")) for rec in records for res in rec.get("resources") or []
                   if res.get("effect") in ("allow", "EFFECT_ALLOW")}
        allowed_ids = {i for _, i in allowed}
        parsed = seen["provider_view"]
        if "error" in parsed:
            continue  # the provider could not parse it: it runs nothing
        for view_name in ("last", "first"):
            view = parsed[view_name]
            unjudged_models = [m for m in view["models"] if ("llm_model", m) not in allowed]
            unjudged_tools = [t for t in view["tools"] if t not in allowed_ids and t.split(":", 1)[-1] not in allowed_ids]
            if unjudged_models or unjudged_tools or view["references"]:
                return (f"UNJUDGED: the provider ({view_name}-wins) reads models {view['models']} tools {view['tools']} "
                        f"references {view['references']}; judged and allowed {sorted(allowed_ids)}\n  received {seen['body'][:300]!r}\n  {what}")
    return None


def llm_core_variants() -> list[tuple[str, str, list[str]]]:
    """Every mutation alone, in every dialect; the denied-model base only with the mutations
    that could change the model read."""
    out = []
    for name in LLM_MUTATIONS:
        for dialect in DIALECTS:
            for base in LLM_BASES:
                if base == "model-denied" and not re.search(r"plain|model|path|dup|escaped|upload|bom|encoding", name):
                    continue
                out.append((dialect, base, [name]))
    return out


def llm_variants(rng: random.Random) -> Iterator[tuple[str, str, list[str]]]:
    yield from llm_core_variants()
    mutations = list(LLM_MUTATIONS)[1:]
    while True:
        yield rng.choice(list(DIALECTS)), rng.choice(list(LLM_BASES)), rng.sample(mutations, rng.randint(2, 3))


def test_llm_requests_in_every_spelling(vstack):
    token, rng = vstack.token_for("alice"), random.Random(SEED)
    failures, tried, names_tried = [], 0, set()
    budget = max(BUDGET, len(llm_core_variants()))
    for dialect, base, names in itertools.islice(llm_variants(rng), budget):
        tried += 1
        names_tried.update(names)
        failure = send_llm_variant(vstack, token, dialect, base, names, rng)
        if failure:
            failures.append((names, failure))
    vstack.llm_reset()
    report("LLM requests", tried, split_open(failures, names_tried))


# ====================================================================== family 4: MCP sessions
INITIALIZE = ('{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25",'
              '"capabilities":{},"clientInfo":{"name":"variants","version":"1"}}}')


def session_shapes(alice: str, bob: str, alice_minted: str) -> dict[str, list[tuple[str, str]]]:
    """Ways bob could present alice's session (bob also holds his own, `bob`)."""
    return {
        "alice-sealed": [("mcp-session-id", alice)],
        "alice-minted": [("mcp-session-id", alice_minted)],
        "header-case": [("MCP-SESSION-ID", alice)],
        "two-headers-own-first": [("mcp-session-id", bob), ("mcp-session-id", alice)],
        "two-headers-alice-first": [("mcp-session-id", alice), ("mcp-session-id", bob)],
        "joined": [("mcp-session-id", f"{bob}, {alice}")],
        "joined-alice-first": [("mcp-session-id", f"{alice},{bob}")],
        "upper": [("mcp-session-id", alice.upper())],
        "tag-of-bob-id-of-alice": [("mcp-session-id", bob.rsplit(".", 1)[0] + "." + alice_minted)],
        "tag-of-alice-id-of-bob": [("mcp-session-id", alice.rsplit(".", 1)[0] + "." + bob.rsplit(".", 1)[-1])],
        "truncated": [("mcp-session-id", alice[:-1])],
        "padded-tag": [("mcp-session-id", alice.replace(".", "=.", 1))],
    }


def test_mcp_sessions_in_every_presentation(vstack):
    """Every way another principal could present alice's session: the server never receives
    alice's session id on bob's behalf, and bob's own session still works (the control)."""
    raw = RawMcp(vstack)
    raw.reset()
    alice_token, bob_token = vstack.token_for("alice"), vstack.token_for("bob")
    opened = {}
    for who, token in (("alice", alice_token), ("bob", bob_token)):
        r = httpx.post(vstack.mcp_url, content=INITIALIZE.encode(), headers=mcp_headers(token), timeout=10)
        assert r.status_code == 200, r.text[:300]
        opened[who] = (r.headers["mcp-session-id"], raw.parsed()[-1]["minted_session"])
    (alice, alice_minted), (bob, bob_minted) = opened["alice"], opened["bob"]
    failures, tried = [], 0
    listing = b'{"jsonrpc":"2.0","id":5,"method":"tools/list"}'
    shapes = {"control-bob-own": [("mcp-session-id", bob)], **session_shapes(alice, bob, alice_minted)}
    for (shape, session_headers), method in itertools.product(shapes.items(), ("POST", "GET", "DELETE")):
        if shape == "control-bob-own" and method == "DELETE":
            continue  # keep bob's session for the other shapes
        tried += 1
        before = len(raw.parsed())
        headers = [*[(k, v) for k, v in mcp_headers(bob_token).items()], *session_headers]
        try:
            r = httpx.request(method, vstack.mcp_url, headers=headers, content=listing if method == "POST" else None,
                              timeout=10)
            status = r.status_code
        except httpx.HTTPError as e:
            status = f"transport error {e!r}"
        reached = raw.parsed()[before:]
        seen = [e["headers"].get("mcp-session-id") for e in reached]
        what = f"bob {method} with {shape}: status {status}, the server saw sessions {seen}"
        if any(alice_minted in (s or "") for s in seen):
            failures.append(f"SESSION HIJACK: {what}")
        elif shape == "control-bob-own" and (status != 200 or seen != [bob_minted]):
            failures.append(f"CONTROL FAILED (bob's own session must work): {what}")
        elif shape != "control-bob-own" and reached and any(s != bob_minted for s in seen):
            failures.append(f"FORWARDED a session id bob does not own: {what}")
    failures = [([], f) for f in failures]

    # The 2024-11-05 HTTP+SSE transport names its session in the endpoint URL of its GET stream.
    # agent-authz does not serve that transport's messages (their session cannot be bound to a
    # principal): bob's POST to alice's URL, and alice's own, are refused before the server.
    raw.reset(legacy_sse=True)
    r = httpx.get(vstack.mcp_url, headers=mcp_headers(alice_token), timeout=10)
    assert r.status_code == 200, r.text[:300]
    endpoint = [line.split(":", 1)[1].strip() for line in r.text.splitlines() if line.startswith("data:") and "session_id" in line]
    assert endpoint, f"no endpoint event reached alice: {r.text[:300]!r}"
    legacy_minted = raw.parsed()[-1]["minted_session"]
    call = b'{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"lookup_ticket","arguments":{"ticket_id":"T-200"}}}'
    for who, token in (("alice", alice_token), ("bob", bob_token)):
        tried += 1
        before = len(raw.parsed())
        r = httpx.post(f"{vstack.envoy_url}{endpoint[0]}", content=call, headers=mcp_headers(token), timeout=10)
        seen = [e.get("legacy_session") for e in raw.parsed()[before:]]
        what = f"{who} POST to alice's endpoint URL {endpoint[0]}: status {r.status_code}, the server saw sessions {seen}"
        if who == "bob" and legacy_minted in seen:
            failures.append((["legacy-endpoint-session"], f"SESSION HIJACK: {what}"))
        if seen or r.status_code != 400:
            failures.append(([], f"LEGACY MESSAGE SERVED (the transport is refused): {what}"))
    raw.reset()
    report("MCP sessions", tried, split_open(failures, {"legacy-endpoint-session"}))


# ====================================================================== family 5: model lists
MODEL_SHAPES = ["plain", "escaped", "dup_id", "dup_data", "pretty"]


def first_wins_pairs(pairs):
    out = {}
    for key, value in pairs:
        out.setdefault(key, value)
    return out


def test_model_lists_in_every_spelling(vstack):
    """GET /v1/models answers spelt differently: the ids a client decodes (either duplicate-key
    rule) are models alice may invoke, or the answer is refused."""
    token = vstack.token_for("alice")
    failures, tried = [], 0
    for shape, encoding in itertools.product(MODEL_SHAPES, ("identity", "gzip")):
        tried += 1
        vstack.llm_reset()
        httpx.post(f"{vstack.llm_direct_url}/_mode",
                   json={"models_json": shape, "gzip_models": encoding == "gzip"}, timeout=5).raise_for_status()
        r = httpx.get(f"{vstack.llm_base_url}/models", headers={"authorization": f"Bearer {token}"}, timeout=10)
        what = f"model list {shape} {encoding}: status {r.status_code} body {r.text[:200]!r}"
        decoded: set[str] = set()
        if r.status_code == 200:
            try:
                for reading in (json.loads(r.text), json.loads(r.text, object_pairs_hook=first_wins_pairs)):
                    decoded |= {m.get("id") for m in reading.get("data", []) if isinstance(m, dict)}
            except ValueError:
                decoded = set()
        outcome("model lists", r.status_code == 200)
        if decoded - {"gpt-4o-mini"}:
            failures.append(f"BYPASS: the client decoded {sorted(decoded)}\n  {what}")
        elif shape in ("plain", "escaped", "pretty") and encoding == "identity" and decoded != {"gpt-4o-mini"}:
            failures.append(f"REFUSED a legal list (decoded {sorted(decoded)})\n  {what}")
    vstack.llm_reset()
    report("model lists", tried, failures)


# ====================================================================== family 6: tool calls in answers
CALL_SCRIPTS = {  # what the model "calls", for alice (support: get_weather allowed; refund bound)
    "allowed": [{"name": "get_weather", "arguments": {"city": "Paris"}}],
    "denied": [{"name": "delete_repo", "arguments": {"name": "agent-authz"}}],
    "mixed": [{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "delete_repo", "arguments": {"name": "x"}}],
    "over-limit": [{"name": "refund", "arguments": {"ticket_id": "T-100", "amount_cents": 200000}}],
}
CALL_SHAPES = ["plain", "escaped_name", "dup_name", "dup_tool_calls", "split_name"]
# How agents parse answers: under either duplicate-key rule (the SDKs read last-wins; agent-authz
# refuses an answer or event with duplicate keys, so no reader can see another call).
ANSWER_READINGS = (None, first_wins_pairs)


def client_tool_calls(response: httpx.Response, stream: bool) -> list[tuple[str, Any]]:
    """The tool calls an agent reads from a Chat Completions answer: JSON `message.tool_calls`, or streamed `delta.tool_calls` fragments accumulated by
    index with string parts concatenated, as the openai SDK does."""
    calls: list[tuple[str, Any]] = []
    texts = sse_event_data(response.content) if stream else [response.text]
    for hook in ANSWER_READINGS:
        acc: dict[int, dict[str, str]] = {}
        for text in texts:
            if text.strip() == "[DONE]":
                continue
            try:
                obj = json.loads(text, object_pairs_hook=hook)
            except ValueError:
                continue
            for choice in obj.get("choices") or []:
                part = choice.get("delta" if stream else "message") or {}
                for n, call in enumerate(part.get("tool_calls") or []):
                    index = call.get("index", n) if stream else n
                    fn = call.get("function") or {}
                    slot = acc.setdefault((index if stream else len(acc)), {"name": "", "arguments": ""})
                    slot["name"] += fn.get("name") or ""
                    slot["arguments"] += fn.get("arguments") or ""
        for slot in acc.values():
            try:
                args = json.loads(slot["arguments"]) if slot["arguments"] else {}
            except ValueError:
                args = slot["arguments"]
            if (slot["name"], args) not in calls:
                calls.append((slot["name"], args))
    return calls


def client_tool_uses(response: httpx.Response, stream: bool) -> list[tuple[str, Any]]:
    """The tool_use blocks an agent reads from a Messages answer, as the anthropic SDK accumulates a stream: content_block_start gives the block (and
    its input), input_json_delta fragments, when any, replace that input by their joined text."""
    calls: list[tuple[str, Any]] = []
    texts = sse_event_data(response.content, any_type=True) if stream else [response.text]
    for hook in ANSWER_READINGS:
        blocks: dict[int, dict[str, Any]] = {}
        for text in texts:
            try:
                obj = json.loads(text, object_pairs_hook=hook)
            except ValueError:
                continue
            if not stream:
                for n, block in enumerate(obj.get("content") or []):
                    if isinstance(block, dict) and block.get("type") == "tool_use":
                        blocks[n] = {"name": block.get("name"), "input": block.get("input"), "json": ""}
            elif obj.get("type") == "content_block_start" and (obj.get("content_block") or {}).get("type") == "tool_use":
                block = obj["content_block"]
                blocks[obj.get("index")] = {"name": block.get("name"), "input": block.get("input"), "json": ""}
            elif obj.get("type") == "content_block_delta" and (obj.get("delta") or {}).get("type") == "input_json_delta":
                if obj.get("index") in blocks:
                    blocks[obj["index"]]["json"] += obj["delta"].get("partial_json") or ""
        for block in blocks.values():
            args = block["input"]
            if block["json"]:
                try:
                    args = json.loads(block["json"])
                except ValueError:
                    args = block["json"]
            if (block["name"], args) not in calls:
                calls.append((block["name"], args))
    return calls


def client_function_calls(response: httpx.Response, stream: bool) -> list[tuple[str, Any]]:
    """The function calls an agent reads from a Responses answer: JSON `output[]` items; when
    streamed, every item an event carries (output_item.added / done, and response.completed's
    output, which the openai SDK's final response is built from)."""
    calls: list[tuple[str, Any]] = []
    texts = sse_event_data(response.content, any_type=True) if stream else [response.text]
    for hook in ANSWER_READINGS:
        items: list[dict] = []
        for text in texts:
            try:
                obj = json.loads(text, object_pairs_hook=hook)
            except ValueError:
                continue
            if not stream:
                items += obj.get("output") or []
            elif obj.get("type") == "response.output_item.done":
                items.append(obj.get("item") or {})
            elif obj.get("type") == "response.completed":
                items += (obj.get("response") or {}).get("output") or []
        for item in items:
            if isinstance(item, dict) and item.get("type") == "function_call":
                try:
                    args = json.loads(item.get("arguments") or "{}")
                except ValueError:
                    args = item.get("arguments")
                if (item.get("name"), args) not in calls:
                    calls.append((item.get("name"), args))
    return calls


def client_function_call_parts(response: httpx.Response, stream: bool) -> list[tuple[str, Any]]:
    """The functionCall parts an agent reads from a Gemini answer (google-genai reads proto3
    JSON: `functionCall` or `function_call`), in every streamed chunk."""
    calls: list[tuple[str, Any]] = []
    texts = sse_event_data(response.content) if stream else [response.text]
    for hook in ANSWER_READINGS:
        for text in texts:
            try:
                obj = json.loads(text, object_pairs_hook=hook)
            except ValueError:
                continue
            for candidate in obj.get("candidates") or []:
                for part in ((candidate.get("content") or {}).get("parts") or []):
                    call = part.get("functionCall") or part.get("function_call") if isinstance(part, dict) else None
                    if isinstance(call, dict) and (call.get("name"), call.get("args")) not in calls:
                        calls.append((call.get("name"), call.get("args")))
    return calls


def client_tool_uses_converse(response: httpx.Response, stream: bool) -> list[tuple[str, Any]]:
    """The toolUse blocks an agent reads from a Converse answer: JSON `output.message.content[]`,
    or a ConverseStream decoded as botocore decodes it (AWS event-stream messages, headers
    last-wins), contentBlockStart naming the block and `delta.toolUse.input` fragments by index."""
    from botocore.eventstream import EventStreamBuffer

    calls: list[tuple[str, Any]] = []
    if stream:
        buffer = EventStreamBuffer()
        buffer.add_data(response.content)
        try:
            texts = [(m.headers.get(":event-type"), m.payload.decode()) for m in buffer
                     if m.headers.get(":message-type") not in ("exception", "error")]
        except Exception:  # noqa: BLE001 - an unreadable stream hands the agent nothing past it
            texts = []
    else:
        texts = [(None, response.text)]
    for hook in ANSWER_READINGS:
        blocks: dict[Any, dict[str, Any]] = {}
        for kind, text in texts:
            try:
                obj = json.loads(text, object_pairs_hook=hook)
            except ValueError:
                continue
            if not isinstance(obj, dict):
                continue
            if not stream:
                content = ((obj.get("output") or {}).get("message") or {}).get("content") or []
                for n, block in enumerate(content):
                    tool = block.get("toolUse") if isinstance(block, dict) else None
                    if isinstance(tool, dict):
                        blocks[n] = {"name": tool.get("name"), "input": tool.get("input"), "json": ""}
            elif kind == "contentBlockStart" and isinstance((obj.get("start") or {}).get("toolUse"), dict):
                blocks[obj.get("contentBlockIndex")] = {"name": obj["start"]["toolUse"].get("name"), "input": {}, "json": ""}
            elif kind == "contentBlockDelta" and obj.get("contentBlockIndex") in blocks:
                fragment = ((obj.get("delta") or {}).get("toolUse") or {}).get("input")
                blocks[obj["contentBlockIndex"]]["json"] += fragment if isinstance(fragment, str) else ""
        for block in blocks.values():
            args = block["input"]
            if block["json"]:
                try:
                    args = json.loads(block["json"])
                except ValueError:
                    args = block["json"]
            if (block["name"], args) not in calls:
                calls.append((block["name"], args))
    return calls


CONVERSE_SHAPES = ["plain", "escaped_name", "dup_name", "dup_input", "dup_header"]
GEMINI_SHAPES = ["plain", "snake_case", "escaped_name", "dup_name"]
RESPONSES_SHAPES = ["plain", "escaped_name", "dup_name", "completed_adds", "done_differs"]
ANTHROPIC_SHAPES = ["plain", "escaped_name", "dup_name", "dup_input", "dup_content", "input_in_start"]


def test_tool_calls_in_answers_in_every_spelling(vstack):
    """A model's tool calls, spelt differently: every call the agent reads (as the openai,
    anthropic, google-genai and boto3 SDKs accumulate them) was judged and allowed with those arguments in a
    response-phase record under the request's decision id, or the answer was refused."""
    token, rng = vstack.token_for("alice"), random.Random(SEED)
    failures, tried = [], 0
    core = [(script, shape, stream, {}) for script in CALL_SCRIPTS for shape in CALL_SHAPES for stream in (False, True)
            if not (shape == "split_name" and not stream)]
    core += [(script, "plain", True, extra) for script in ("denied", "mixed") for extra in (
        {"sse_eol": "\r\n"}, {"sse_eol": "\r"}, {"sse_comments": True}, {"gzip_chat": True})]
    core += [(script, "plain", False, {"gzip_chat": True}) for script in ("denied", "mixed")]
    core = [("openai_chat", *variant) for variant in core]
    core += [("anthropic", script, shape, stream, {}) for script in CALL_SCRIPTS for shape in ANTHROPIC_SHAPES
             for stream in (False, True) if not (shape == "input_in_start" and not stream)
             and not (shape in ("dup_input", "dup_content") and stream)]
    core += [("anthropic", script, "plain", True, extra) for script in ("denied", "over-limit") for extra in (
        {"sse_eol": "\r\n"}, {"sse_eol": "\r"}, {"sse_comments": True}, {"gzip_chat": True})]
    core += [("openai_responses", script, shape, stream, {}) for script in CALL_SCRIPTS for shape in RESPONSES_SHAPES
             for stream in (False, True) if not (shape in ("completed_adds", "done_differs") and not stream)]
    core += [("openai_responses", script, "plain", True, extra) for script in ("denied", "mixed") for extra in (
        {"sse_eol": "\r\n"}, {"sse_comments": True}, {"gzip_chat": True})]
    core += [("gemini", script, shape, stream, {}) for script in CALL_SCRIPTS for shape in GEMINI_SHAPES
             for stream in (False, True)]
    core += [("gemini", script, "plain", True, extra) for script in ("denied", "mixed") for extra in (
        {"sse_eol": "\r\n"}, {"sse_comments": True}, {"gzip_chat": True})]
    core += [("bedrock_converse", script, shape, stream, {}) for script in CALL_SCRIPTS for shape in CONVERSE_SHAPES
             for stream in (False, True) if not (shape == "dup_header" and not stream)
             and not (shape == "dup_input" and stream)]
    core += [("bedrock_converse", script, "plain", stream, {"gzip_chat": True}) for script in ("denied", "mixed")
             for stream in (False, True)]
    for dialect, script, shape, stream, extra in core:
        tried += 1
        vstack.llm_reset()
        httpx.post(f"{vstack.llm_direct_url}/_mode",
                   json={"tool_calls": CALL_SCRIPTS[script], "calls_shape": shape, **extra}, timeout=5).raise_for_status()
        if dialect == "bedrock_converse":
            path = "/model/gpt-4o-mini/" + ("converse-stream" if stream else "converse")
            read = client_tool_uses_converse
            body = {"messages": [{"role": "user", "content": [{"text": "go"}]}],
                    "toolConfig": {"tools": [{"toolSpec": {"name": "get_weather", "inputSchema": {"json": {"type": "object"}}}}]}}
        elif dialect == "gemini":
            path = "/v1beta/models/gpt-4o-mini:" + ("streamGenerateContent?alt=sse" if stream else "generateContent")
            read = client_function_call_parts
            body = {"contents": [{"role": "user", "parts": [{"text": "go"}]}],
                    "tools": [{"functionDeclarations": [{"name": "get_weather"}]}]}
        elif dialect == "openai_responses":
            path, read = "/responses", client_function_calls
            body = {"model": "gpt-4o-mini", "input": "go", "stream": stream,
                    "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]}
        elif dialect == "anthropic":
            path, read = "/messages", client_tool_uses
            body = {"model": "gpt-4o-mini", "max_tokens": 50, "messages": [{"role": "user", "content": "go"}],
                    "stream": stream, "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}]}
        else:
            path, read = "/chat/completions", client_tool_calls
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "go"}], "stream": stream,
                    "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]}
        try:
            url = f"{vstack.envoy_url}{path}" if dialect in ("gemini", "bedrock_converse") else f"{vstack.llm_base_url}{path}"
            r = httpx.post(url, json=body,
                           headers={"authorization": f"Bearer {token}"}, timeout=15)
            status, calls = r.status_code, read(r, stream) if r.status_code == 200 else []
        except httpx.HTTPError as e:
            status, calls = f"transport error {e!r}", []
        received = vstack.llm_received()
        decision_id = received[0]["headers"].get("x-agent-authz-decision-id") if received else None
        outcome("tool calls in answers", bool(calls))
        what = f"{dialect} answer {script} {shape} stream={stream} {extra}: status {status}, the agent reads {calls}"
        if script == "allowed" and shape == "plain" and not extra and not calls:
            failures.append(([], f"CONTROL FAILED (an allowed call must reach the agent)\n  {what}"))
        if not calls:
            continue
        records = decisions_for(vstack, decision_id or "", phase="response")
        allowed = [(res.get("id"), (res.get("attr") or {}).get("arguments")) for rec in records
                   for res in rec.get("resources") or []
                   if res.get("effect") in ("allow", "EFFECT_ALLOW") and str(res.get("action", "")).startswith("tools/call/")]
        for name, args in calls:
            if not any(name == n and numbers_equal(args, a) for n, a in allowed):
                failures.append(([f"{dialect}:{shape}"], f"UNJUDGED CALL: the agent reads {name}({args}); "
                                 f"judged and allowed {allowed}\n  {what}"))
                break
    vstack.llm_reset()
    report("tool calls in answers", tried, split_open(failures, {f"{d}:{sh}" for d, _, sh, _, _ in core}))
