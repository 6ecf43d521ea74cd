// agent-authz decision console. Plain JS, no dependencies. Every value from a record is
// written with textContent (never as HTML): principals, reasons and arguments come from
// callers and must not become markup.
"use strict";

const TOKEN_KEY = "agent-authz-console-token";
const FILTERS = ["principal", "effect", "kind", "model", "tool", "mcp_tool", "route", "phase", "since", "until", "q"];
const $ = (id) => document.getElementById(id);

/** Builds an element: el("td", {class: "x"}, "text", child). */
function el(tag, attrs, ...children) {
  const node = tag === "svg" || SVG_TAGS.has(tag)
    ? document.createElementNS("http://www.w3.org/2000/svg", tag)
    : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null && v !== false) node.setAttribute(k, String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === "") continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}
const SVG_TAGS = new Set(["rect", "line", "text", "g", "title", "polyline"]);

const token = () => sessionStorage.getItem(TOKEN_KEY);

class Refused extends Error {}

/** GET an API path with the bearer token; a 401/403 clears the view and says why. */
async function api(path) {
  const response = await fetch(path, { headers: { authorization: `Bearer ${token()}` }, cache: "no-store" });
  const body = await response.json().catch(() => ({}));
  if (response.status === 401 || response.status === 403) {
    refuse(`${response.status === 401 ? "Not signed in" : "Access refused"}: ${body.error || response.statusText}`);
    throw new Refused(body.error);
  }
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

function refuse(text) {
  for (const id of ["list", "detail", "overview"]) $(id).hidden = true;
  $("decisions").tBodies[0].replaceChildren();
  $("detail-body").replaceChildren();
  $("overview-body").replaceChildren();
  stopLive();
  say(text);
  $("sign-in").hidden = false;
}

function say(text) {
  $("message").textContent = text || "";
  $("message").hidden = !text;
}

// ---------------------------------------------------------------- what a record says

function effectOf(r) {
  if (r.effect === "deny") return "deny";
  return (r.denied_tools || []).length ? "stripped" : "allow";
}

function badge(r) {
  const e = effectOf(r);
  return el("span", { class: `badge ${e}` }, r.dry_run ? `${e} (dry run)` : e);
}

function chips(items, cls, label) {
  if (!items || !items.length) return null;
  return el("ul", { class: `chips ${cls}`, "aria-label": label }, items.map((t) => el("li", {}, t)));
}

/** The MCP calls of a record: method, tool and the key arguments judged. */
function mcpCalls(r) {
  return (r.resources || [])
    .filter((x) => x.attr && x.attr.method)
    .map((x) => {
      const a = x.attr;
      const name = a.tool_name || a.prompt_name || a.uri || "";
      const args = a.arguments && Object.keys(a.arguments).length ? " " + JSON.stringify(a.arguments) : "";
      return `${a.method}${name ? " " + name : ""}${args}`;
    });
}

function asked(r) {
  const parts = [];
  if (r.model) parts.push(el("div", {}, "model ", el("code", {}, r.model)));
  const kept = chips(r.allowed_tools, "kept", "tools kept");
  if (kept) parts.push(el("div", {}, "kept ", kept));
  const dropped = chips(r.denied_tools, "dropped", "tools denied");
  if (dropped) parts.push(el("div", {}, "denied ", dropped));
  const hidden = chips(r.hidden, "dropped", "hidden from the listing");
  if (hidden) parts.push(el("div", {}, "hidden ", hidden));
  if (!r.model) for (const call of mcpCalls(r).slice(0, 3)) parts.push(el("div", {}, el("code", {}, call)));
  return parts;
}

function principalCell(r) {
  if (!r.principal) return el("span", { class: "muted" }, "(unidentified)");
  return [el("div", {}, r.principal.id), el("div", { class: "roles" }, (r.principal.roles || []).join(", "))];
}

function row(item, fresh) {
  const e = effectOf(item);
  const link = el("a", { href: `/console?decision=${encodeURIComponent(item.decision_id)}` }, item.time.replace("T", " ").replace("Z", ""));
  link.addEventListener("click", (ev) => { ev.preventDefault(); go(link.getAttribute("href")); });
  return el("tr", { class: `${e}${fresh ? " fresh" : ""}`, "data-seq": item.seq },
    el("td", { class: "time", "data-label": "Time" }, link, item.phase !== "request" ? el("div", { class: "muted" }, `${item.phase} phase`) : null),
    el("td", { "data-label": "Principal" }, principalCell(item)),
    el("td", { "data-label": "Route" }, item.route || item.path, el("div", { class: "muted" }, item.format || "")),
    el("td", { "data-label": "Effect" }, badge(item)),
    el("td", { "data-label": "Asked" }, asked(item)),
    el("td", { "data-label": "Reason" }, item.reason));
}

// ---------------------------------------------------------------- list + live

let cursor = null;
let live = null; // AbortController of the live stream

function filterQuery() {
  const params = new URLSearchParams(location.search);
  const out = new URLSearchParams();
  for (const f of FILTERS) if (params.get(f)) out.set(f, params.get(f));
  return out;
}

async function showList() {
  $("list").hidden = false;
  const form = $("filters");
  const q = filterQuery();
  for (const f of FILTERS) form.elements[f].value = q.get(f) || "";
  const page = await api(`/api/v1/decisions?${q}`);
  const body = $("decisions").tBodies[0];
  body.replaceChildren(...page.decisions.map((d) => row(d, false)));
  cursor = page.next_cursor || null;
  $("older").hidden = !cursor;
  $("empty").hidden = page.decisions.length > 0;
  if ($("live").checked) startLive(q); else stopLive();
}

async function older() {
  const q = filterQuery();
  q.set("cursor", cursor);
  const page = await api(`/api/v1/decisions?${q}`);
  $("decisions").tBodies[0].append(...page.decisions.map((d) => row(d, false)));
  cursor = page.next_cursor || null;
  $("older").hidden = !cursor;
}

function stopLive() {
  if (live) live.abort();
  live = null;
  $("live-status").textContent = "";
}

/** Reads the SSE stream with fetch (EventSource cannot send a bearer token). */
async function startLive(q) {
  stopLive();
  const controller = new AbortController();
  live = controller;
  $("live-status").textContent = "live: connecting";
  try {
    const response = await fetch(`/api/v1/decisions/stream?${q}`, {
      headers: { authorization: `Bearer ${token()}`, accept: "text/event-stream" },
      signal: controller.signal,
    });
    if (response.status === 401 || response.status === 403) {
      const body = await response.json().catch(() => ({}));
      refuse(`Access refused: ${body.error || response.statusText}`);
      return;
    }
    if (!response.ok) throw new Error(`${response.status}`);
    $("live-status").textContent = "live: on";
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        event(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
      }
    }
  } catch (e) {
    if (controller.signal.aborted) return;
  }
  // The server ends streams after a while (to authorise again): reconnect.
  if (live === controller) setTimeout(() => live === controller && startLive(q), 1000);
}

