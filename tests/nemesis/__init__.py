"""A Jepsen-style nemesis: real nodes, seeded faults, a workload witnessed from outside, a checker."""
