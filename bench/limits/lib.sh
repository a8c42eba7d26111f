# Shared by bench/limits/*.sh (sourced; needs $work and a `metric_in PORT`).

# post_distinct PORT N PREFIX: POSTs at least N distinct topics PREFIX/…
# with wrk (4 connections), in 2-second rounds until the hub counted N.
post_distinct() {
  local port=$1 n=$2 prefix=$3 round=0
  cat >"$work/distinct.lua" <<'LUA'
local threads = {}
function setup(thread) thread:set("id", #threads); table.insert(threads, thread) end
function init(args) n = 0; base = args[1] .. "/" .. args[2] end
function request()
  n = n + 1
  return wrk.format("POST", "/topics/" .. base .. "/" .. id .. "/" .. n, nil, "1")
end
LUA
  while (($(metric_in "$port") < n)); do
    wrk -t4 -c4 -d2s -s "$work/distinct.lua" "http://127.0.0.1:$port" -- "$prefix" "$round" >/dev/null 2>&1
    round=$((round + 1))
  done
}
