"""``python -m regpatch.demo``: the embedded default job."""

import sys

from regpatch.demo.story import main

sys.exit(main())
