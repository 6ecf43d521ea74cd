"""A narrated walk-through of agent-authz's three questions, with the real clients.

    .tools/venv/bin/python e2e/demo.py        (scripts/demo.sh builds and runs it)

Starts the whole stack (Envoy -> agent-authz -> Cerbos, plus a sample LLM and MCP server) and, for
each step, prints who asks for what, what the client saw, and agent-authz's decision-log line.
Exits 0 when every step got the expected decision, 1 otherwise.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import textwrap
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402
import openai  # noqa: E402
from mcp import MCPError  # noqa: E402

from clients import find_mcp_error, mcp_client, openai_client  # noqa: E402
from litellm_proxy import litellm_mcp_client, litellm_proxy  # noqa: E402
from stack import MCP_SERVER_NAME, PRINCIPALS, Stack, StackError, missing_binaries  # noqa: E402

COLOR = sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def paint(text: str, code: str) -> str:
    return f"\033[{code}m{text}\033[0m" if COLOR else text


def bold(text: str) -> str:
    return paint(text, "1")


def effect_label(effect: str) -> str:
    return paint(effect.upper(), "32;1" if effect == "allow" else "31;1")


@dataclass
class Step:
    title: str
    who: str
    what: str
    expect: str  # "allow" | "deny"
    run: Callable[[Stack], str]  # returns what the client saw
    # Picks the decision that answers this step among those logged while it ran.
    pick: Callable[[dict], bool]
    # Extra evidence from the upstreams: (as expected?, what was seen).
    check: Callable[[Stack], tuple[bool, str]] | None = None


HELLO = [{"role": "user", "content": "Hello!"}]


def tool(name: str) -> dict:
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": {}}}}


def chat(who: str, model: str, tools: list[str] | None = None) -> Callable[[Stack], str]:
    def run(stack: Stack) -> str:
        client = openai_client(stack.llm_base_url, stack.token_for(who))
        kwargs: dict[str, Any] = {"model": model, "messages": HELLO}
        if tools:
            kwargs["tools"] = [tool(t) for t in tools]
        try:
            raw = client.chat.completions.with_raw_response.create(**kwargs)
            completion = raw.parse()
            return f"openai SDK -> HTTP {raw.status_code}, reply {completion.choices[0].message.content!r}"
        except openai.APIStatusError as e:
            return f"openai SDK -> HTTP {e.status_code}, {type(e).__name__}: {e.body.get('message') if isinstance(e.body, dict) else e.message}"

    return run


def model_calls(who: str, calls: list[dict], seen: dict) -> Callable[[Stack], str]:
    """A chat whose (fake) model answers by calling `calls`; what the agent's SDK got lands in
    `seen["calls"]`."""
    def run(stack: Stack) -> str:
        mode = f"{stack.llm_direct_url}/_mode"
        httpx.post(mode, json={"tool_calls": calls}, timeout=5).raise_for_status()
        try:
            client = openai_client(stack.llm_base_url, stack.token_for(who))
            message = client.chat.completions.create(model="gpt-4o-mini", messages=HELLO).choices[0].message
        finally:
            httpx.post(mode, json={}, timeout=5).raise_for_status()
        seen["calls"] = [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or []]
        return "openai SDK -> tool calls " + (", ".join(f"{n}({json.dumps(a)})" for n, a in seen["calls"]) or "none")

    return run


def agent_got(seen: dict, expected: list[str]) -> Callable[[Stack], tuple[bool, str]]:
    def check(stack: Stack) -> tuple[bool, str]:
        names = [name for name, _ in seen.get("calls", [])]
        return names == expected, f"the agent received the calls {names}"

    return check


INJECTED: dict = {}


def mcp_call(who: str, name: str, arguments: dict) -> Callable[[Stack], str]:
    def run(stack: Stack) -> str:
        async def go() -> str:
            async with mcp_client(stack.mcp_url, stack.token_for(who)) as client:
                try:
                    result = await client.call_tool(name, arguments)
                except MCPError as e:
                    return f"mcp SDK -> call_tool raised MCPError {e.code}: {e.message}"
                return f"mcp SDK -> result {result.content[0].text!r}"

        return asyncio.run(go())

    return run


# LiteLLM (~10 s to start) runs only for the last section: started by its first step, stopped by main().
LITELLM = ExitStack()
LITELLM_PORT: dict = {}


def litellm_mcp_call(who: str, name: str, arguments: dict) -> Callable[[Stack], str]:
    def run(stack: Stack) -> str:
        if "port" not in LITELLM_PORT:
            LITELLM_PORT["port"] = LITELLM.enter_context(litellm_proxy(stack))

        async def go() -> str:
            async with litellm_mcp_client(f"http://127.0.0.1:{LITELLM_PORT['port']}/mcp", stack.token_for(who)) as client:
                result = await client.call_tool(f"{MCP_SERVER_NAME}-{name}", arguments)
            return f"mcp SDK via LiteLLM -> {'error' if result.is_error else 'result'} {result.content[0].text!r}"

        return asyncio.run(go())

    return run


def mcp_connect(who: str) -> Callable[[Stack], str]:
    def run(stack: Stack) -> str:
        async def go() -> str:
            async with mcp_client(stack.mcp_url, stack.token_for(who)) as client:
                tools = await client.list_tools()
                return f"mcp SDK -> connected ({client.protocol_version}), tools: {', '.join(t.name for t in tools.tools)}"

        try:
            return asyncio.run(go())
        except BaseException as e:  # the SDK wraps the error in exception groups
            err = find_mcp_error(e)
            if err is None:
                raise
            return f"mcp SDK -> connect raised MCPError {err.code}: {err.message}"

    return run


def no_token(stack: Stack) -> str:
    r = httpx.post(f"{stack.llm_base_url}/chat/completions", json={"model": "gpt-4o-mini", "messages": HELLO})
    return f"HTTP {r.status_code}, WWW-Authenticate: {r.headers.get('www-authenticate')}, {r.json()['error']['message']}"


def has_action(action: str) -> Callable[[dict], bool]:
    return lambda d: any(r.get("action") == action for r in d.get("resources") or [])


def has_resource(kind: str, rid: str) -> Callable[[dict], bool]:
    return lambda d: any(r.get("kind") == kind and r.get("id") == rid for r in d.get("resources") or [])


def executed(tool_name: str, arguments: dict, should: bool) -> Callable[[Stack], tuple[bool, str]]:
    def check(stack: Stack) -> tuple[bool, str]:
        ran = {"tool": tool_name, "arguments": arguments} in stack.mcp_executions()
        return ran == should, f"MCP server execution log: {tool_name} {'executed' if ran else 'never executed'}"

    return check


def upstream_saw(model: str, should: bool) -> Callable[[Stack], tuple[bool, str]]:
    def check(stack: Stack) -> tuple[bool, str]:
        seen = [json.loads(r["body"]).get("model") for r in stack.llm_received() if r["path"].startswith("/v1/chat")]
        stack.llm_reset()
        got = model in seen
        return got == should, f"LLM upstream {'received' if got else 'never received'} the request"

    return check


def upstream_tools(expected: list[str]) -> Callable[[Stack], tuple[bool, str]]:
    """The tools the LLM upstream actually received (after ext_proc stripped the denied ones)."""

    def check(stack: Stack) -> tuple[bool, str]:
        bodies = [json.loads(r["body"]) for r in stack.llm_received() if r["path"].startswith("/v1/chat")]
        stack.llm_reset()
        got = [t["function"]["name"] for b in bodies for t in b.get("tools", [])]
        return got == expected, f"LLM upstream received tools {got} (the model never saw the others)"

    return check


def listed_tools(who: str, expected: list[str]) -> Callable[[Stack], tuple[bool, str]]:
    """What a tools/list through the gateway shows this principal."""

    def check(stack: Stack) -> tuple[bool, str]:
        async def go() -> list[str]:
            async with mcp_client(stack.mcp_url, stack.token_for(who)) as client:
                return sorted(t.name for t in (await client.list_tools()).tools)

        got = asyncio.run(go())
        return got == expected, f"tools/list shows {who} {got}; the server has delete_repo too"

    return check


POLICY_EDIT = """    - name: demo-edit-gpt-4o-for-support
      actions: [invoke]
      effect: EFFECT_ALLOW
      roles: [support]
      condition:
        match:
          expr: R.id == "gpt-4o"

