-- wrk script: POST the pre-generated form bodies (one per line of args[1]) round-robin,
-- and count every answer whose status is not args[2] (204 for the relay).
-- Requests are formatted once in init() so that wrk spends its time on the wire, not in Lua.
-- Usage: wrk -s push.lua URL -- BODIES_FILE [EXPECTED_STATUS]

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local file = args[1] or error("usage: wrk -s push.lua URL -- BODIES_FILE [STATUS]")
  expected = tonumber(args[2] or "204")
  unexpected = 0
  answered = 0
  requests = {}
  local headers = { ["Content-Type"] = "application/x-www-form-urlencoded" }
  for line in io.lines(file) do
    requests[#requests + 1] = wrk.format("POST", nil, headers, line)
  end
  -- each thread starts at a different body so threads do not send identical sequences
  index = math.random(#requests)
end

function request()
  index = index % #requests + 1
  return requests[index]
end

function response(status, headers, body)
  answered = answered + 1
  if status ~= expected then
    unexpected = unexpected + 1
  end
end

function done(summary, latency, requests)
  local bad, ok = 0, 0
  for _, thread in ipairs(threads) do
    bad = bad + thread:get("unexpected")
    ok = ok + thread:get("answered")
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH-JSON {"requests":%d,"answered":%d,"unexpected_status":%d,"duration_us":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p99":%d,"max":%d}}\n',
    summary.requests, ok, bad, summary.duration, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(99), latency.max))
end
