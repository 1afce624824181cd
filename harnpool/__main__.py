"""``python -m harnpool``: the command-line tool (see ``harnpool --help``)."""

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
