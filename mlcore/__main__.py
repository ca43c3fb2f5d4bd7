"""``python -m mlcore``."""

import sys

from mlcore.cli import main

sys.exit(main())
