"""`python -m generator_host` is the same as the `generator-host` command."""

import sys

from generator_host.cli import main

sys.exit(main())
