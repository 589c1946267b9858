"""``python -m cutpaste.cli``: the ``cutpaste`` command without the installed script."""

import sys

from cutpaste.cli.app import main

if __name__ == "__main__":
    sys.exit(main())
