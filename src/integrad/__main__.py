"""``python -m integrad``: the same command line as the ``integrad`` script."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
