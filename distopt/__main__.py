"""``python -m distopt`` is the ``distopt`` command."""

import sys

from distopt.cli import main

sys.exit(main())
