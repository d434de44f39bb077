"""`python -m kdns`: the same as the `kdns` console script."""

import sys

from kdns.cli import main

sys.exit(main())
