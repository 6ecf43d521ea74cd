"""Issue 13, items 1-6, 8, 9: each place where agent-authz judged a message one way while the
client, server or provider read it another, held by a test through the real stack that judges
by what the receiver parsed (e2e/upstreams/mcp_raw.py's record, the client's own decoding of
an answer, e2e/upstreams/provider_view.py), never by agent-authz's own account.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import yaml

from clients import mcp_client, openai_client
from receivers import (
    ALICE_VISIBLE,
    RawMcp,
    decisions_for,
    decoded_messages,
    decoded_tool_names,
    mcp_headers,
    metric_series,
    post_raw,
)
from stack import REPO, Stack

TOOLS_LIST = '{"jsonrpc":"2.0","id":%s,"method":"tools/list"}'


def start(stack: Stack):
    from conftest import require_stack_binaries

    require_stack_binaries()
    return stack


@pytest.fixture(scope="module")
def raw_stack():
    """A stack whose MCP server is the hand-written recorder (mcp_raw.py)."""
    with start(Stack(name="raw-mcp", mcp_script="e2e/upstreams/mcp_raw.py")) as s:
        yield s


@pytest.fixture
def raw(raw_stack):
    server = RawMcp(raw_stack)
    server.reset()
    yield server
    server.reset()


def list_as(stack: Stack, token: str, id_text: str = "1", **headers: str) -> httpx.Response:
    return post_raw(stack, TOOLS_LIST % id_text, mcp_headers(token, **headers))


# ---------------------------------------------------------------------- 1. ids of any size/type
@pytest.mark.parametrize("answer", ["sse", "json"])
@pytest.mark.parametrize(
    "id_text",
    [
        "9000000000000001",  # the id
        "9007199254740993",  # 2^53 + 1: not a float64
        "-9000000000000001",
        "18446744073709551617",  # 2^64 + 1
        "123456789012345678901234567890",
        '"' + "k" * 10000 + '"',
        '"9000000000000001"',
        '"\\u0041b"',
        "0",
    ],
    ids=["9000000000000001", "2^53+1", "-9000000000000001", "2^64+1", "30-digits", "10k-string", "numeric-string", "escaped-string", "zero"],
)
def test_1_tools_list_is_filtered_whatever_the_id(raw_stack, raw, answer, id_text):
    raw.reset(answer=answer)
    r = list_as(raw_stack, raw_stack.token_for("alice"), id_text)
    assert r.status_code == 200, r.text[:300]
    (parsed,) = raw.parsed()
    assert parsed["messages"][0]["method"] == "tools/list"
    names = decoded_tool_names(r)
    assert names == ALICE_VISIBLE, f"id {id_text[:40]}: the client decoded {names}"
    (message,) = decoded_messages(r)
    assert message["id"] == json.loads(id_text), "the caller's id comes back unchanged"


@pytest.mark.parametrize("id_text", ["1e400", "1.5", "-0", "1E2"])
def test_1_odd_numeric_ids_are_filtered_or_refused(raw_stack, raw, id_text):
    """Numbers no integer type holds: the answer is filtered, or refused; never passed whole."""
    r = list_as(raw_stack, raw_stack.token_for("alice"), id_text)
    names = decoded_tool_names(r)
    assert names in (None, ALICE_VISIBLE), f"id {id_text}: status {r.status_code}, the client decoded {names}"
    if names is not None:
        assert r.status_code == 200


INITIALIZE = ('{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25",'
              '"capabilities":{},"clientInfo":{"name":"t","version":"1"}}}')


def open_session(stack: Stack, token: str) -> str:
    r = post_raw(stack, INITIALIZE, mcp_headers(token))
    assert r.status_code == 200, r.text[:300]
    session = r.headers["mcp-session-id"]
    r = post_raw(stack, '{"jsonrpc":"2.0","method":"notifications/initialized"}',
                 mcp_headers(token, **{"mcp-session-id": session}))
    assert r.status_code == 202, r.text[:300]
    return session


def test_1_the_sdk_server_echoing_a_big_id_is_filtered(stack):
    """The same through the official SDK server (it echoes 9000000000000001 exactly)."""
    token = stack.token_for("alice")
    r = list_as(stack, token, "9000000000000001", **{"mcp-session-id": open_session(stack, token)})
    assert r.status_code == 200, r.text[:300]
    assert decoded_tool_names(r) == ALICE_VISIBLE


# ---------------------------------------------------------------------- 2. compressed answers
@pytest.mark.parametrize("answer", ["sse", "json"])
@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_2_a_compressed_tools_list_is_refused_never_passed_unfiltered(raw_stack, raw, answer, encoding):
    raw.reset(answer=answer, encoding=encoding)
    r = list_as(raw_stack, raw_stack.token_for("alice"), **{"accept-encoding": "gzip, deflate"})
    (parsed,) = raw.parsed()
    assert parsed["headers"].get("accept-encoding", "identity") == "identity", \
        "on a filtered exchange the upstream is asked for an uncompressed answer"
    names = decoded_tool_names(r)
    assert names is None or "delete_repo" not in names, f"the unfiltered list got through {encoding}: {names}"
    assert r.status_code >= 500, f"an answer the filter cannot read fails closed, got {r.status_code}"


@pytest.fixture(scope="module", params=["negotiated", "always"])
def gzip_sdk_stack(request):
    """The official SDK server behind a gzip middleware (negotiated, or regardless)."""
    with start(Stack(name=f"mcp-gzip-{request.param}", mcp_args=("--gzip", request.param))) as s:
        s.gzip_mode = request.param
        yield s


def test_2_the_sdk_client_never_sees_the_unfiltered_list_from_a_gzipping_server(gzip_sdk_stack):
    """The SDK client sends Accept-Encoding: gzip; agent-authz must not let the server use it
    on a tools/list, and must refuse the answer if the server compresses anyway."""

    async def go():
        async with mcp_client(gzip_sdk_stack.mcp_url, gzip_sdk_stack.token_for("alice")) as client:
            return {t.name for t in (await client.list_tools()).tools}

    try:
        names = asyncio.run(go())
    except BaseException as e:  # noqa: BLE001 - refused: the client got no list
        assert gzip_sdk_stack.gzip_mode == "always", f"a negotiated server must be asked for identity: {e!r}"
        return
    assert names == ALICE_VISIBLE


def test_2_model_lists_are_asked_uncompressed_and_refused_when_compressed(clean, tokens):
    url = f"{clean.llm_base_url}/models"
    headers = {"authorization": f"Bearer {tokens['alice']}", "accept-encoding": "gzip"}
    try:
        r = httpx.get(url, headers=headers)
        assert r.status_code == 200
        assert [m["id"] for m in r.json()["data"]] == ["gpt-4o-mini"]
        (seen,) = clean.llm_received()
        assert seen["headers"].get("accept-encoding", "identity") == "identity"
        httpx.post(f"{clean.llm_direct_url}/_mode", json={"gzip_models": True}).raise_for_status()
        r = httpx.get(url, headers=headers)
        listed = r.json().get("data") if r.status_code == 200 else None
        assert listed is None, f"a compressed model list passed: {listed}"
        assert r.status_code >= 500
    finally:
        clean.llm_reset()


# ---------------------------------------------------------------------- 3. batches
@pytest.mark.parametrize("answer", ["json", "sse"])
@pytest.mark.parametrize(
    "batch",
    [
        '[{"jsonrpc":"2.0","id":1,"method":"tools/list"}]',
        '[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":"tools/list"}]',
        '[{"jsonrpc":"2.0","id":"a","method":"tools/list"},{"jsonrpc":"2.0","id":"b","method":"tools/list"}]',
    ],
    ids=["alone", "after-ping", "twice"],
)
def test_3_a_tools_list_inside_a_batch_is_filtered(raw_stack, raw, answer, batch):
    raw.reset(answer=answer)
    r = post_raw(raw_stack, batch, mcp_headers(raw_stack.token_for("alice"), "2025-03-26"))
    assert r.status_code == 200, r.text[:300]
    (parsed,) = raw.parsed()
    listed = [m for m in parsed["messages"] if m["method"] == "tools/list"]
    assert listed, "the server parsed the batch's tools/list"
    names = decoded_tool_names(r)
    assert names == ALICE_VISIBLE, f"the client decoded {names} from a batched tools/list"


# ---------------------------------------------------------------------- 4. the SSE priming event
@pytest.mark.parametrize("line_end", ["\n", "\r\n"])
def test_4_the_sse_priming_event_does_not_break_tools_list(raw_stack, raw, line_end):
    raw.reset(priming=True, line_end=line_end)
    r = list_as(raw_stack, raw_stack.token_for("alice"))
    assert r.status_code == 200, f"{r.status_code} {r.text[:200]}"
    assert decoded_tool_names(r) == ALICE_VISIBLE


# ---------------------------------------------------------------------- 5. sessions
def test_5_a_session_belongs_to_the_principal_that_opened_it(raw_stack, raw):
    alice, bob = raw_stack.token_for("alice"), raw_stack.token_for("bob")
    r = post_raw(raw_stack, INITIALIZE, mcp_headers(alice))
    assert r.status_code == 200, r.text[:300]
    handed = r.headers["mcp-session-id"]
    (opened,) = raw.parsed()
    minted = opened["minted_session"]
    assert handed != minted, "the session id handed to the client is sealed, not the server's own"

    r = list_as(raw_stack, alice, **{"mcp-session-id": handed})
    assert r.status_code == 200 and decoded_tool_names(r) == ALICE_VISIBLE, r.text[:200]
    assert raw.parsed()[-1]["headers"]["mcp-session-id"] == minted, "the server gets its own id back"

    reached = len(raw.parsed())
    for attempt, session in (("sealed", handed), ("server's raw id", minted)):
        for method in ("POST", "GET", "DELETE"):
            headers = mcp_headers(bob, **{"mcp-session-id": session})
            content = (TOOLS_LIST % "5").encode() if method == "POST" else None
            r = httpx.request(method, raw_stack.mcp_url, headers=headers, content=content, timeout=10)
            assert r.status_code in (400, 403, 404), f"bob's {method} with alice's {attempt} session: {r.status_code}"
            if attempt == "sealed":
                assert r.status_code == 404, f"bob's {method}: {r.status_code}"
                body = r.json()
                assert body["jsonrpc"] == "2.0" and "error" in body, body
            assert len(raw.parsed()) == reached, f"bob's {method} with alice's {attempt} session reached the server"

    r = list_as(raw_stack, alice, **{"mcp-session-id": handed})
    assert r.status_code == 200 and decoded_tool_names(r) == ALICE_VISIBLE, "alice's session keeps working"
    r = httpx.get(raw_stack.mcp_url, headers=mcp_headers(alice, **{"mcp-session-id": handed}), timeout=10)
    assert r.status_code == 200, "alice's own GET stream opens"
    r = httpx.delete(raw_stack.mcp_url, headers=mcp_headers(alice, **{"mcp-session-id": handed}), timeout=10)
    assert r.status_code == 200
    assert raw.parsed()[-1]["method"] == "DELETE" and raw.parsed()[-1]["headers"]["mcp-session-id"] == minted


def test_5_the_sdk_server_never_runs_another_principals_call_in_a_session(stack):
    """The same through the official SDK server: bob's tools/call in alice's session is refused
    before the server, which executes nothing; alice's own call in it runs."""
    alice, bob = stack.token_for("alice"), stack.token_for("bob")
    session = open_session(stack, alice)
    call = ('{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"lookup_ticket",'
            '"arguments":{"ticket_id":"T-100"}}}')
    executed, received = len(stack.mcp_executions()), len(stack.mcp_received())
    r = post_raw(stack, call, mcp_headers(bob, **{"mcp-session-id": session}))
    assert r.status_code == 404, r.text[:300]
    assert "error" in r.json()
    assert len(stack.mcp_received()) == received, "bob's request reached the server"
    assert len(stack.mcp_executions()) == executed
    r = post_raw(stack, call, mcp_headers(alice, **{"mcp-session-id": session}))
    assert r.status_code == 200, r.text[:300]
    assert stack.mcp_executions()[executed:] == [{"tool": "lookup_ticket", "arguments": {"ticket_id": "T-100"}}]


