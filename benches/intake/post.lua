-- wrk script for `benches/intake/run.sh`: every request POSTs the same body of LINES events.
local lines = tonumber(os.getenv("LINES") or "1000")
local packages = tonumber(os.getenv("PACKAGES") or "5000")
local parts = {}
for i = 1, lines do
  local p = string.format("pkg-%05d", (i * 7919) % packages)
  local k = i % 10
  if k < 6 then
    parts[#parts + 1] = string.format('{"type":"download","package":"%s","version":"1.0.0"}', p)
  elseif k < 9 then
    parts[#parts + 1] = string.format('{"type":"install","package":"%s","version":"1.0.0","ok":%s}', p, (i % 20 == 0) and "false" or "true")
  else
    parts[#parts + 1] = string.format('{"type":"lookup","latency_ms":%d.5}', i % 250)
  end
end
wrk.method = "POST"
wrk.body = table.concat(parts, "\n") .. "\n"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("TOKEN") or "")
wrk.headers["Content-Type"] = "application/x-ndjson"

local non_ok = 0
response = function(status, headers, body)
  if status ~= 200 then non_ok = non_ok + 1 end
end

done = function(summary, latency, requests)
  io.write(string.format("events per request: %d\n", lines))
  io.write(string.format("requests completed: %d\n", summary.requests))
  io.write(string.format("events sent in completed requests: %d\n", summary.requests * lines))
  io.write(string.format("events per second: %.0f\n", summary.requests * lines / (summary.duration / 1e6)))
  io.write(string.format("median request latency: %.1f ms\n", latency:percentile(50) / 1000))
end
