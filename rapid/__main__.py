"""``python -m rapid``: the same as the ``rapid`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
