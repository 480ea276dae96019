-- Ingest: PUT [base]/<Type>/<id> (update-as-create) of every line of the given NDJSON files,
-- each exactly once, then stop.
--   wrk -t2 -c16 -d900s --latency -s put.lua http://127.0.0.1:PORT/fhir -- TOKEN NTHREADS FILE...
-- Thread k of NTHREADS sends lines k, k+N, k+2N, ...; a connection whose thread has nothing left
-- to send waits (delay) instead of repeating a request, and the thread stops once every one of
-- its requests has been answered, so wrk's request count and duration are those of the load.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local common = dofile(dir .. "common.lua")

local counter = 0
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
end

local reqs, idx, answered, failed = {}, 1, 0, 0

function init(args)
  local token = args[1]
  nthreads = tonumber(args[2])
  local base = wrk.path:gsub("/$", "")
  local headers = {
    ["Authorization"] = "Bearer " .. token,
    ["Content-Type"] = "application/fhir+json",
    ["Accept"] = "application/fhir+json",
    ["Prefer"] = "return=minimal",
  }
  local n = 0
  for a = 3, #args do
    for _, line in ipairs(common.read_lines(args[a])) do
      if n % nthreads == tid then
        local rtype, id = line:match('^{"resourceType":"(%w+)","id":"([^"]+)"')
        assert(rtype, "line does not start with resourceType and id: " .. line:sub(1, 80))
        reqs[#reqs + 1] = wrk.format("PUT", base .. "/" .. rtype .. "/" .. id, headers, line)
      end
      n = n + 1
    end
  end
end

function delay()
  if idx > #reqs then return 3600000 end -- nothing left: idle until the thread stops
  return 0
end

-- wrk calls request() once on thread 0's state right after init() to check the request
-- ("verify"), and discards the result: that first call on thread 0 must not consume a body.
local verified = false

function request()
  if not verified then
    verified = true
    if tid == 0 then return reqs[1] end
  end
  local r = reqs[idx]
  idx = idx + 1
  return r
end

function response(status, headers, body)
  answered = answered + 1
  if status < 200 or status > 299 then
    failed = failed + 1
    if failed <= 3 then io.stderr:write("PUT failed: HTTP ", status, " ", body:sub(1, 300), "\n") end
  end
  if answered == #reqs then finished() end
end

-- wrk's main thread sleeps for the whole -d before it reports, whatever the threads do; SIGINT
-- ends that sleep and makes it report with the time actually used. Each thread that is done
-- stops its loop and leaves a marker; the one that finds every marker interrupts wrk.
function finished()
  local f = io.open("/proc/self/stat")
  local pid = f:read("*n")
  f:close()
  local marks = "/tmp/ironfhir-bench-wrk-" .. pid
  os.execute("mkdir -p " .. marks)
  io.open(marks .. "/" .. tid, "w"):close()
  wrk.thread:stop()
  local n = 0
  for _ in io.popen("ls " .. marks):lines() do n = n + 1 end
  if n >= nthreads then
    -- system() ignores SIGINT in wrk while it waits for the shell: signal from the background,
    -- once os.execute has returned (adds ~20 ms to the measured time).
    os.execute("rm -rf " .. marks .. "; (sleep 0.02; kill -INT " .. pid .. ") >/dev/null 2>&1 &")
  end
end

done = common.done
