"""``python -m catdog`` runs the packaged CLI."""

import sys

from .cli import main

sys.exit(main())
