"""Run `python -m inferhub_desktop` as the `inferhub` command."""

import sys

from .cli import main

sys.exit(main())
