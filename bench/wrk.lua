-- wrk script for bench/run.sh (every row uses it, so every row pays the same client-side cost
-- model). Environment:
--   BENCH_TOKEN        one bearer token, sent on every request (rows 4, 6, 7, 8)
--   BENCH_TOKENS       a file of tokens, one per line: every request takes the next one (row 5)
--   BENCH_TOKEN_STATE  a file holding the index of the next unused token; read at start and
--                      advanced at the end, so consecutive runs never resend a token until the
--                      whole file has been used (then it wraps around)
--   BENCH_THREADS      wrk's -t (default 1)
-- done() prints one line that run.sh parses:
--   BENCH rps=<req/s> p50=<us> p99=<us> requests=<n> non2xx=<n> errors=<n>

local threads = {}
local tokens_file = os.getenv("BENCH_TOKENS") or ""
local single = os.getenv("BENCH_TOKEN") or ""
local state_file = os.getenv("BENCH_TOKEN_STATE") or ""
local nthreads = tonumber(os.getenv("BENCH_THREADS") or "1") or 1

local function read_state()
  if state_file == "" then return 0 end
  local f = io.open(state_file, "r")
  if not f then return 0 end
  local n = tonumber(f:read("*l") or "0") or 0
  f:close()
  return n
end

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

if single ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. single
end

if tokens_file ~= "" then
  local tokens, n, idx, hdrs
  count = 0

  function init(args)
    tokens = {}
    for line in io.lines(tokens_file) do
      if line ~= "" then tokens[#tokens + 1] = line end
    end
    n = #tokens
    if n == 0 then error("no tokens in " .. tokens_file) end
    idx = read_state() + (tid - 1)
    hdrs = {}
    for k, v in pairs(wrk.headers) do hdrs[k] = v end
  end

  -- Thread t sends tokens start+t-1, start+t-1+T, start+t-1+2T, ... (T = thread count).
  function request()
    hdrs["Authorization"] = "Bearer " .. tokens[(idx % n) + 1]
    idx = idx + nthreads
    count = count + 1
    return wrk.format(nil, nil, hdrs)
  end
end

function done(summary, latency, requests)
  if tokens_file ~= "" and state_file ~= "" then
    local most = 0
    for _, t in ipairs(threads) do
      local c = t:get("count") or 0
      if c > most then most = c end
    end
    local f = io.open(state_file, "w")
    f:write(string.format("%d\n", read_state() + most * nthreads))
    f:close()
  end
  local e = summary.errors
  local secs = summary.duration / 1e6
  io.write(string.format(
    "BENCH rps=%.1f p50=%d p99=%d requests=%d non2xx=%d errors=%d\n",
    summary.requests / secs, latency:percentile(50), latency:percentile(99),
    summary.requests, e.status, e.connect + e.read + e.write + e.timeout))
end
