-- wrk script for bench/_load.py: POST the body in $WRK_BODY_FILE on every request, then print the results as
-- one JSON line (wrk's own text report rounds latencies to two digits).
local f = assert(io.open(os.getenv("WRK_BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = os.getenv("WRK_CONTENT_TYPE") or "application/json"
-- extra headers as a flat JSON object of strings ({"Name": "value"}), e.g. the V2 binary extension's length
for name, value in string.gmatch(os.getenv("WRK_HEADERS") or "", '"([^"]+)":%s*"([^"]*)"') do
  wrk.headers[name] = value
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d, ' ..
    '"p50_us": %d, "p99_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
