"""policies/: the eviction and scheduling policy contracts and each policy's own rules."""