# ---------------------------------------------------------------------- 6. metrics
def test_6_request_text_never_becomes_a_metric_label(raw_stack, raw):
    token = raw_stack.token_for("alice")
    admin = f"http://127.0.0.1:{raw_stack.ports['authz_admin']}/metrics"
    bodies = [json.dumps({"jsonrpc": "2.0", "id": n, "method": f"x-unknown/method-{n}", "params": {}}) for n in range(1500)]
    bodies += [json.dumps({"jsonrpc": "2.0", "id": n, "method": "tools/call",
                           "params": {"name": f"zz_tool_{n}", "arguments": {}}}) for n in range(1500)]
    headers = mcp_headers(token)

    def send(chunk: list[str]) -> list[int]:
        with httpx.Client(timeout=15) as client:
            return [client.post(raw_stack.mcp_url, content=b, headers=headers).status_code for b in chunk]

    with ThreadPoolExecutor(4) as pool:
        statuses = [s for part in pool.map(send, [bodies[i::4] for i in range(4)]) for s in part]
    assert len(statuses) == 3000 and all(s < 500 for s in statuses)
    assert raw.executed() == [], "no unknown method or tool was executed"
    text = httpx.get(admin, timeout=5).text
    series = metric_series(text, "agent_authz_decisions_total")
    actions = {line.split('action="', 1)[1].split('"', 1)[0] for line in series if 'action="' in line}
    assert not any("x-unknown" in a or "zz_tool" in a for a in actions), sorted(actions)[:10]
    assert len(series) < 60, f"{len(series)} decision series after 3,000 distinct names"
    assert len(text) < 64 * 1024, f"/metrics grew to {len(text)} bytes"


