"""The decision console in a real browser (Debian's chromium driven by Playwright), against the
real stack: decisions made through Envoy show up in the console an auditor opens on
agent-authz's admin port, and nobody else sees them.

Screenshots of each view go to $CONSOLE_SCREENSHOTS when set (`docs/` refreshes the README's),
else to the test's temporary directory.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from mcp import MCPError

from clients import mcp_client
from conftest import missing_is_fatal_under_ci

CHROMIUM = Path("/usr/bin/chromium")
# Root in a container, network closed: no sandbox, no background traffic.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
HELLO = [{"role": "user", "content": "hello"}]


def tool(name: str) -> dict:
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": {}}}}


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing_is_fatal_under_ci("playwright is not installed (scripts/setup.sh installs it)")
    if not CHROMIUM.exists():
        missing_is_fatal_under_ci(f"missing {CHROMIUM} (scripts/setup.sh installs Debian's chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    target = os.environ.get("CONSOLE_SCREENSHOTS")
    path = Path(target) if target else tmp_path_factory.mktemp("console")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def console_url(stack) -> str:
    return f"http://127.0.0.1:{stack.ports['authz_admin']}/console"


@pytest.fixture(scope="module")
def driven(stack, tokens):
    """The demo's kinds of decision through Envoy: a denied model, a stripped tool, a refused
    refund with its arguments. Returns their decision records from the decision log."""
    before = len(stack.decisions())
    auth = {"authorization": f"Bearer {tokens['alice']}"}
    r = httpx.post(f"{stack.llm_base_url}/chat/completions", headers=auth,
                   json={"model": "gpt-4o", "messages": HELLO})
    assert r.status_code == 403
    r = httpx.post(f"{stack.llm_base_url}/chat/completions", headers=auth,
                   json={"model": "gpt-4o-mini", "messages": HELLO, "tools": [tool("get_weather"), tool("delete_repo")]})
    assert r.status_code == 200

    async def refund():
        async with mcp_client(stack.mcp_url, tokens["alice"]) as client:
            with pytest.raises(MCPError):
                await client.call_tool("refund", {"ticket_id": "T-100", "amount_cents": 250000})

    # In a thread of its own: Playwright's sync API keeps an event loop on this one.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, refund()).result()
    model = stack.wait_for_decision(lambda d: d.get("model") == "gpt-4o" and d["effect"] == "deny", after=before)
    stripped = stack.wait_for_decision(lambda d: d.get("denied_tools") == ["delete_repo"], after=before)
    refund_call = stack.wait_for_decision(
        lambda d: any(x["action"] == "tools/call/refund" for x in d.get("resources", [])), after=before)
    return {"model": model, "stripped": stripped, "refund": refund_call}


def sign_in(browser, url: str, token: str, **context):
    page = browser.new_context(**context).new_page()
    page.goto(url)
    page.fill("#token", token)
    page.click("#sign-in-form button[type=submit]")
    return page


@pytest.fixture(scope="module")
def auditor(browser, stack, console_url):
    page = sign_in(browser, console_url, stack.mint_token("audrey", ["auditor"]), viewport={"width": 1280, "height": 900})
    yield page
    page.context.close()


def rows(page) -> list[str]:
    return page.locator("#decisions tbody tr").all_inner_texts()


def test_the_list_shows_denials_with_principal_and_reason(auditor, driven, shots):
    page = auditor
    page.wait_for_selector("#decisions tbody tr")
    denied_model = page.locator("#decisions tbody tr.deny", has_text="gpt-4o is not in alice's allowed_models")
    assert denied_model.count() >= 1
    text = denied_model.first.inner_text()
    assert "alice" in text and "support" in text and "deny" in text.lower()
    refund = page.locator("#decisions tbody tr.deny", has_text="refund")
    assert refund.count() >= 1
    assert "250000" in refund.first.inner_text()  # the key arguments, on the row
    stripped = page.locator("#decisions tbody tr.stripped", has_text="delete_repo")
    assert stripped.count() >= 1
    page.screenshot(path=str(shots / "console-list.png"))


def test_a_decision_page_shows_the_judged_arguments_and_the_stripped_tools(auditor, driven, console_url, shots):
    page = auditor
    page.goto(f"{console_url}?decision={driven['refund']['decision_id']}")
    page.wait_for_selector("#detail-body article")
    body = page.locator("#detail-body").inner_text()
    assert driven["refund"]["request_id"] in body
    assert "Arguments as judged" in body
    arguments = page.locator("#detail-body pre", has_text="amount_cents").first.inner_text()
    assert '"amount_cents": 250000' in arguments and '"ticket_id": "T-100"' in arguments
    for call_id in driven["refund"]["cerbos_call_ids"]:
        assert call_id in body
    assert driven["refund"]["cerbos_ms"] > 0 and "Cerbos time" in body
    page.screenshot(path=str(shots / "console-decision.png"), full_page=True)

    page.goto(f"{console_url}?decision={driven['stripped']['decision_id']}")
    page.wait_for_selector("#detail-body article")
    # The request record says what to strip; the ext_proc leg's `strip` record, that it did.
    dropped = page.locator("ul.chips.dropped[aria-label='tools dropped']").first.inner_text()
    kept = page.locator("ul.chips.kept[aria-label='tools allowed']").inner_text()
    assert dropped.split() == ["delete_repo"] and kept.split() == ["get_weather"]
    page.screenshot(path=str(shots / "console-decision-stripped.png"), full_page=True)


def test_filters_narrow_the_list_and_live_in_the_url(auditor, stack, driven, console_url, shots):
    page = auditor
    page.goto(console_url)
    page.wait_for_selector("#decisions tbody tr")
    everything = len(rows(page))
    page.select_option("select[name=effect]", "deny")
    page.fill("input[name=mcp_tool]", "refund")
    page.click("#filters button[type=submit]")
    page.wait_for_url("**/console?effect=deny&mcp_tool=refund")
    # Polled by Playwright's selector engine: the page's content security policy forbids eval.
    from playwright.sync_api import expect

    expect(page.locator("#decisions tbody tr.allow, #decisions tbody tr.stripped")).to_have_count(0)
    filtered = rows(page)
    assert 1 <= len(filtered) < everything
    assert all("refund" in r for r in filtered)
    # The URL is the view: opened in a new tab (which signs in anew: the token is per tab), it
    # shows the same rows.
    again = page.context.new_page()
    again.goto(page.url)
    again.fill("#token", stack.mint_token("audrey", ["auditor"]))
    again.click("#sign-in-form button[type=submit]")
    again.wait_for_selector("#decisions tbody tr")
    assert rows(again) == filtered
    assert again.input_value("input[name=mcp_tool]") == "refund"
    again.close()
    page.screenshot(path=str(shots / "console-filtered.png"))


def test_the_live_view_shows_a_new_decision_within_two_seconds(auditor, stack, console_url, shots):
    page = auditor
    page.goto(console_url)
    page.wait_for_selector("#live-status:has-text('live: on')")
    newcomer = f"live-{uuid.uuid4().hex[:8]}"
    token = stack.mint_token(newcomer, ["support"])
    r = httpx.post(f"{stack.llm_base_url}/chat/completions", headers={"authorization": f"Bearer {token}"},
                   json={"model": "gpt-4o-mini", "messages": HELLO})
    assert r.status_code == 403
    asked = time.monotonic()
    row = page.locator("#decisions tbody tr", has_text=newcomer)
    row.wait_for(timeout=2000)
    assert time.monotonic() - asked < 2.5
    assert "has no allowed_models claim" in row.inner_text()
    page.screenshot(path=str(shots / "console-live.png"))


def test_the_overview_charts_the_decisions(auditor, driven, console_url, shots):
    page = auditor
    # Scoped to alice through the filter (the suite's other decisions share this stack).
    page.goto(f"{console_url}?view=overview&principal=alice")
    page.wait_for_selector("#overview-body svg")
    charts = page.locator("#overview-body .chart")
    assert charts.count() == 6
    principals = page.locator(".chart", has_text="Top denied principals").locator("svg").get_attribute("aria-label")
    assert "alice" in principals
    models = page.locator(".chart", has_text="Top denied models").locator("svg").get_attribute("aria-label")
    assert "gpt-4o" in models
    page.screenshot(path=str(shots / "console-overview.png"), full_page=True)


def test_the_console_works_from_the_keyboard(auditor, driven, console_url):
    page = auditor
    page.goto(console_url)
    page.wait_for_selector("#decisions tbody tr")
    page.keyboard.press("Tab")
    assert page.locator(":focus").inner_text() == "Skip to content"
    page.keyboard.press("Enter")
    page.keyboard.press("Tab")
    assert page.locator(":focus").get_attribute("name") == "principal"  # the first filter
    page.locator("#decisions tbody tr a").first.focus()
    page.keyboard.press("Enter")
    page.wait_for_selector("#detail-body article")
    assert "decision=" in page.url


def test_the_list_is_usable_on_a_phone(browser, stack, console_url, driven, shots):
    page = sign_in(browser, console_url, stack.mint_token("audrey", ["auditor"]),
                   viewport={"width": 390, "height": 844}, is_mobile=True)
    page.wait_for_selector("#decisions tbody tr")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page scrolls sideways on a phone ({width}px)"
    page.screenshot(path=str(shots / "console-phone.png"))
    page.context.close()


def test_a_principal_without_view_sees_nothing(browser, stack, tokens, console_url, driven, shots):
    api = console_url.replace("/console", "/api/v1/decisions")
    r = httpx.get(api)
    assert r.status_code == 401 and "decisions" not in r.json()
    r = httpx.get(api, headers={"authorization": f"Bearer {tokens['alice']}"})
    assert r.status_code == 403 and "decisions" not in r.json()
    r = httpx.get(f"{api}/{driven['refund']['decision_id']}", headers={"authorization": f"Bearer {tokens['root']}"})
    assert r.status_code == 403 and "records" not in r.json()

    page = sign_in(browser, console_url, tokens["alice"], viewport={"width": 1280, "height": 700})
    page.wait_for_selector("#message:has-text('Access refused')")
    assert "alice may not view the decision console" in page.inner_text("#message")
    assert rows(page) == []
    assert "250000" not in page.content()
    page.screenshot(path=str(shots / "console-refused.png"))
    page.context.close()



@pytest.fixture(scope="module")
def derived_stack():
    """A stack whose mcp_server policy lets support call lookup_ticket through a derived role
    (`ticket_reader`), so Cerbos reports it in meta.effectiveDerivedRoles."""
    import yaml

    from conftest import require_stack_binaries
    from stack import REPO, Stack

    require_stack_binaries()
    stack = Stack(name="console-derived", copy_policies=True)
    shutil.copytree(REPO / "policies", stack.policies_dir)
    (stack.policies_dir / "console_e2e_derived_roles.yaml").write_text(yaml.safe_dump({
        "apiVersion": "api.cerbos.dev/v1",
        "derivedRoles": {"name": "console_e2e", "definitions": [{
            "name": "ticket_reader", "parentRoles": ["support"],
            "condition": {"match": {"expr": 'R.attr.tool_name == "lookup_ticket"'}}}]},
    }))
    path = stack.policies_dir / "mcp_server.yaml"
    policy = yaml.safe_load(path.read_text())
    policy["resourcePolicy"]["importDerivedRoles"] = ["console_e2e"]
    policy["resourcePolicy"]["rules"] = [
        r for r in policy["resourcePolicy"]["rules"] if r["name"] != "support-lookup-ticket"
    ] + [{"name": "ticket-readers-look-up", "actions": ["tools/call/lookup_ticket"], "effect": "EFFECT_ALLOW",
          "derivedRoles": ["ticket_reader"]}]
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    with stack:
        yield stack


def test_the_derived_roles_cerbos_applied_are_on_record_and_on_the_page(browser, derived_stack, shots):
    s = derived_stack
    before = len(s.decisions())

    async def look_up():
        async with mcp_client(s.mcp_url, s.token_for("alice")) as client:
            return await client.call_tool("lookup_ticket", {"ticket_id": "T-100"})

    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, look_up()).result()
    decision = s.wait_for_decision(
        lambda d: any(x["action"] == "tools/call/lookup_ticket" for x in d.get("resources", [])), after=before)
    assert decision["effect"] == "allow"
    (resource,) = decision["resources"]
    assert resource["derived_roles"] == ["ticket_reader"]

    console = f"http://127.0.0.1:{s.ports['authz_admin']}/console"
    page = sign_in(browser, f"{console}?decision={decision['decision_id']}", s.mint_token("audrey", ["auditor"]),
                   viewport={"width": 1280, "height": 900})
    page.wait_for_selector("#detail-body article")
    facts = page.locator("#detail-body dl.facts", has_text="derived roles").first.inner_text()
    assert "ticket_reader" in facts
    page.context.close()
