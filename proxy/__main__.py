"""``python -m proxy`` runs the seamline command line."""

import sys

from proxy.cli.main import main

sys.exit(main())
