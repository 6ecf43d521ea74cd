-- Shared by bench/wrk_fixed.lua and bench/wrk_rotate.lua (loaded with dofile): reads the
-- scenario from the environment and prints wrk's summary as one JSON line.
--   BENCH_PATH     request path (e.g. /v1/chat/completions)
--   BENCH_BODY     file holding the request body
--   BENCH_METHOD   default POST
--   BENCH_HEADERS  optional extra headers, "Name: value" one a line
local common = {}

function common.read(path)
  local f = assert(io.open(path, "rb"))
  local data = f:read("*a")
  f:close()
  return data
end

function common.scenario()
  local headers = { ["Content-Type"] = "application/json" }
  for line in (os.getenv("BENCH_HEADERS") or ""):gmatch("[^\n]+") do
    local name, value = line:match("^%s*([^:]+):%s*(.-)%s*$")
    if name then headers[name] = value end
  end
  local path = assert(os.getenv("BENCH_PATH"), "BENCH_PATH is not set")
  local body_file = assert(os.getenv("BENCH_BODY"), "BENCH_BODY is not set")
  return os.getenv("BENCH_METHOD") or "POST", path, headers, common.read(body_file)
end

-- wrk calls done() once, after the run: latencies are in microseconds. Non-2xx/3xx answers
-- count as status errors (the denied-model scenario expects all of them to be 403s).
function common.done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"errors":{"connect":%d,"read":%d,' ..
    '"write":%d,"status":%d,"timeout":%d},"p50_us":%.0f,"p90_us":%.0f,"p99_us":%.0f,' ..
    '"max_us":%.0f,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end

return common
