-- wrk script: "principals all distinct". Every request carries the next token of
-- BENCH_TOKENS (one JWT a line, each for a different principal), round-robin. The requests are
-- formatted once, in init(), so the load generator does no per-request string building.
--   BENCH_TOKENS   file of pre-minted tokens (bench.py mints 1000)
local common = dofile(os.getenv("BENCH_LUA_DIR") .. "/wrk_common.lua")

local method, path, headers, body = common.scenario()
local prepared, count, next_index = {}, 0, 0

function init(args)
  local tokens_file = assert(os.getenv("BENCH_TOKENS"), "BENCH_TOKENS is not set")
  for token in io.lines(tokens_file) do
    if token ~= "" then
      local h = {}
      for name, value in pairs(headers) do h[name] = value end
      h["Authorization"] = "Bearer " .. token
      count = count + 1
      prepared[count] = wrk.format(method, path, h, body)
    end
  end
  assert(count > 0, "no tokens in BENCH_TOKENS")
end

function request()
  next_index = next_index % count + 1
  return prepared[next_index]
end

done = common.done