"""


def edit_policy_then_chat(who: str, model: str) -> Callable[[Stack], str]:
    """Deploys a policy change (an edited file in the folder Cerbos watches), then asks again
    until Cerbos has reloaded it (bounded): no gateway restart, no gateway configuration."""

    def run(stack: Stack) -> str:
        path = stack.policies_dir / "llm_model.yaml"
        text = path.read_text()
        path.write_text(text.replace("  rules:\n", "  rules:\n" + POLICY_EDIT, 1))
        print(f"    deploy   : added rule demo-edit-gpt-4o-for-support to {path.name} (Cerbos watches the folder)")
        deadline = time.monotonic() + 15
        while True:
            stack.llm_reset()
            r = httpx.post(f"{stack.llm_base_url}/chat/completions", json={"model": model, "messages": HELLO},
                           headers={"authorization": f"Bearer {stack.token_for(who)}"})
            if r.status_code == 200 or time.monotonic() > deadline:
                return f"HTTP {r.status_code} after the policy edit, same gateway process"
            time.sleep(0.3)

    return run


def nothing_reached(stack: Stack) -> tuple[bool, str]:
    reached = stack.llm_received()
    stack.llm_reset()
    return not reached, ("a request REACHED the LLM upstream" if reached else "nothing reached the LLM upstream")


SECTIONS: list[tuple[str, list[Step]]] = [
    (
        "Question 1 - which models may this principal call?",
        [
            Step("allowed model", "alice", "a chat completion from gpt-4o-mini", "allow",
                 chat("alice", "gpt-4o-mini"), has_resource("llm_model", "gpt-4o-mini"),
                 upstream_saw("gpt-4o-mini", True)),
            Step("model outside allowed_models", "alice", "a chat completion from gpt-4o", "deny",
                 chat("alice", "gpt-4o"), has_resource("llm_model", "gpt-4o"), upstream_saw("gpt-4o", False)),
            Step("same model, different principal", "bob", "a chat completion from gpt-4o", "allow",
                 chat("bob", "gpt-4o"), has_resource("llm_model", "gpt-4o"), upstream_saw("gpt-4o", True)),
        ],
    ),
    (
        "Question 2 - which tools may the model ever see?",
        [
            Step("allowed tools", "alice", "gpt-4o-mini, declaring tools get_weather and lookup_ticket", "allow",
                 chat("alice", "gpt-4o-mini", ["get_weather", "lookup_ticket"]),
                 has_resource("llm_tool", "get_weather"), upstream_saw("gpt-4o-mini", True)),
            Step("a dangerous tool, silently stripped", "alice",
                 "gpt-4o-mini, declaring tools get_weather, delete_repo and run_shell", "allow",
                 chat("alice", "gpt-4o-mini", ["get_weather", "delete_repo", "run_shell"]),
                 has_resource("llm_tool", "delete_repo"), upstream_tools(["get_weather"])),
        ],
    ),
    (
        "Question 3 - what may the caller do with a tool, with these arguments?",
        [
            Step("connect", "alice", "to connect to the support MCP server and list its tools", "allow",
                 mcp_connect("alice"), has_action("connect"),
                 listed_tools("alice", ["lookup_ticket", "refund"])),
            Step("refund within bounds", "alice", "refund(ticket_id='T-100', amount_cents=5000)", "allow",
                 mcp_call("alice", "refund", {"ticket_id": "T-100", "amount_cents": 5000}),
                 has_action("tools/call/refund"),
                 executed("refund", {"ticket_id": "T-100", "amount_cents": 5000}, True)),
            Step("refund over her limit", "alice", "refund(ticket_id='T-100', amount_cents=200000)", "deny",
                 mcp_call("alice", "refund", {"ticket_id": "T-100", "amount_cents": 200000}),
                 has_action("tools/call/refund"),
                 executed("refund", {"ticket_id": "T-100", "amount_cents": 200000}, False)),
            Step("refund on someone else's ticket", "alice", "refund(ticket_id='T-999', amount_cents=10)", "deny",
                 mcp_call("alice", "refund", {"ticket_id": "T-999", "amount_cents": 10}),
                 has_action("tools/call/refund"),
                 executed("refund", {"ticket_id": "T-999", "amount_cents": 10}, False)),
            Step("a prompt-injected refund in the model's answer, withheld", "alice",
                 "gpt-4o-mini, whose answer calls refund(ticket_id='T-999', amount_cents=999999) and get_weather",
                 "deny",
                 model_calls("alice", [{"name": "refund", "arguments": {"ticket_id": "T-999", "amount_cents": 999999}},
                                       {"name": "get_weather", "arguments": {"city": "Paris"}}], INJECTED),
                 lambda d: d.get("phase") == "response", agent_got(INJECTED, ["get_weather"])),
            Step("a guest", "mallory", "to connect to the support MCP server", "deny",
                 mcp_connect("mallory"), has_action("connect")),
        ],
    ),
    (
        "Rules live in policy: a policy deployment changes the answer, the gateway is untouched",
        [
            Step("policy edit", "alice", "gpt-4o again, after a rule granting support gpt-4o is deployed", "allow",
                 edit_policy_then_chat("alice", "gpt-4o"), lambda d: any(
                     r.get("id") == "gpt-4o" and r.get("effect") == "allow" for r in d.get("resources") or []),
                 upstream_saw("gpt-4o", True)),
        ],
    ),
    (
        "Identity - no valid token, no entry",
        [
            Step("no token", "(anonymous)", "a chat completion without a bearer token", "deny",
                 no_token, lambda d: d.get("principal") in (None, {}), nothing_reached),
        ],
    ),
    (
        "LiteLLM's MCP gateway - agent-authz between LiteLLM and the MCP server",
        [
            Step("refund within bounds, through LiteLLM", "alice",
                 "support-refund(ticket_id='T-100', amount_cents=2500) via LiteLLM's /mcp", "allow",
                 litellm_mcp_call("alice", "refund", {"ticket_id": "T-100", "amount_cents": 2500}),
                 has_action("tools/call/refund"),
                 executed("refund", {"ticket_id": "T-100", "amount_cents": 2500}, True)),
            Step("refund over her limit, through LiteLLM", "alice",
                 "support-refund(ticket_id='T-100', amount_cents=150000) via LiteLLM's /mcp", "deny",
                 litellm_mcp_call("alice", "refund", {"ticket_id": "T-100", "amount_cents": 150000}),
                 has_action("tools/call/refund"),
                 executed("refund", {"ticket_id": "T-100", "amount_cents": 150000}, False)),
        ],
    ),
]


def describe_principal(name: str) -> str:
    claims = PRINCIPALS.get(name)
    if claims is None:
        return name
    extras = ", ".join(f"{k}={v}" for k, v in claims.items() if k != "roles")
    return f"{name} (roles {claims['roles']}{'; ' + extras if extras else ''})"


def format_decision(d: dict) -> list[str]:
    principal = (d.get("principal") or {}).get("id", "-")
    lines = [
        f"{effect_label(d.get('effect', '?'))}  decision {d.get('decision_id')}  principal={principal}"
        + (f"  http={d['status']}" if "status" in d else "")
    ]
    for r in d.get("resources") or []:
        args = r.get("attr", {}).get("arguments")
        lines.append(
            f"  {r.get('kind')}/{r.get('id')}  action={r.get('action')}  effect={r.get('effect')}"
            f"  policy={r.get('policy')}" + (f"  arguments={json.dumps(args)}" if args is not None else "")
        )
    lines.append(f"  reason: {d.get('reason')}")
    return lines


def run_step(stack: Stack, number: int, step: Step) -> bool:
    print(f"\n{bold(f'[{number}] {step.title}')}")
    print(f"    who      : {describe_principal(step.who)}")
    print(f"    asks for : {step.what}")
    before = len(stack.decisions())
    try:
        outcome = step.run(stack)
    except Exception as e:  # a step that blows up is a failed step, not a crashed demo
        outcome = f"client error: {type(e).__name__}: {e}"
    print(f"    client   : {outcome}")
    try:
        decision = stack.wait_for_decision(step.pick, after=before, timeout=5)
    except AssertionError:
        decision = None
    ok = decision is not None and decision.get("effect") == step.expect
    if decision is None:
        print("    decision : (no matching decision-log line)")
    else:
        for i, line in enumerate(format_decision(decision)):
            print(f"    {'decision :' if i == 0 else '          '} {line}")
        others = len(stack.decisions()) - before - 1
        if others > 0:
            print(f"               (+{others} more decision(s) for the session's other messages)")
    if step.check is not None:
        as_expected, evidence = step.check(stack)
        ok = ok and as_expected
        print(f"    evidence : {evidence}" + ("" if as_expected else paint("  <- unexpected", "31;1")))
    verdict = paint("as expected", "32") if ok else paint(f"UNEXPECTED (expected {step.expect})", "31;1")
    print(f"    result   : expected {step.expect.upper()} -> {verdict}")
    return ok


def main() -> int:
    missing = missing_binaries()
    if missing:
        print("cannot start the demo; missing: " + "; ".join(missing), file=sys.stderr)
        return 2
    print(bold("agent-authz demo: Envoy -> agent-authz (ext_authz) -> Cerbos, in front of an LLM API and an MCP server"))
    print("starting Cerbos, the sample upstreams, agent-authz and Envoy ...")
    try:
        stack = Stack(name="demo", copy_policies=True).__enter__()
    except StackError as e:
        print(f"the stack did not start:\n{e}", file=sys.stderr)
        return 2
    results = []
    try:
        print(f"gateway at {stack.envoy_url}  (logs in {stack.dir})")
        stack.llm_reset()
        number = 0
        for heading, steps in SECTIONS:
            print("\n" + bold(paint(f"== {heading} ==", "36")))
            for step in steps:
                number += 1
                results.append((number, step, run_step(stack, number, step)))
    finally:
        LITELLM.close()
        stack.__exit__(None, None, None)
    failed = [(n, s) for n, s, ok in results if not ok]
    print()
    if failed:
        print(paint(f"{len(failed)} of {len(results)} steps did not get the expected decision:", "31;1"))
        for n, s in failed:
            print(f"  [{n}] {s.title}")
        return 1
    print(paint(f"All {len(results)} steps got the expected decision.", "32;1"))
    print(textwrap.dedent("""
        Rules live in policies/ (Cerbos); change who may do what there, not in the gateway.
        Run the tests with scripts/test.sh."""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
