"""``python -m charter``: the same as the ``charter`` command."""

import sys

from charter.cli import main

sys.exit(main())
