"""``python -m proxy`` runs the seamline command line."""

import sys

from .cli import main

sys.exit(main())
