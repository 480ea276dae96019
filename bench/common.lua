-- Shared by the wrk scripts of bench/: argument parsing, file reading, and a machine-readable
-- summary line ("BENCH_JSON {...}") that run.sh parses.
local M = {}

function M.read_lines(path)
  local f = assert(io.open(path, "r"), "cannot open " .. path)
  local lines = {}
  for line in f:lines() do
    if #line > 0 then lines[#lines + 1] = line end
  end
  f:close()
  return lines
end

-- done(summary, latency, requests) for every script: one JSON line on stdout.
function M.done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,"max":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max))
end

return M
