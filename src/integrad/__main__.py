"""``python -m integrad``: the same command line as the ``integrad`` script."""

import sys

from .app.cli import main

if __name__ == "__main__":
    sys.exit(main())
