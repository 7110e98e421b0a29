-- wrk script for benchmarks/serve_chunks.py: cycle through a fixed list of requests.
--
-- Usage: wrk -s wrk_paths.lua http://127.0.0.1:PORT -- REQUESTS_FILE [HEADERS_FILE]
-- Each line of REQUESTS_FILE is "<path>" or "<path>\t<Range header value>".
-- Each line of HEADERS_FILE is "<Name>: <value>", sent with every request (e.g. an
-- Authorization header; a file, so that no credential shows in the process list).
-- Requests are formatted once in init() so the Lua side costs as little CPU as possible
-- (wrk shares the machine's cores with the servers it measures).

local thread_count = 0

function setup(thread)
  -- Threads start at different places in the list so they do not ask for the same
  -- chunk in lockstep.
  thread:set("start_offset", thread_count * 29)
  thread_count = thread_count + 1
end

local requests = {}
local index = 0

function init(args)
  local common = {}
  if args[2] then
    local headers_file = assert(io.open(args[2], "r"))
    for line in headers_file:lines() do
      local name, value = line:match("^([^:]+):%s*(.-)%s*$")
      if name then
        common[name] = value
      end
    end
    headers_file:close()
  end
  local file = assert(io.open(args[1], "r"))
  for line in file:lines() do
    local path, range = line:match("^([^\t]+)\t?(.*)$")
    if path then
      local headers = {}
      for name, value in pairs(common) do
        headers[name] = value
      end
      if range ~= "" then
        headers["Range"] = range
      end
      requests[#requests + 1] = wrk.format("GET", path, headers)
    end
  end
  file:close()
  assert(#requests > 0, "no requests in " .. args[1])
  index = (start_offset or 0) % #requests
end

function request()
  index = index % #requests + 1
  return requests[index]
end
