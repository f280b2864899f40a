"""``python -m pytyche.cli``: the ``pytyche`` command."""

import sys

from pytyche.cli import main

if __name__ == "__main__":
    sys.exit(main())
