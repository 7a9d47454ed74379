"""`python3 -m pvezfsha` runs the same command line as the installed `pvezfsha`."""

import sys

from pvezfsha.cli import main

sys.exit(main())
