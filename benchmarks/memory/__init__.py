"""Memory benchmarks: the CPU peak-RSS sweep (``bench_memory_cpu``), the ESTIMATED H100 plan (``plan_h100``) and
the CPU measurement of the activation formula it uses (``activations_cpu``)."""
