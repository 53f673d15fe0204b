"""Run files in and out of the dashboard: the isolated reader for files from outside, the
exports, and the server's runs folder. (``runfile`` runs as its own process: keep this package
free of imports.)"""