def test_6_metrics_are_not_served_on_the_public_listener(stack):
    r = httpx.get(f"{stack.envoy_url}/metrics", timeout=5)
    assert not (r.status_code == 200 and "agent_authz_" in r.text), "agent-authz's /metrics on the public listener"


# ---------------------------------------------------------------------- 8. strip without ext_proc
def without_ext_proc(config_text: str) -> str:
    """The shipped config with the ext_proc leg taken out (an operator's mistake)."""
    config = yaml.safe_load(config_text)

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("http_filters"), list):
                node["http_filters"] = [f for f in node["http_filters"] if f.get("name") != "envoy.filters.http.ext_proc"]
            per_filter = node.get("typed_per_filter_config")
            if isinstance(per_filter, dict):
                per_filter.pop("envoy.filters.http.ext_proc", None)
                if not per_filter:
                    node.pop("typed_per_filter_config")
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    return yaml.safe_dump(config, sort_keys=False)


def weather_and_delete() -> list[dict]:
    return [{"type": "function", "function": {"name": n, "parameters": {"type": "object", "properties": {}}}}
            for n in ("get_weather", "delete_repo")]


@pytest.mark.parametrize("template", ["agent-gateway.yaml", "llm-gateway.yaml"])
def test_8_strip_without_the_ext_proc_leg_never_lets_the_denied_tool_through(template):
    s = Stack(name="no-ext-proc")
    shipped = (REPO / "envoy" / template).read_text()
    assert "envoy.filters.http.ext_proc" in shipped
    s.envoy_template = s.dir / f"no-ext-proc-{template}"
    s.envoy_template.write_text(without_ext_proc(shipped))
    with start(s):
        before = len(s.decisions())
        r = httpx.post(
            f"{s.llm_base_url}/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "tools": weather_and_delete()},
            headers={"authorization": f"Bearer {s.token_for('alice')}"},
            timeout=10,
        )
        seen = [t for entry in s.llm_received() for t in entry["provider_view"]["last"]["tools"]]
        assert "delete_repo" not in seen, f"the denied tool reached the provider ({r.status_code})"
        assert r.status_code >= 400, f"a strip no leg applies is refused, got {r.status_code}"
        # The evidence says what was decided and that no leg confirmed a strip.
        record = s.wait_for_request_decision("/v1/chat/completions", after=before)
        assert "delete_repo" in json.dumps(record.get("denied_tools")), record
        assert decisions_for(s, record["decision_id"], timeout=1.0, phase="strip") == []


