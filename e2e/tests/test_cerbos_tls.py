"""Cerbos over TLS (`cerbos.address: https://...`), with the real Cerbos serving TLS on its gRPC
listener: decisions are made through the verified connection, and a PDP whose certificate does
not chain to a trusted root is never asked: every check fails closed (503) and nothing reaches
the model. agent-authz trusts the system's roots (rustls-native-certs, which honours
SSL_CERT_FILE), so each stack is given a CA of its own through SSL_CERT_FILE."""

from __future__ import annotations

import datetime
import ipaddress
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from helpers import HELLO
from stack import Stack


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(directory: Path, label: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, Path]:
    """A self-signed CA; its certificate written as PEM (the file SSL_CERT_FILE names)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"agent-authz e2e {label} CA"))
        .issuer_name(_name(f"agent-authz e2e {label} CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = directory / f"{label}-ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert, path


def make_server_cert(directory: Path, ca_key, ca_cert: x509.Certificate) -> tuple[Path, Path]:
    """Cerbos' certificate for 127.0.0.1 (an IP SAN), signed by the CA; (cert, key) paths."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("cerbos"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cerbos.pem", directory / "cerbos-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cerbos-tls")
    ca_key, ca_cert, ca_path = make_ca(directory, "cerbos")
    _, _, other_ca_path = make_ca(directory, "other")
    cert, key = make_server_cert(directory, ca_key, ca_cert)
    return {"ca": ca_path, "other_ca": other_ca_path, "cert": cert, "key": key}


def chat(stack: Stack, model: str) -> httpx.Response:
    return httpx.post(
        f"{stack.llm_base_url}/chat/completions",
        json={"model": model, "messages": HELLO},
        headers={"authorization": f"Bearer {stack.token_for('alice')}"},
        timeout=30,
    )


def test_decisions_are_made_by_cerbos_over_a_verified_tls_connection(pki):
    from conftest import require_stack_binaries

    require_stack_binaries()
    with Stack(
        name="cerbos-tls", cerbos_tls=(pki["cert"], pki["key"]), authz_env={"SSL_CERT_FILE": str(pki["ca"])}
    ) as stack:
        assert stack.authz_config["cerbos"]["address"].startswith("https://127.0.0.1:")
        before = len(stack.decisions())
        allowed = chat(stack, "gpt-4o-mini")
        assert allowed.status_code == 200, allowed.text
        record = stack.wait_for_request_decision("/v1/chat/completions", after=before)
        assert record["effect"] == "allow" and record["cerbos_call_ids"], record
        # Cerbos' own audit log holds the call: the decision was Cerbos', over TLS.
        assert wait_for(lambda: record["cerbos_call_ids"][0] in {e.get("callId") for e in stack.cerbos_audit()})
        stack.llm_reset()
        denied = chat(stack, "gpt-4o")
        assert denied.status_code == 403, denied.text
        assert "gpt-4o" in denied.text
        assert stack.llm_received() == []


def test_a_pdp_whose_certificate_is_not_trusted_is_never_asked_and_checks_fail_closed(pki):
    from conftest import require_stack_binaries

    require_stack_binaries()
    with Stack(
        name="cerbos-tls-untrusted",
        cerbos_tls=(pki["cert"], pki["key"]),
        authz_env={"SSL_CERT_FILE": str(pki["other_ca"])},
    ) as stack:
        response = chat(stack, "gpt-4o-mini")
        assert response.status_code == 503, response.text
        assert stack.llm_received() == [], "nothing may pass while the PDP cannot be verified"
        assert stack.cerbos_audit() == [], "a PDP that failed verification must not have been asked"
        status, _ = httpx_status(f"http://127.0.0.1:{stack.ports['authz_admin']}/readyz")
        assert status == 503
        assert "certificate" in stack.log_tail("agent_authz", 200).lower()


def wait_for(condition, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def httpx_status(url: str) -> tuple[int, str]:
    r = httpx.get(url, timeout=5)
    return r.status_code, r.text
