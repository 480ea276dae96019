-- Ingest with server-assigned ids: POST [base]/<Type> of the NDJSON lines (no ids), cycling
-- through them for the whole run (-d).
--   wrk -t2 -c16 -d20s --latency -s post.lua http://127.0.0.1:PORT/fhir -- TOKEN NTHREADS FILE
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local common = dofile(dir .. "common.lua")

local counter = 0
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
end

local reqs, idx, failed = {}, 1, 0

function init(args)
  local token, nthreads = args[1], tonumber(args[2])
  local base = wrk.path:gsub("/$", "")
  local headers = {
    ["Authorization"] = "Bearer " .. token,
    ["Content-Type"] = "application/fhir+json",
    ["Accept"] = "application/fhir+json",
    ["Prefer"] = "return=minimal",
  }
  for n, line in ipairs(common.read_lines(args[3])) do
    if (n - 1) % nthreads == tid then
      local rtype = line:match('^{"resourceType":"(%w+)"')
      reqs[#reqs + 1] = wrk.format("POST", base .. "/" .. rtype, headers, line)
    end
  end
  assert(#reqs > 0, "no bodies for this thread")
end

function request()
  local r = reqs[idx]
  idx = idx % #reqs + 1
  return r
end

function response(status, headers, body)
  if status ~= 201 then
    failed = failed + 1
    if failed <= 3 then io.stderr:write("POST failed: HTTP ", status, " ", body:sub(1, 300), "\n") end
  end
end

done = common.done
