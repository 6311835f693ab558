"""python -m diffbir_cli: see diffbir_cli/cli.py."""

import sys

from .cli import main

sys.exit(main())
