"""The original's code paths, replayed: the oracle that the tests check our numbers against and
that the benchmarks time ours against. Never imported by the project itself."""
