"""``python -m offline``: see offline/cli.py."""
import sys

from .cli import main

sys.exit(main())
