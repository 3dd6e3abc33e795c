-- wrk script for bench/run.sh (every row uses it, so every row pays the same client-side cost
-- model). Environment:
--   BENCH_TOKEN        one bearer token, sent on every request (rows 4, 6, 7, 8; row 11: an opaque one)
--   BENCH_TOKENS       a file of tokens, one per line: every request takes the next one (row 5)
--   BENCH_TOKEN_STATE  a file holding the index of the next unused token; read at start and
--                      advanced at the end, so consecutive runs never resend a token until the
--                      whole file has been used (then it wraps around)
--   BENCH_DPOP_TOKEN   a DPoP-bound token, sent as `Authorization: DPoP <token>` on every request
--                      (row 10)
--   BENCH_PROOFS       a file of DPoP proofs, one per line, sent in the `DPoP` header: every
--                      request takes the next one and no proof is ever sent twice (run.sh makes
--                      a fresh file before each run, larger than the run can use; should it run
--                      out, the thread stops and the requests in flight go without a proof)
--   BENCH_THREADS      wrk's -t (default 1)
-- done() prints one line that run.sh parses:
--   BENCH rps=<req/s> p50=<us> p99=<us> requests=<n> non2xx=<n> errors=<n> sent=<n> unproved=<n>
-- where sent is the number of tokens or proofs the script handed out (0 with a fixed request; wrk
-- builds one request to check the script before the run, so it may exceed requests by one) and
-- unproved the requests made after BENCH_PROOFS ran out (each a 401: the file was too short).

local threads = {}
local tokens_file = os.getenv("BENCH_TOKENS") or ""
local single = os.getenv("BENCH_TOKEN") or ""
local state_file = os.getenv("BENCH_TOKEN_STATE") or ""
local nthreads = tonumber(os.getenv("BENCH_THREADS") or "1") or 1
local dpop_token = os.getenv("BENCH_DPOP_TOKEN") or ""
local proofs_file = os.getenv("BENCH_PROOFS") or ""
if proofs_file ~= "" and tokens_file ~= "" then error("BENCH_PROOFS and BENCH_TOKENS exclude each other") end
count = 0
unproved = 0

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

if dpop_token ~= "" then
  wrk.headers["Authorization"] = "DPoP " .. dpop_token
end

-- Reads a file of non-empty lines into a table.
local function read_lines(file)
  local lines = {}
  for line in io.lines(file) do
    if line ~= "" then lines[#lines + 1] = line end
  end
  if #lines == 0 then error("no lines in " .. file) end
  return lines
end

if tokens_file ~= "" then
  local tokens, n, idx, hdrs

  function init(args)
    tokens = read_lines(tokens_file)
    n = #tokens
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

if proofs_file ~= "" then
  local proofs, n, idx, hdrs

  function init(args)
    proofs = read_lines(proofs_file)
    n = #proofs
    idx = tid - 1
    hdrs = {}
    for k, v in pairs(wrk.headers) do hdrs[k] = v end
  end

  -- Thread t sends proofs t, t+T, t+2T, ... of the file, each at most once. Past the end of the
  -- file the thread stops, and the request already being written goes without a proof (401
  -- "missing proof", counted in `unproved`): a proof is never sent twice.
  function request()
    if idx < n then
      hdrs["DPoP"] = proofs[idx + 1]
      idx = idx + nthreads
      count = count + 1
    else
      hdrs["DPoP"] = nil
      if unproved == 0 then wrk.thread:stop() end
      unproved = unproved + 1
    end
    return wrk.format(nil, nil, hdrs)
  end
end

function done(summary, latency, requests)
  local most, sent, short = 0, 0, 0
  for _, t in ipairs(threads) do
    local c = t:get("count") or 0
    if c > most then most = c end
    sent = sent + c
    short = short + (t:get("unproved") or 0)
  end
  if tokens_file ~= "" and state_file ~= "" then
    local f = io.open(state_file, "w")
    f:write(string.format("%d\n", read_state() + most * nthreads))
    f:close()
  end
  local e = summary.errors
  local secs = summary.duration / 1e6
  io.write(string.format(
    "BENCH rps=%.1f p50=%d p99=%d requests=%d non2xx=%d errors=%d sent=%d unproved=%d\n",
    summary.requests / secs, latency:percentile(50), latency:percentile(99),
    summary.requests, e.status, e.connect + e.read + e.write + e.timeout, sent, short))
end
