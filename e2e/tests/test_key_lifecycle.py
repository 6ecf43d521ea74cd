"""Signing keys through rotations, outages and odd tokens, through the real Envoy and Cerbos.

- A JWKS URL that fails does not cost the running keys on a reload (SIGHUP or a config change),
  and a SIGHUP storm does not become a fetch storm.
- A JWKS file is watched: a removed (revoked) key stops verifying within seconds, with no
  reload, also when Kubernetes swaps the ConfigMap's `..data` symlink.
- Stricter claims: `iss` as an array, a `crit` header, a claim nested too deep and a non-JWT
  bearer are all 401 with a reason.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import jwt as pyjwt
import pytest
import yaml
from cryptography.hazmat.primitives import serialization

from stack import ISSUER, KID, Stack, jwk_for, new_rsa_key

CHAT_BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}


def chat(stack: Stack, token: str) -> httpx.Response:
    return httpx.post(
        f"{stack.llm_base_url}/chat/completions",
        json=CHAT_BODY,
        headers={"authorization": f"Bearer {token}"},
        timeout=10,
    )


def eventually(predicate, timeout: float = 8.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


class JwksEndpoint:
    """A loopback JWKS URL that can start failing; counts the fetches it receives."""

    def __init__(self, document: dict) -> None:
        self.document = document
        self.failing = False
        self.fetches = 0
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                endpoint.fetches += 1
                if endpoint.failing:
                    self.send_response(500)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                body = json.dumps(endpoint.document).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def sighup(stack: Stack) -> None:
    os.kill(stack.procs["agent_authz"].popen.pid, signal.SIGHUP)


def test_a_reload_while_the_jwks_url_fails_keeps_the_keys_and_sighup_storms_do_not_fetch():
    key = new_rsa_key()
    endpoint = JwksEndpoint({"keys": [jwk_for(key)]})
    stack = Stack(
        name="keys-reload",
        authz_overrides={
            "server": {"config_reload_interval": "200ms"},
            "identity": {"jwt": {"jwks": {"file": None, "url": endpoint.url}}},
        },
    )
    stack.key = key
    try:
        with stack:
            token = stack.token_for("alice")
            assert chat(stack, token).status_code == 200
            endpoint.failing = True
            fetches = endpoint.fetches
            # A SIGHUP storm while the identity provider fails.
            for _ in range(20):
                sighup(stack)
                time.sleep(0.05)
            # And a real configuration change.
            config_path = stack.dir / "agent-authz.yaml"
            config = yaml.safe_load(config_path.read_text())
            config["denied_tools_response_header"] = True
            config_path.write_text(yaml.safe_dump(config, sort_keys=False))
            assert eventually(
                lambda: stack.log_path("agent_authz").read_text().count("configuration reloaded") >= 2
            ), stack.log_tail("agent_authz")
            for _ in range(5):
                r = chat(stack, token)
                assert r.status_code == 200, r.text
            # Reloads reuse the running keys: at most one rate-limited refresh, not one per
            # signal (the periodic refresh is 5 min away).
            assert endpoint.fetches - fetches <= 2, endpoint.fetches - fetches
    finally:
        endpoint.close()


def write_jwks(path: Path, *keys) -> None:
    path.write_text(json.dumps({"keys": [jwk_for(k, kid) for k, kid in keys]}))


def test_a_key_removed_from_the_jwks_file_stops_verifying_without_a_reload():
    with Stack(name="keys-file") as stack:
        token = stack.token_for("alice")
        assert chat(stack, token).status_code == 200
        assert chat(stack, token).status_code == 200  # now remembered as verified
        new_key = new_rsa_key()
        # Revoke the stack's key, publish a new one (written atomically, as editors and
        # ConfigMaps do).
        tmp = stack.jwks_path.with_suffix(".tmp")
        write_jwks(tmp, (new_key, "rotated-1"))
        tmp.replace(stack.jwks_path)
        assert eventually(lambda: chat(stack, token).status_code == 401), "revoked key still verifies"
        r = chat(stack, token)
        assert "unknown signing key" in r.headers["www-authenticate"], r.headers
        fresh = stack.token_for("alice", key=new_key, kid="rotated-1")
        assert chat(stack, fresh).status_code == 200
        assert "JWKS file changed; keys replaced" in stack.log_tail("agent_authz", 200)


def test_a_kubernetes_configmap_symlink_swap_of_the_jwks_is_picked_up():
    stack = Stack(name="keys-configmap")
    # The layout kubelet writes: jwks.json -> ..data/jwks.json, ..data -> ..<timestamp>/.
    mount = stack.dir / "configmap"
    (mount / "..v1").mkdir(parents=True)
    write_jwks(mount / "..v1" / "jwks.json", (stack.key, KID))
    os.symlink("..v1", mount / "..data")
    os.symlink("..data/jwks.json", mount / "jwks.json")
    stack.authz_overrides = {"identity": {"jwt": {"jwks": {"file": str(mount / "jwks.json")}}}}
    with stack:
        token = stack.token_for("alice")
        assert chat(stack, token).status_code == 200
        new_key = new_rsa_key()
        (mount / "..v2").mkdir()
        write_jwks(mount / "..v2" / "jwks.json", (new_key, "rotated-1"))
        os.symlink("..v2", mount / "..data_tmp")
        os.replace(mount / "..data_tmp", mount / "..data")
        assert eventually(lambda: chat(stack, token).status_code == 401), "revoked key still verifies"
        assert chat(stack, stack.token_for("alice", key=new_key, kid="rotated-1")).status_code == 200


def signed(stack: Stack, header: dict, claims: dict) -> str:
    """A token with exactly this header and these claims (PyJWT's claim checks bypassed),
    signed with the stack's key (RS256)."""
    pem = stack.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return pyjwt.PyJWS().encode(json.dumps(claims).encode(), pem, algorithm="RS256", headers=header)


@pytest.fixture(scope="module")
def keys_stack():
    with Stack(name="keys-claims") as s:
        yield s


def alice_claims(**extra) -> dict:
    now = int(time.time())
    claims = {
        "iss": ISSUER, "aud": "agent-gateway", "sub": "alice", "iat": now, "exp": now + 300,
        "roles": ["support"], "allowed_models": ["gpt-4o-mini"],
    }
    claims.update(extra)
    return claims


def assert_401(stack: Stack, token: str, reason: str) -> None:
    r = chat(stack, token)
    assert r.status_code == 401, (r.status_code, r.text)
    assert reason in r.headers["www-authenticate"], r.headers["www-authenticate"]
    assert stack.llm_received() == []


def test_iss_as_an_array_is_refused(keys_stack):
    keys_stack.llm_reset()
    assert chat(keys_stack, signed(keys_stack, {"kid": KID}, alice_claims())).status_code == 200
    keys_stack.llm_reset()
    assert_401(keys_stack, signed(keys_stack, {"kid": KID}, alice_claims(iss=[ISSUER])), "iss")


def test_a_crit_header_naming_an_unimplemented_extension_is_refused(keys_stack):
    keys_stack.llm_reset()
    token = signed(keys_stack, {"kid": KID, "crit": ["exp-policy"], "exp-policy": 1}, alice_claims())
    assert_401(keys_stack, token, "critical header extension")


def test_a_claim_nested_too_deep_is_a_bad_token_not_a_policy_outage(keys_stack):
    keys_stack.llm_reset()
    deep: object = "x"
    for _ in range(100):
        deep = {"a": deep}
    assert_401(keys_stack, signed(keys_stack, {"kid": KID}, alice_claims(profile=deep)), "nested deeper")


def test_an_api_key_is_told_a_jwt_is_expected(keys_stack):
    keys_stack.llm_reset()
    assert_401(keys_stack, "sk-live-0123456789abcdef", "JWT")
    r = chat(keys_stack, "sk-live-0123456789abcdef")
    assert "a signed JWT" in r.json()["error"]["message"], r.text
