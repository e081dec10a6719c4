"""Test doubles of the worker side, never used for real endpoints: `instant.InstantEngine`
answers every request at once without a model, so tests and benchmarks can measure the
serving path (gateway, Ray Serve handles, streaming, accounting, rollouts) alone."""
