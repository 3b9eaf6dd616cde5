"""`python -m pylitefs` is the `pylitefs` command."""

import sys

from pylitefs.cli import main

sys.exit(main())
