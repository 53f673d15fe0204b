"""Serving the dashboard: ``panel serve`` with the server's defaults and limits, its ``--setup``
script, building pages off the event loop, and a BokehJS fix for served pages."""
