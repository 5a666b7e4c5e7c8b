"""Run the qsm command line: python -m qsmlib."""

import sys

from .cli import main

sys.exit(main())