function event(block) {
  let type = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) type = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
  }
  if (type === "skipped") {
    $("live-status").textContent = `live: on (${data.join("")} decisions skipped; reload to see them)`;
  } else if (type === "decision") {
    const item = JSON.parse(data.join("\n"));
    const body = $("decisions").tBodies[0];
    if (body.querySelector(`tr[data-seq="${item.seq}"]`)) return;
    body.prepend(row(item, true));
    $("empty").hidden = true;
  }
}

// ---------------------------------------------------------------- one decision

function facts(pairs) {
  return el("dl", { class: "facts" }, pairs.filter(([, v]) => v !== undefined && v !== null && v !== "")
    .map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

const json = (v) => el("pre", {}, JSON.stringify(v, null, 2));

function resourceBlock(x) {
  const args = x.attr && x.attr.arguments;
  const rest = Object.fromEntries(Object.entries(x.attr || {}).filter(([k]) => k !== "arguments"));
  return el("div", { class: `record ${x.effect === "allow" ? "allow" : "deny"}` },
    el("h4", {}, `${x.kind} `, el("code", {}, x.id), " ", el("span", { class: `badge ${x.effect === "allow" ? "allow" : "deny"}` }, x.effect)),
    facts([["action", x.action], ["policy", x.policy], ["rule (output)", x.reason_rule], ["reason", x.reason],
      ["derived roles", (x.derived_roles || []).join(", ")]]),
    args !== undefined ? [el("h5", {}, "Arguments as judged"), json(args)] : null,
    el("h5", {}, "Attributes sent to Cerbos"), json(rest));
}

function recordBlock(r) {
  const e = effectOf(r);
  return el("article", { class: `record ${e}`, "aria-label": `${r.phase} phase` },
    el("h3", {}, `${r.phase.charAt(0).toUpperCase()}${r.phase.slice(1)} phase `, badge(r)),
    el("p", {}, el("strong", {}, "Reason: "), r.reason),
    facts([["time", r.time], ["status", r.status], ["refusal", r.refusal], ["request id", r.request_id],
      ["decision id", r.decision_id], ["trace id", r.trace_id], ["Cerbos call ids", (r.cerbos_call_ids || []).join(", ")],
      ["latency", `${Number(r.latency_ms).toFixed(2)} ms`],
      ["Cerbos time", r.cerbos_ms != null ? `${Number(r.cerbos_ms).toFixed(2)} ms` : ""], ["method", r.method], ["path", r.path],
      ["route", r.route], ["format", r.format], ["model", r.model]]),
    el("h3", {}, "Principal"),
    r.principal
      ? [facts([["id", r.principal.id], ["roles", (r.principal.roles || []).join(", ")]]),
        el("h5", {}, "Attributes as sent to Cerbos"), json(r.principal.attr || {})]
      : el("p", { class: "muted" }, "Not identified."),
    el("h3", {}, "Tools"),
    facts([["allowed", chips(r.allowed_tools, "kept", "tools allowed") || "none"],
      ["denied (dropped)", chips(r.denied_tools, "dropped", "tools dropped") || "none"],
      ["hidden from the listing", chips(r.hidden, "dropped", "tools hidden") || "none"]]),
    el("h3", {}, `Resources judged (${(r.resources || []).length})`),
    (r.resources || []).map(resourceBlock),
    r.phase === "request" ? [el("h3", {}, "Envoy access-log fields"),
      el("p", { class: "muted" }, "What Envoy's access log holds for this request (x-request-id and ext_authz dynamic metadata), to join the two logs."),
      facts([["request_id", r.request_id], ["method", r.method], ["path", r.path], ["response_code (ours)", r.status],
        ["principal", r.principal ? r.principal.id : ""], ["effect", r.effect], ["reason", r.reason],
        ["decision_id", r.decision_id], ["denied_tools", (r.denied_tools || []).join(",")]])] : null);
}

async function showDetail(id) {
  $("detail").hidden = false;
  $("detail-title").textContent = `Decision ${id}`;
  const body = await api(`/api/v1/decisions/${encodeURIComponent(id)}`);
  $("detail-body").replaceChildren(...body.records.map(recordBlock));
}

// ---------------------------------------------------------------- overview

const COLOURS = {
  allow: "#2da44e", stripped: "#bf8700", deny: "#cf222e", cerbos_errors: "#cf222e",
  latency_p50_ms: "#0969da", latency_p95_ms: "#8250df", cerbos_p50_ms: "#1a7f37", cerbos_p95_ms: "#9a6700",
};

function legend(keys) {
  return el("div", { class: "legend" }, keys.map(([k, label]) => el("span", {}, el("i", { class: `key-${k}` }), label)));
}

/** Bars per minute: stacked series keys, with the maximum written on the axis. */
function perMinute(title, minutes, keys, unit) {
  const W = 600, H = 180, pad = 30, bw = (W - pad) / minutes.length;
  const totals = minutes.map((m) => (keys.length > 1 && keys[0] !== "latency_p50_ms" ? keys.reduce((s, k) => s + m[k], 0) : Math.max(...keys.map((k) => m[k]))));
  const max = Math.max(1, ...totals);
  const svg = el("svg", { viewBox: `0 0 ${W} ${H + 20}`, role: "img", "aria-label": `${title}, last ${minutes.length} minutes, maximum ${max.toFixed(unit ? 1 : 0)}${unit}` });
  svg.append(el("line", { x1: pad, y1: H, x2: W, y2: H, stroke: "#8c959f" }),
    el("text", { x: 0, y: 12, "font-size": 11, fill: "#4d5661" }, `${max.toFixed(unit ? 1 : 0)}${unit}`),
    el("text", { x: pad, y: H + 16, "font-size": 11, fill: "#4d5661" }, new Date(minutes[0].start_ms).toISOString().slice(11, 16)),
    el("text", { x: W - 34, y: H + 16, "font-size": 11, fill: "#4d5661" }, "now"));
  minutes.forEach((m, i) => {
    let y = H;
    const stacked = keys[0] !== "latency_p50_ms";
    for (const k of keys) {
      const h = (m[k] / max) * (H - 16);
      const colour = COLOURS[k];
      const top = stacked ? y - h : H - h;
      const x = pad + i * bw + (stacked ? 1 : (keys.indexOf(k) * bw) / keys.length);
      const w = stacked ? bw - 2 : bw / keys.length - 1;
      if (h > 0) svg.append(el("rect", { x, y: top, width: Math.max(w, 1), height: h, fill: colour }, el("title", {}, `${new Date(m.start_ms).toISOString().slice(11, 16)} ${k}: ${m[k]}`)));
      if (stacked) y -= h;
    }
  });
  return svg;
}

function topList(title, items) {
  const max = Math.max(1, ...items.map(([, n]) => n));
  const chart = el("div", { class: "chart" }, el("h3", {}, title));
  if (!items.length) { chart.append(el("p", { class: "muted" }, "None.")); return chart; }
  const svg = el("svg", { viewBox: `0 0 600 ${items.length * 24}`, role: "img", "aria-label": `${title}: ${items.map(([k, n]) => `${k} ${n}`).join(", ")}` });
  items.forEach(([name, n], i) => {
    svg.append(el("text", { x: 0, y: i * 24 + 16, "font-size": 13, fill: "#1b1f24" }, name),
      el("rect", { x: 220, y: i * 24 + 4, width: (n / max) * 330, height: 16, fill: COLOURS.deny }),
      el("text", { x: 226 + (n / max) * 330, y: i * 24 + 16, "font-size": 13, fill: "#1b1f24" }, String(n)));
  });
  chart.append(svg);
  return chart;
}

async function showOverview() {
  $("overview").hidden = false;
  const q = filterQuery();
  const o = await api(`/api/v1/overview?${q}`);
  $("overview-scope").textContent = `${o.records} decisions retained${q.toString() ? " matching " + q.toString() : ""}.`;
  $("overview-body").replaceChildren(
    el("div", { class: "chart" }, el("h3", {}, "Decisions per minute"), perMinute("Decisions per minute", o.per_minute, ["allow", "stripped", "deny"], ""),
      legend([["allow", "allow"], ["stripped", "stripped"], ["deny", "deny"]])),
    el("div", { class: "chart" }, el("h3", {}, "Latency: whole check, and Cerbos"),
      perMinute("Latency", o.per_minute, ["latency_p50_ms", "latency_p95_ms", "cerbos_p50_ms", "cerbos_p95_ms"], " ms"),
      legend([["latency_p50_ms", "check p50"], ["latency_p95_ms", "check p95"], ["cerbos_p50_ms", "Cerbos p50"], ["cerbos_p95_ms", "Cerbos p95"]])),
    el("div", { class: "chart" }, el("h3", {}, "Cerbos errors per minute"), perMinute("Cerbos errors per minute", o.per_minute, ["cerbos_errors"], ""),
      legend([["cerbos_errors", "requests refused: Cerbos unavailable"]])),
    topList("Top denied principals", o.top_denied_principals),
    topList("Top denied or stripped tools", o.top_denied_tools),
    topList("Top denied models", o.top_denied_models));
}

// ---------------------------------------------------------------- navigation

function go(href) {
  history.pushState(null, "", href);
  render();
}

async function render() {
  say("");
  for (const id of ["list", "detail", "overview", "sign-in"]) $(id).hidden = true;
  const params = new URLSearchParams(location.search);
  const view = params.get("decision") ? "detail" : params.get("view") === "overview" ? "overview" : "list";
  $("nav-list").removeAttribute("aria-current");
  $("nav-overview").removeAttribute("aria-current");
  if (view === "list") $("nav-list").setAttribute("aria-current", "page");
  if (view === "overview") $("nav-overview").setAttribute("aria-current", "page");
  if (!token()) {
    stopLive();
    $("who").hidden = true;
    $("sign-in").hidden = false;
    return;
  }
  $("who").hidden = false;
  if (view !== "list") stopLive();
  try {
    if (view === "detail") await showDetail(params.get("decision"));
    else if (view === "overview") await showOverview();
    else await showList();
  } catch (e) {
    if (!(e instanceof Refused)) say(`Could not load: ${e.message}`);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("sign-in-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim().replace(/^Bearer\s+/i, ""));
    $("token").value = "";
    render();
  });
  $("sign-out").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    refuse("");
    render();
  });
  $("filters").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const q = new URLSearchParams();
    for (const f of FILTERS) {
      const v = $("filters").elements[f].value.trim();
      if (v) q.set(f, v);
    }
    go(`/console${q.toString() ? "?" + q : ""}`);
  });
  $("clear").addEventListener("click", () => go("/console"));
  $("live").addEventListener("change", () => ($("live").checked ? startLive(filterQuery()) : stopLive()));
  $("older").addEventListener("click", () => older().catch((e) => e instanceof Refused || say(e.message)));
  for (const id of ["nav-list", "nav-overview", "back"]) {
    $(id).addEventListener("click", (ev) => {
      ev.preventDefault();
      const keep = id === "nav-overview" ? filterQuery() : new URLSearchParams();
      if (id === "nav-overview") keep.set("view", "overview");
      go(`/console${keep.toString() ? "?" + keep : ""}`);
    });
  }
  window.addEventListener("popstate", render);
  render();
});
