"""``python -m charter.cli``: the same as the ``charter`` command."""

import sys

from charter.cli.commands import main

sys.exit(main())
