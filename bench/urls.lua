-- GET [base]/<line> for lines drawn uniformly at random from a file of relative URLs
-- (`Patient?name=smi`, `Patient/123`) or of `<Type>\t<id>` lines (ids.tsv: read by id), for
-- the whole run (-d). Used by run.sh (read by id) and search.sh.
--   wrk -t2 -c16 -d30s --latency -s urls.lua http://127.0.0.1:PORT/fhir -- TOKEN FILE
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local common = dofile(dir .. "common.lua")

local counter = 0
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
end

local paths, headers, failed = {}, nil, 0

function init(args)
  local base = wrk.path:gsub("/$", "")
  headers = { ["Authorization"] = "Bearer " .. args[1], ["Accept"] = "application/fhir+json" }
  for _, line in ipairs(common.read_lines(args[2])) do
    local rtype, id = line:match("^(%w+)\t(.+)$")
    paths[#paths + 1] = base .. "/" .. (rtype and (rtype .. "/" .. id) or line)
  end
  math.randomseed(os.time() + 7919 * tid)
end

function request()
  return wrk.format("GET", paths[math.random(#paths)], headers)
end

function response(status, headers, body)
  if status ~= 200 then
    failed = failed + 1
    if failed <= 3 then io.stderr:write("GET failed: HTTP ", status, " ", body:sub(1, 300), "\n") end
  end
end

done = common.done
