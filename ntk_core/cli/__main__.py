"""``python -m ntk_core.cli``: the engine's subcommands, without the dashboard's ``serve``."""

import sys

from .main import main

sys.exit(main())
