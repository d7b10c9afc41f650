-- wrk script: POST the JSON body in the file named by BODY_FILE, and count answers
-- that carry GraphQL errors: both servers answer HTTP 200 with {"errors": ...}, so
-- wrk's own non-2xx count would pass a server that fails every request.
local f = assert(io.open(os.getenv("BODY_FILE"), "r"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
-- A bearer token (bench/tokens.py) when AUTHORIZATION names one: every request sends it.
local authorization = os.getenv("AUTHORIZATION")
if authorization and authorization ~= "" then
  wrk.headers["Authorization"] = authorization
end

local threads = {}

setup = function(thread)
  table.insert(threads, thread)
end

init = function(args)
  gql_errors = 0
end

response = function(status, headers, body)
  if string.find(body, '"errors"', 1, true) then
    gql_errors = gql_errors + 1
  end
end

done = function(summary, latency, requests)
  local with_errors = 0
  for _, thread in ipairs(threads) do
    with_errors = with_errors + thread:get("gql_errors")
  end
  io.write(string.format("RESULT rps=%.1f p50_ms=%.2f p99_ms=%.2f errors=%d non2xx=%d gql_errors=%d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status, with_errors))
end
