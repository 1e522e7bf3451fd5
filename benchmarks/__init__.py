"""Hand-run benchmarks (see benchmarks/RESULTS.md). Never imported by the tests or the pipeline."""
