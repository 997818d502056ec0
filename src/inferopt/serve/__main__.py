"""`python -m inferopt.serve REPO ...`: the same as `inferopt serve REPO ...`."""

import sys

from inferopt.commands.serve import main

sys.exit(main())
