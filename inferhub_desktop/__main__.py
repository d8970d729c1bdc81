"""Run `python -m inferhub_desktop` as the `inferhub` command."""

import sys

# Absolute, so the frozen app can use this file as its entry script, which runs outside the package.
from inferhub_desktop.cli import main

sys.exit(main())
