-- wrk script: one prepared request sent on every connection, every time ("principal
-- repeating": BENCH_TOKEN is the only token). See wrk_common.lua for the other variables.
--   BENCH_TOKEN    bearer token (omitted when unset: baseline (a) and (b) need none)
local common = dofile(os.getenv("BENCH_LUA_DIR") .. "/wrk_common.lua")

local method, path, headers, body = common.scenario()
local token = os.getenv("BENCH_TOKEN")
if token and token ~= "" then headers["Authorization"] = "Bearer " .. token end

-- Leaving wrk.request undefined lets wrk build the request once and resend the same bytes.
wrk.method = method
wrk.path = path
wrk.body = body
for name, value in pairs(headers) do wrk.headers[name] = value end

done = common.done