def test_8_with_ext_proc_the_strip_is_confirmed_by_the_leg_that_did_it(clean, tokens):
    client = openai_client(clean.llm_base_url, tokens["alice"])
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                   tools=weather_and_delete())
    (seen,) = clean.llm_received()
    assert seen["provider_view"]["last"]["tools"] == ["get_weather"]
    assert not any(h.startswith("x-agent-authz-strip") for h in seen["headers"]), seen["headers"]
    decision_id = seen["headers"]["x-agent-authz-decision-id"]
    (strip,) = decisions_for(clean, decision_id, phase="strip")
    assert "delete_repo" in json.dumps(strip), strip
    assert "get_weather" not in json.dumps({k: v for k, v in strip.items() if k != "resources"}), strip


# ---------------------------------------------------------------------- 9. tools declared elsewhere
def llm_post(stack: Stack, token: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{stack.envoy_url}{path}", json=body, headers={"authorization": f"Bearer {token}"}, timeout=10)


HELLO = [{"role": "user", "content": "hi"}]
ELSEWHERE = {
    "anthropic-mcp-servers-allowed": ("/v1/messages", {
        "model": "gpt-4o-mini", "max_tokens": 10, "messages": HELLO,
        "mcp_servers": [{"type": "url", "url": "https://mcp.example.com/sse", "name": "support",
                         "tool_configuration": {"enabled": True, "allowed_tools": ["delete_repo"]}}]}),
    "anthropic-mcp-servers-unrestricted": ("/v1/messages", {
        "model": "gpt-4o-mini", "max_tokens": 10, "messages": HELLO,
        "mcp_servers": [{"type": "url", "url": "https://mcp.example.com/sse", "name": "support"}]}),
    "bedrock-additional-fields-tools": ("/model/gpt-4o-mini/converse", {
        "messages": [{"role": "user", "content": [{"text": "hi"}]}],
        "additionalModelRequestFields": {"tools": [{"type": "computer_20241022", "name": "computer",
                                                    "display_width_px": 1024, "display_height_px": 768}]}}),
    "responses-stored-prompt": ("/v1/responses", {
        "model": "gpt-4o-mini", "input": "hi", "prompt": {"id": "pmpt_abc123", "version": "2"}}),
    "responses-stored-prompt-no-model": ("/v1/responses", {"input": "hi", "prompt": {"id": "pmpt_abc123"}}),
}


@pytest.mark.parametrize("case", list(ELSEWHERE))
def test_9_tools_declared_elsewhere_are_judged_or_refused(clean, tokens, case):
    path, body = ELSEWHERE[case]
    before = len(clean.decisions())
    r = llm_post(clean, tokens["alice"], path, body)
    received = clean.llm_received()
    if received:
        (seen,) = received
        (record,) = decisions_for(clean, seen["headers"]["x-agent-authz-decision-id"], phase="request")
        judged = {res["id"] for res in record["resources"] if res.get("effect") == "allow"}
        for view in ("last", "first"):
            visible = seen["provider_view"][view]
            assert not visible["references"], f"{case}: forwarded with {visible['references']} nobody judged"
            for tool in visible["tools"]:
                assert tool.split(":", 1)[-1] in judged, f"{case}: the provider sees {tool}, judged {judged}"
    else:
        assert 400 <= r.status_code < 500, f"{case}: {r.status_code}"
        assert r.text.strip(), f"{case}: a refusal says why"
        record = clean.wait_for_request_decision(path, after=before)
        assert record["effect"] == "deny", record


def test_9_a_model_the_principal_may_not_invoke_cannot_be_fetched(clean, tokens):
    headers = {"authorization": f"Bearer {tokens['alice']}"}
    r = httpx.get(f"{clean.llm_base_url}/models/gpt-4o", headers=headers, timeout=10)
    assert r.status_code == 403, r.text[:200]
    assert clean.llm_received() == [], "the refused model lookup never reached the provider"
    r = httpx.get(f"{clean.llm_base_url}/models/gpt-4o-mini", headers=headers, timeout=10)
    assert r.status_code == 200 and r.json()["id"] == "gpt-4o-mini", r.text[:200]
