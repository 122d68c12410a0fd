"""`python -m tirreno_shipper` runs the command line."""

import sys

from tirreno_shipper.cli import main

sys.exit(main())
