"""Application code behind the command-line tools and benchmarks: the demo pipeline and its report,
dataset makers, the run cache and experiment harnesses. Libraries (seed_core, seed_det) never
import from here."""
