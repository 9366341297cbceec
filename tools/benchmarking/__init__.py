"""The experiments behind benchmarks/*.py: SEED's claim on real digits (`paper_claim`, `lr_sweep`),
transfer to detection (`transfer_claim`) and the teacher ladder (`teacher_ladder`, `ladder_report`).
Each benchmark script parses its command line and calls one of these."""
