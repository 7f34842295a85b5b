"""apcsim/workloads: generators, trace readers, request and retention priorities."""
