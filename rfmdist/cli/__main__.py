"""``python -m rfmdist.cli``: the ``rfmdist`` command without the console script."""

import sys

from rfmdist.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
