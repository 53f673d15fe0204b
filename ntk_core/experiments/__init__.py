"""Many runs and what they say: sweeps on Dask and their summaries, the two-layer linear
theory, the measurement benchmark and the paper's reproduction."""
