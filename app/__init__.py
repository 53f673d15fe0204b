"""ntk-eos dashboard: a Panel app that trains one run per browser tab and streams the engine's
measurements (sharpness, NTK spectrum, alignment) into live Bokeh plots.

``app.dashboard.Dashboard`` is the app (served by ``app/main.py``, or shown in a notebook);
``app.server.launch.serve`` starts ``panel serve`` for the ``ntk-eos serve`` command, which
``app.cli``, the console script, adds to the engine's. This module imports nothing: the isolated
run-file reader (``python -m app.files.runfile``) runs it first.
"""
