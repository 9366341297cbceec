"""The demo pipeline (tools/demo.py), which the detection benchmarks reuse: stages cached in their
folders (`run_cache`), scheduled side by side in worker processes (`side_by_side`), the demo's
stages (`demo`), their scoring (`scoring`) and report (`report`)."""
