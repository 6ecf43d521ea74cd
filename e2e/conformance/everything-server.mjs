// An MCP server on the TypeScript SDK (@modelcontextprotocol/sdk) implementing what the official
// conformance suite's server scenarios ask for (`conformance list`), over Streamable HTTP with
// sessions and resumable SSE. Used by e2e/conformance/run.py, directly and behind the gateway.
//
//   node everything-server.mjs --port 3000      (serves http://127.0.0.1:3000/mcp)
//
// --support-tools adds the shipped policies' tools (lookup_ticket, refund), so that
// e2e/tests/test_mcp_revisions.py can judge this server's answers with policies/ as shipped;
// with MCP_EXECUTIONS_LOG set, every tool it executes is appended there as a JSON line
// {"tool", "arguments"} (what the server received, for the tests to compare with what was judged).
import fs from "node:fs";
import http from "node:http";
import { randomUUID } from "node:crypto";
import { Server } from "@modelcontextprotocol/sdk/server/index.js";
import { StreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/streamableHttp.js";
import { InMemoryEventStore } from "@modelcontextprotocol/sdk/examples/shared/inMemoryEventStore.js";
import {
  CallToolRequestSchema, CompleteRequestSchema, GetPromptRequestSchema, ListPromptsRequestSchema,
  ListResourcesRequestSchema, ListResourceTemplatesRequestSchema, ListToolsRequestSchema,
  ReadResourceRequestSchema, SetLevelRequestSchema, SubscribeRequestSchema, UnsubscribeRequestSchema,
  ElicitResultSchema, CreateMessageResultSchema, isInitializeRequest,
} from "@modelcontextprotocol/sdk/types.js";

const PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==";
const WAV = "UklGRiQAAABXQVZFZm10IBAAAAABAAEAQB8AAEAfAAABAAgAZGF0YQAAAAA=";
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const text = (t) => ({ content: [{ type: "text", text: t }] });
const noArgs = { type: "object", properties: {} };

const TOOLS = [
  ["test_simple_text", "Returns simple text", noArgs],
  ["test_image_content", "Returns an image", noArgs],
  ["test_audio_content", "Returns audio", noArgs],
  ["test_embedded_resource", "Returns an embedded resource", noArgs],
  ["test_multiple_content_types", "Returns several content types", noArgs],
  ["test_tool_with_logging", "Logs while running", noArgs],
  ["test_tool_with_progress", "Reports progress", noArgs],
  ["test_error_handling", "Always fails", noArgs],
  ["test_sampling", "Asks the client's LLM", { type: "object", properties: { prompt: { type: "string" } }, required: ["prompt"] }],
  ["test_elicitation", "Asks the user", { type: "object", properties: { message: { type: "string" } }, required: ["message"] }],
  ["test_elicitation_sep1034_defaults", "Elicitation with defaults", noArgs],
  ["test_elicitation_sep1330_enums", "Elicitation with enums", noArgs],
  ["test_reconnection", "Closes its SSE stream mid-call", noArgs],
  ["json_schema_2020_12_tool", "Tool with JSON Schema 2020-12 features", {
    $schema: "https://json-schema.org/draft/2020-12/schema", type: "object",
    $defs: { address: { type: "object", properties: { street: { type: "string" }, city: { type: "string" } } } },
    properties: { name: { type: "string" }, address: { $ref: "#/$defs/address" } }, additionalProperties: false,
  }],
].map(([name, description, inputSchema]) => ({ name, description, inputSchema }));
const SUPPORT_TOOLS = [
  { name: "lookup_ticket", description: "Look up a support ticket",
    inputSchema: { type: "object", properties: { ticket_id: { type: "string" } }, required: ["ticket_id"] } },
  { name: "refund", description: "Refund an amount on a ticket",
    inputSchema: { type: "object", properties: { ticket_id: { type: "string" }, amount_cents: { type: "number" } },
      required: ["ticket_id", "amount_cents"] } },
];
const supportTools = process.argv.includes("--support-tools");
const EXECUTIONS_LOG = process.env.MCP_EXECUTIONS_LOG;

const RESOURCES = [
  { uri: "test://static-text", name: "static-text", description: "A static text resource", mimeType: "text/plain" },
  { uri: "test://static-binary", name: "static-binary", description: "A static binary resource", mimeType: "image/png" },
  { uri: "test://watched-resource", name: "watched-resource", description: "A resource to subscribe to", mimeType: "text/plain" },
];

const PROMPTS = [
  { name: "test_simple_prompt", description: "A simple prompt" },
  { name: "test_prompt_with_arguments", description: "A prompt with arguments", arguments: [
    { name: "arg1", description: "First test argument", required: true },
    { name: "arg2", description: "Second test argument", required: true }] },
  { name: "test_prompt_with_embedded_resource", description: "A prompt embedding a resource", arguments: [
    { name: "resourceUri", description: "URI of the resource to embed", required: true }] },
  { name: "test_prompt_with_image", description: "A prompt with an image" },
];

function newServer() {
  const server = new Server({ name: "agent-authz-everything-server", version: "1.0.0" }, {
    capabilities: { tools: {}, resources: { subscribe: true }, prompts: {}, logging: {}, completions: {} },
  });
  const subscriptions = new Set();
  server.setRequestHandler(ListToolsRequestSchema, async () => ({ tools: supportTools ? [...TOOLS, ...SUPPORT_TOOLS] : TOOLS }));
  server.setRequestHandler(SetLevelRequestSchema, async () => ({}));
  server.setRequestHandler(CompleteRequestSchema, async () => ({ completion: { values: ["paris", "park", "party"], total: 3, hasMore: false } }));
  server.setRequestHandler(ListResourcesRequestSchema, async () => ({ resources: RESOURCES }));
  server.setRequestHandler(ListResourceTemplatesRequestSchema, async () => ({ resourceTemplates: [
    { uriTemplate: "test://template/{id}/data", name: "template", description: "A templated resource", mimeType: "application/json" }] }));
  server.setRequestHandler(SubscribeRequestSchema, async (r) => { subscriptions.add(r.params.uri); return {}; });
  server.setRequestHandler(UnsubscribeRequestSchema, async (r) => { subscriptions.delete(r.params.uri); return {}; });
  server.setRequestHandler(ReadResourceRequestSchema, async (r) => {
    const uri = r.params.uri;
    if (uri === "test://static-text" || uri === "test://watched-resource")
      return { contents: [{ uri, mimeType: "text/plain", text: "This is the content of the static text resource." }] };
    if (uri === "test://static-binary") return { contents: [{ uri, mimeType: "image/png", blob: PNG }] };
    const m = /^test:\/\/template\/([^/]+)\/data$/.exec(uri);
    if (m) return { contents: [{ uri, mimeType: "application/json", text: JSON.stringify({ id: m[1], templateTest: true, data: `Data for ID: ${m[1]}` }) }] };
    throw new Error(`unknown resource ${uri}`);
  });
  server.setRequestHandler(ListPromptsRequestSchema, async () => ({ prompts: PROMPTS }));
  server.setRequestHandler(GetPromptRequestSchema, async (r) => {
    const a = r.params.arguments || {};
    switch (r.params.name) {
      case "test_simple_prompt":
        return { messages: [{ role: "user", content: { type: "text", text: "This is a simple prompt for testing." } }] };
      case "test_prompt_with_arguments":
        return { messages: [{ role: "user", content: { type: "text", text: `Prompt with arguments: arg1='${a.arg1}', arg2='${a.arg2}'` } }] };
      case "test_prompt_with_embedded_resource":
        return { messages: [
          { role: "user", content: { type: "resource", resource: { uri: a.resourceUri, mimeType: "text/plain", text: "Embedded resource content for testing." } } },
          { role: "user", content: { type: "text", text: "Please process the embedded resource above." } }] };
      case "test_prompt_with_image":
        return { messages: [
          { role: "user", content: { type: "image", data: PNG, mimeType: "image/png" } },
          { role: "user", content: { type: "text", text: "Please analyze the image above." } }] };
    }
    throw new Error(`unknown prompt ${r.params.name}`);
  });
  server.setRequestHandler(CallToolRequestSchema, async (r, extra) => {
    const a = r.params.arguments || {};
    if (EXECUTIONS_LOG) fs.appendFileSync(EXECUTIONS_LOG, JSON.stringify({ tool: r.params.name, arguments: a }) + "\n");
    if (supportTools && r.params.name === "lookup_ticket") return text(`ticket ${a.ticket_id}: open`);
    if (supportTools && r.params.name === "refund") return text(`refunded ${a.amount_cents} cents on ${a.ticket_id}`);
    switch (r.params.name) {
      case "test_simple_text": return text("This is a simple text response for testing.");
      case "test_image_content": return { content: [{ type: "image", data: PNG, mimeType: "image/png" }] };
      case "test_audio_content": return { content: [{ type: "audio", data: WAV, mimeType: "audio/wav" }] };
      case "test_embedded_resource":
        return { content: [{ type: "resource", resource: { uri: "test://embedded-resource", mimeType: "text/plain", text: "This is an embedded resource content." } }] };
      case "test_multiple_content_types":
        return { content: [
          { type: "text", text: "Multiple content types test:" },
          { type: "image", data: PNG, mimeType: "image/png" },
          { type: "resource", resource: { uri: "test://mixed-content-resource", mimeType: "application/json", text: JSON.stringify({ test: "data", value: 123 }) } }] };
      case "test_tool_with_logging":
        await extra.sendNotification({ method: "notifications/message", params: { level: "info", data: "Tool execution started" } });
        await sleep(50);
        await extra.sendNotification({ method: "notifications/message", params: { level: "info", data: "Tool processing data" } });
        await sleep(50);
        await extra.sendNotification({ method: "notifications/message", params: { level: "info", data: "Tool execution completed" } });
        return text("Tool with logging executed successfully");
      case "test_tool_with_progress": {
        const token = r.params._meta?.progressToken;
        for (const progress of [0, 50, 100]) {
          if (token !== undefined) await extra.sendNotification({ method: "notifications/progress", params: { progressToken: token, progress, total: 100 } });
          if (progress < 100) await sleep(50);
        }
        return text("Tool with progress executed successfully");
      }
      case "test_error_handling":
        return { isError: true, content: [{ type: "text", text: "This tool intentionally returns an error for testing" }] };
      case "test_sampling": {
        const answer = await extra.sendRequest({ method: "sampling/createMessage", params: {
          messages: [{ role: "user", content: { type: "text", text: a.prompt } }], maxTokens: 100 } }, CreateMessageResultSchema);
        return text(`LLM response: ${answer.content?.text ?? JSON.stringify(answer.content)}`);
      }
      case "test_elicitation": {
        const answer = await extra.sendRequest({ method: "elicitation/create", params: { message: a.message, requestedSchema: {
          type: "object", properties: { username: { type: "string", description: "User's response" },
            email: { type: "string", description: "User's email address" } }, required: ["username", "email"] } } }, ElicitResultSchema);
        return text(`User response: action=${answer.action}, content=${JSON.stringify(answer.content ?? {})}`);
      }
      case "test_elicitation_sep1034_defaults": {
        const answer = await extra.sendRequest({ method: "elicitation/create", params: { message: "Please review the defaults", requestedSchema: {
          type: "object", properties: {
            name: { type: "string", default: "John Doe" }, age: { type: "integer", default: 30 },
            score: { type: "number", default: 95.5 },
            status: { type: "string", enum: ["active", "inactive", "pending"], default: "active" },
            verified: { type: "boolean", default: true } } } } }, ElicitResultSchema);
        return text(`Elicitation completed: action=${answer.action}, content=${JSON.stringify(answer.content ?? {})}`);
      }
      case "test_elicitation_sep1330_enums": {
        const answer = await extra.sendRequest({ method: "elicitation/create", params: { message: "Pick options", requestedSchema: {
          type: "object", properties: {
            untitledSingle: { type: "string", enum: ["option1", "option2", "option3"] },
            titledSingle: { type: "string", oneOf: [{ const: "value1", title: "First Option" }, { const: "value2", title: "Second Option" }, { const: "value3", title: "Third Option" }] },
            legacyEnum: { type: "string", enum: ["opt1", "opt2", "opt3"], enumNames: ["Option One", "Option Two", "Option Three"] },
            untitledMulti: { type: "array", items: { type: "string", enum: ["option1", "option2", "option3"] } },
            titledMulti: { type: "array", items: { anyOf: [{ const: "value1", title: "First Choice" }, { const: "value2", title: "Second Choice" }, { const: "value3", title: "Third Choice" }] } },
          } } } }, ElicitResultSchema);
        return text(`Elicitation completed: action=${answer.action}, content=${JSON.stringify(answer.content ?? {})}`);
      }
      case "test_reconnection":
        await sleep(50);
        extra.closeSSEStream?.();
        await sleep(200);
        return text("Reconnection test completed successfully");
    }
    throw new Error(`unknown tool ${r.params.name}`);
  });
  return server;
}

// Only localhost Host headers (DNS rebinding protection for a plaintext local server).
const LOCAL = new Set(["localhost", "127.0.0.1", "[::1]"]);
function localHost(req) {
  const host = (req.headers.host || "").replace(/:\d+$/, "");
  const origin = req.headers.origin;
  const originOk = !origin || (() => { try { return LOCAL.has(new URL(origin).hostname.replace(/^\[|\]$/g, (c) => c) ) || LOCAL.has(`[${new URL(origin).hostname}]`); } catch { return false; } })();
  return LOCAL.has(host) && originOk;
}

const transports = new Map();
async function handle(req, res) {
  if (!req.url.startsWith("/mcp")) { res.writeHead(404).end(); return; }
  if (!localHost(req)) { res.writeHead(403, { "content-type": "application/json" }).end(JSON.stringify({ jsonrpc: "2.0", id: null, error: { code: -32000, message: "Host not allowed" } })); return; }
  let body;
  if (req.method === "POST") {
    const chunks = [];
    for await (const c of req) chunks.push(c);
    try { body = JSON.parse(Buffer.concat(chunks).toString("utf8")); } catch { body = undefined; }
  }
  const sid = req.headers["mcp-session-id"];
  let transport = sid ? transports.get(sid) : undefined;
  if (!transport) {
    if (req.method !== "POST" || !body || !isInitializeRequest(body) || sid) {
      res.writeHead(sid ? 404 : 400, { "content-type": "application/json" })
        .end(JSON.stringify({ jsonrpc: "2.0", id: null, error: { code: -32000, message: sid ? "Session not found" : "Bad Request: no session" } }));
      return;
    }
    transport = new StreamableHTTPServerTransport({
      sessionIdGenerator: () => randomUUID(), eventStore: new InMemoryEventStore(), retryInterval: 500,
      onsessioninitialized: (id) => transports.set(id, transport),
    });
    transport.onclose = () => transport.sessionId && transports.delete(transport.sessionId);
    await newServer().connect(transport);
  }
  await transport.handleRequest(req, res, body);
}

const port = Number(process.argv[process.argv.indexOf("--port") + 1] || 3000);
http.createServer((req, res) => handle(req, res).catch((e) => {
  if (!res.headersSent) res.writeHead(500).end(String(e));
})).listen(port, "127.0.0.1", () => console.log(`everything server on http://127.0.0.1:${port}/mcp`));
