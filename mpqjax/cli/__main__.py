"""``python -m mpqjax.cli``: the ``mpqjax`` command."""

import sys

from mpqjax.cli.command import main

sys.exit(main())
