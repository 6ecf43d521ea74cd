"""LiteLLM's proxy behind Envoy + agent-authz: the recipe in README ("LiteLLM behind the
gateway"). The client talks to Envoy with its JWT; agent-authz judges the OpenAI request; Envoy
removes the caller's credentials and adds the gateway's own LiteLLM key on the LLM routes; the
allowed request reaches LiteLLM, which calls the provider (the fake upstream, which records what
it parsed). Model denial and tool stripping, with both planes of evidence."""

from __future__ import annotations

import os
import subprocess
import time

import openai
import pytest
import yaml

from conftest import require_binary, require_stack_binaries
from stack import REPO, Stack, free_port, http_get, render_envoy_config, tcp_open

LITELLM = REPO / ".tools" / "litellm" / "bin" / "litellm"
LITELLM_KEY = "sk-litellm-gateway-key"  # LiteLLM's master key, known only to the gateway
TOOLS = [{"type": "function", "function": {"name": n, "parameters": {"type": "object", "properties": {}}}}
         for n in ("get_weather", "run_shell")]


@pytest.fixture(scope="module")
def gateway():
    require_stack_binaries()
    require_binary(LITELLM, "run scripts/setup.sh")
    with Stack(name="litellm") as stack:
        port = free_port()
        config = stack.dir / "litellm.yaml"
        provider = f"http://127.0.0.1:{stack.ports['llm']}/v1"
        config.write_text(yaml.safe_dump({
            "model_list": [{"model_name": m, "litellm_params": {"model": f"openai/{m}", "api_base": provider,
                                                                 "api_key": "provider-key"}}
                           for m in ("gpt-4o-mini", "gpt-4o")],
            "litellm_settings": {"telemetry": False, "drop_params": False},
            "general_settings": {"master_key": LITELLM_KEY},
        }))
        log = stack.dir / "litellm.log"
        env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_TELEMETRY="False",
                   NO_DOCS="True", DISABLE_ADMIN_UI="True")
        proc = subprocess.Popen([str(LITELLM), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)],
                                stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while not (tcp_open(port) and http_get(f"http://127.0.0.1:{port}/health/liveliness")[0] == 200):
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.5)
            # envoy/agent-gateway.yaml with its LLM cluster pointed at LiteLLM.
            ports = {k: stack.ports[k] for k in ("authz", "authz_admin", "mcp")}
            ports.update(listener=free_port(), admin=free_port(), llm=port)
            # The gateway's LiteLLM key on every LLM route, after the caller's credentials are
            # removed (README's per-route upstream credential recipe).
            config = yaml.safe_load((REPO / "envoy" / "agent-gateway.yaml").read_text())
            hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
            for route in hcm["route_config"]["virtual_hosts"][0]["routes"]:
                if route.get("route", {}).get("cluster") == "llm_upstream":
                    route["request_headers_to_add"] = [{
                        "header": {"key": "authorization", "value": "Bearer %ENVIRONMENT(LITELLM_KEY)%"},
                        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]
            envoy = stack.dir / "envoy-litellm.yaml"
            envoy.write_text(render_envoy_config(yaml.safe_dump(config, sort_keys=False), ports, str(stack.jwks_path)))
            stack._spawn_envoy("envoy_litellm", envoy, ports["admin"], {"LITELLM_KEY": LITELLM_KEY})
            stack._wait("envoy_litellm", lambda: http_get(f"http://127.0.0.1:{ports['admin']}/ready")[0] == 200)
            yield stack, f"http://127.0.0.1:{ports['listener']}/v1"
        finally:
            os.killpg(proc.pid, 15)
            proc.wait(timeout=10)


def test_litellm_behind_the_gateway_strips_denied_tools(gateway):
    stack, url = gateway
    stack.llm_reset()
    client = openai.OpenAI(base_url=url, api_key=stack.token_for("alice"), max_retries=0, timeout=60)
    before = len(stack.decisions())
    answer = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                            tools=TOOLS)
    assert answer.choices[0].message.content == "hello from gpt-4o-mini"
    (request,) = stack.llm_received()
    assert request["parsed"]["model"] == "gpt-4o-mini"
    assert request["parsed"]["tools"] == ["get_weather"], "run_shell never reached the provider"
    assert request["headers"]["authorization"] == "Bearer provider-key", "LiteLLM's own provider key"
    decision = stack.wait_for_decision(lambda d: d.get("format") == "openai_chat", after=before)
    assert decision["denied_tools"] == ["run_shell"]


def test_litellm_behind_the_gateway_never_sees_a_denied_model(gateway):
    stack, url = gateway
    stack.llm_reset()
    client = openai.OpenAI(base_url=url, api_key=stack.token_for("alice"), max_retries=0, timeout=60)
    before = len(stack.decisions())
    with pytest.raises(openai.PermissionDeniedError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert "gpt-4o" in caught.value.message
    assert stack.llm_received() == []
    decision = stack.wait_for_decision(lambda d: d.get("format") == "openai_chat", after=before)
    assert decision["effect"] == "deny"
