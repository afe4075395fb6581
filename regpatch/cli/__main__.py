"""``python -m regpatch.cli``: the command line, as the ``regpatch`` script."""

import sys

from regpatch.cli import main

sys.exit(main())
