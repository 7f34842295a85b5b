"""A cluster: N serving loops (replicas) on one SimPy clock behind a router (policies/routing/)."""
