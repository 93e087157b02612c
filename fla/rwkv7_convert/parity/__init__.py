"""The GPU parity matrix (fla's kernels against the float64 reference, cell by cell): for tests and benchmarks only;
no library module imports it."""
