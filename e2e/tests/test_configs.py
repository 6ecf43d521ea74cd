"""The shipped configuration files are valid for the real binaries."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stack import (  # noqa: E402
    REPO,
    TOOLS_BIN,
    agent_authz_binary,
    default_authz_config,
    jwk_for,
    new_rsa_key,
    render_envoy_config,
)
from conftest import require_binary  # noqa: E402

ENVOY_FILES = sorted((REPO / "envoy").glob("*.yaml"))


def need(path: Path) -> None:
    require_binary(path, "run scripts/setup.sh, and cargo build for agent-authz")


def test_there_are_envoy_configs():
    names = {p.name for p in ENVOY_FILES}
    assert {"agent-gateway.yaml", "agent-gateway-jwt-authn.yaml"} <= names


@pytest.mark.parametrize("path", ENVOY_FILES, ids=lambda p: p.name)
def test_envoy_config_validates(path, tmp_path):
    need(TOOLS_BIN / "envoy")
    import json

    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [jwk_for(new_rsa_key())]}))
    # Validate the file as shipped (ports unchanged); only the JWKS path points at a real file.
    rendered = path.read_text().replace("/etc/agent-authz/jwks.json", str(jwks))
    config = tmp_path / path.name
    config.write_text(rendered)
    result = subprocess.run(
        [str(TOOLS_BIN / "envoy"), "--mode", "validate", "-c", str(config)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "OK" in (result.stdout + result.stderr)


def test_rendered_envoy_ports_are_all_substituted():
    ports = {"listener": 1, "admin": 2, "authz": 3, "authz_admin": 6, "llm": 4, "mcp": 5}
    for path in ENVOY_FILES:
        rendered = render_envoy_config(path.read_text(), ports, "/tmp/x.json")
        for original in ("10000", "9901", "9191", "9192", "8081", "8082"):
            assert f"port_value: {original}" not in rendered


def test_cerbos_policies_compile_and_their_tests_pass():
    need(TOOLS_BIN / "cerbos")
    result = subprocess.run(
        [str(TOOLS_BIN / "cerbos"), "compile", "--no-color", str(REPO / "policies")],
        capture_output=True, text=True, timeout=120, env={"CERBOS_NO_TELEMETRY": "1", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "FAILED" not in result.stdout
    assert "tests executed" in result.stdout


@pytest.mark.parametrize("source", ["jwt", "envoy_jwt_authn"])
def test_agent_authz_accepts_the_config_the_stack_writes(source, tmp_path):
    need(agent_authz_binary())
    config = default_authz_config()
    if source == "jwt":
        jwks = tmp_path / "jwks.json"
        jwks.write_text('{"keys": []}')
        config["identity"]["jwt"]["jwks"]["file"] = str(jwks)
    else:
        config["identity"]["source"] = source
        del config["identity"]["jwt"]
    path = tmp_path / "agent-authz.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [str(agent_authz_binary()), "validate", "--config", str(path)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_agent_authz_rejects_unknown_keys(tmp_path):
    need(agent_authz_binary())
    config = default_authz_config()
    config["identity"]["jwt"]["jwks"]["file"] = str(tmp_path / "jwks.json")
    config["denied_tool"] = "reject"  # typo
    path = tmp_path / "agent-authz.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [str(agent_authz_binary()), "validate", "--config", str(path)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode != 0
    assert "denied_tool" in (result.stdout + result.stderr)
