"""Fixtures for the end-to-end suite: one real stack (Envoy + agent-authz + Cerbos + upstreams)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stack import PRINCIPALS, Stack, missing_binaries  # noqa: E402


def require_stack_binaries() -> None:
    """Under CI a missing binary is a failure; elsewhere the suite is skipped, loudly."""
    missing = missing_binaries()
    if missing:
        missing_is_fatal_under_ci("end-to-end stack cannot start; missing: " + "; ".join(missing))


def require_binary(path: Path, hint: str) -> None:
    if not path.exists():
        missing_is_fatal_under_ci(f"missing {path} ({hint})")


def missing_is_fatal_under_ci(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    sys.stderr.write(f"\n*** SKIPPING END-TO-END TESTS: {message} ***\n")
    pytest.skip(f"*** {message} ***")


@pytest.fixture(scope="session")
def stack():
    require_stack_binaries()
    with Stack(name="e2e") as s:
        yield s


@pytest.fixture(scope="session")
def tokens(stack):
    """A valid token for each demo principal (alice, bob, mallory, root)."""
    return {name: stack.token_for(name) for name in PRINCIPALS}


@pytest.fixture
def clean(stack):
    """Clears the LLM upstream's record before the test; yields the stack."""
    stack.llm_reset()
    return stack


def pytest_report_header(config):
    missing = missing_binaries()
    if missing:
        return [f"e2e: MISSING BINARIES -> {'; '.join(missing)}"]
    return ["e2e: Envoy, Cerbos and agent-authz binaries found"]


def pytest_terminal_summary(terminalreporter):
    """The differential tests' variant counts (e2e/tests/test_variants.py), in every run's output."""
    receivers = sys.modules.get("receivers")
    counts = getattr(receivers, "VARIANT_COUNTS", None)
    if counts:
        total = sum(counts.values())
        parts = ", ".join(f"{name} {n}" for name, n in sorted(counts.items()))
        terminalreporter.write_line(f"differential variants tried: {total} ({parts})")
