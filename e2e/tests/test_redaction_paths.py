"""Redaction paths with array steps and quoted keys, through the real Envoy and Cerbos.

`audit.mask` / `audit.drop` reach into arrays (`items[*].pan`, and a key step meeting an array
applies to each element) and name keys holding dots (`"card.number"`). The masked values appear
nowhere agent-authz sends data: its decision log, the decision console, its diagnostics at
RUST_LOG=debug, Envoy's logs (metadata), Cerbos' audit log (what Cerbos received) and the error
message the client gets.
A path that does not parse is refused at start.
"""

from __future__ import annotations

import json
import os
import subprocess

import httpx
import pytest
import yaml

from stack import Stack, agent_authz_binary, free_port

PANS = ["4111111111111111", "5500005555555559"]
HOLDER = "Alice Holder"
CARD = "378282246310005"
# Not four bare digits: every secret is searched for as a substring of logs and pages, and
# "7319" also turned up inside a timing ("cerbos_ms":1.673193). Masking is by path, not value.
CVV = "cvv-7319"
EMAIL = "alice@secret.example"
IBAN = "GB33BUKB20201555555555"

MASK = ["arguments.items[*].pan", 'arguments."card.number"', "arguments.order.lines.cvv",
        'claims."https://example.com/email"', "claims.accounts[*].iban"]
DROP = ["arguments.items[*].holder"]


@pytest.fixture(scope="module")
def redacting():
    from conftest import require_stack_binaries

    require_stack_binaries()
    saved = os.environ.get("RUST_LOG")
    os.environ["RUST_LOG"] = "debug"  # every diagnostic agent-authz can write
    try:
        with Stack(name="redaction", authz_overrides={"audit": {"mask": MASK, "drop": DROP}}) as s:
            yield s
    finally:
        if saved is None:
            os.environ.pop("RUST_LOG", None)
        else:
            os.environ["RUST_LOG"] = saved


def refund(stack: Stack, token: str, call_id: int, cents: int) -> httpx.Response:
    arguments = {
        "ticket_id": "T-100",
        "amount_cents": cents,
        "items": [{"pan": PANS[0], "holder": HOLDER, "sku": "A-1"}, {"pan": PANS[1], "sku": "B-2"}],
        "card.number": CARD,
        "order": {"lines": [{"cvv": CVV, "qty": 1}]},
    }
    body = {"jsonrpc": "2.0", "id": call_id, "method": "tools/call", "params": {"name": "refund", "arguments": arguments}}
    return httpx.post(
        stack.mcp_url,
        json=body,
        headers={
            "authorization": f"Bearer {token}",
            "accept": "application/json, text/event-stream",
            "mcp-protocol-version": "2025-11-25",
        },
        timeout=10,
    )


def secrets() -> list[str]:
    return [*PANS, HOLDER, CARD, CVV, EMAIL, IBAN]


def test_array_and_quoted_paths_are_redacted_everywhere(redacting):
    token = redacting.token_for(
        "alice",
        **{"https://example.com/email": EMAIL, "accounts": [{"iban": IBAN, "currency": "GBP"}]},
    )
    before = len(redacting.decisions())
    denied = refund(redacting, token, 41, 200000)
    assert denied.status_code == 200 and denied.json()["error"]["code"] == 403, denied.text
    # Allowed by policy (the MCP server then wants a session; what matters is what we logged).
    refund(redacting, token, 42, 500)

    # The decision log holds the redacted shapes (so the paths did match).
    deny = redacting.wait_for_decision(lambda d: d.get("path") == "/mcp" and d.get("effect") == "deny", after=before)
    redacting.wait_for_decision(lambda d: d.get("path") == "/mcp" and d.get("effect") == "allow", after=before)
    (resource,) = [r for r in deny["resources"] if r["action"] == "tools/call/refund"]
    args = resource["attr"]["arguments"]
    assert args["items"] == [{"pan": "****", "sku": "A-1"}, {"pan": "****", "sku": "B-2"}]
    assert args["card.number"] == "****"
    assert args["order"] == {"lines": [{"cvv": "****", "qty": 1}]}
    attr = deny["principal"]["attr"]
    assert attr["https://example.com/email"] == "****"
    assert attr["accounts"] == [{"iban": "****", "currency": "GBP"}]

    # What Cerbos received, as its audit log recorded it.
    audits = [a for a in redacting.cerbos_audit() if a.get("callId") in deny["cerbos_call_ids"]]
    assert audits, "no Cerbos audit entry for the call"
    (cerbos_input,) = audits[-1]["checkResources"]["inputs"]
    assert cerbos_input["resource"]["attr"]["arguments"]["items"][0] == {"pan": "****", "sku": "A-1"}
    assert cerbos_input["principal"]["attr"]["https://example.com/email"] == "****"

    # The decision console (the admin listener's API), as an auditor reads it.
    console = f"http://127.0.0.1:{redacting.ports['authz_admin']}/api/v1"
    auditor = {"authorization": f"Bearer {redacting.mint_token('audrey', ['auditor'])}"}
    listed = httpx.get(f"{console}/decisions", params={"principal": "alice"}, headers=auditor, timeout=10)
    assert listed.status_code == 200, listed.text
    assert any(d["decision_id"] == deny["decision_id"] for d in listed.json()["decisions"]), listed.text
    one = httpx.get(f"{console}/decisions/{deny['decision_id']}", headers=auditor, timeout=10)
    assert one.status_code == 200, one.text

    places = {
        "the decision console": listed.text + one.text,
        "the client's error message": denied.text,
        "the decision log": redacting.procs["agent_authz"].stdout_log.read_text(),
        "agent-authz diagnostics (RUST_LOG=debug)": redacting.log_path("agent_authz").read_text(),
        "Envoy's logs (metadata, access log)": redacting.log_path("envoy").read_text(),
        "Cerbos' audit log": json.dumps(redacting.cerbos_audit()),
    }
    assert "DEBUG" in places["agent-authz diagnostics (RUST_LOG=debug)"], "debug logging was on"
    for place, text in places.items():
        for secret in secrets():
            assert secret not in text, f"{secret} in {place}"


@pytest.mark.parametrize(
    "path",
    ["arguments.items[x].pan", 'arguments."card.number', "arguments.items[*]pan", "arguments..cvv", "card_number"],
)
def test_a_path_that_does_not_parse_is_refused_at_start(tmp_path, path):
    refused = refuses_to_start(tmp_path, {"identity": {"source": "envoy_jwt_authn"}, "audit": {"mask": [path]}})
    assert "audit.mask[0]" in refused, refused


def test_the_raw_token_cannot_reach_cerbos_while_claims_are_masked(tmp_path):
    # auxData.jwt would carry the masked claim into Cerbos' audit log: refused at start.
    config = {
        "identity": {"source": "envoy_jwt_authn", "principal": {"pass_token_to_cerbos": True}},
        "audit": {"mask": ["claims.email"]},
    }
    refused = refuses_to_start(tmp_path, config)
    assert "identity.principal.pass_token_to_cerbos" in refused, refused


def refuses_to_start(tmp_path, config: dict) -> str:
    """Starts agent-authz on `config` (own ports); returns its stderr after it refused."""
    config = {"server": {"grpc_address": f"127.0.0.1:{free_port()}"}, "admin": {"address": None}, **config}
    file = tmp_path / "agent-authz.yaml"
    file.write_text(yaml.safe_dump(config))
    done = subprocess.run(
        [str(agent_authz_binary()), "serve", "--config", str(file)],
        capture_output=True, text=True, timeout=20,
    )
    assert done.returncode != 0, done.stderr
    return done.stderr
