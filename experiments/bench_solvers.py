r"""`python -m experiments.bench_solvers`: the solver-overhead benchmark (`experiments.benchmarks.solvers`)."""

from absl import app

from experiments.benchmarks.solvers import define_flags, main

if __name__ == "__main__":
  define_flags()
  app.run(main)
