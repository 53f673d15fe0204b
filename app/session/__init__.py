"""One visitor's runs, without a browser: the settings, the training thread that steps the
engine, the server's limits, and the runs kept for comparison."""
