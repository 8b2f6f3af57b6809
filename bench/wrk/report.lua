-- report.lua: wrk's summary as one machine-readable line, so that bench/run.sh
-- does not parse wrk's human output. Latencies in microseconds; "status"
-- counts responses with a status of 400 or more.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d connect=%d read=%d write=%d status=%d timeout=%d\n",
    summary.requests, summary.duration,
    latency:percentile(50.0), latency:percentile(99.0),
    e.connect, e.read, e.write, e.status, e.timeout))
end
