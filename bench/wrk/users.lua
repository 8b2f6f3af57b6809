-- users.lua: every request carries an X-User-ID taken in turn from 1000
-- users, so that header-keyed stages (shard, split) see many keys. The
-- requests are built once per thread: request() only picks one, which keeps
-- wrk's own cost per request low.
local users = 1000
local reqs = {}
local n = 0
local threads = 0

setup = function(thread)
  thread:set("id", threads)
  threads = threads + 1
end

init = function(args)
  for i = 1, users do
    reqs[i] = wrk.format(nil, nil, { ["X-User-ID"] = "user-" .. i })
  end
  -- Threads start at different users so that they do not send the same
  -- keys in lockstep.
  n = ((id or 0) * 337) % users
end

request = function()
  n = n % users + 1
  return reqs[n]
end

dofile(os.getenv("BENCH_WRK_DIR") .. "/report.lua")
