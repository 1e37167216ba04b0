"""Memory benchmarks: the CPU peak-RSS sweep (``bench_memory_cpu``), the CPU measurement (``activations_cpu``) of the
activation formula in the ESTIMATED H100 plan (``rapid.memory_plan``)."""
