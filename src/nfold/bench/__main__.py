"""``python -m nfold.bench``: the same as ``nfold bench``."""

import sys

from .cli import main

sys.exit(main())
