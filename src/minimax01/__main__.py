"""`python -m minimax01 ...` runs the command line."""

import sys

from minimax01.cli import main

sys.exit(main())
