"""``python -m streamkit``: the ``streamkit`` command (see docs/cli.md)."""

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
