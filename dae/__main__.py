import sys

from dae.cli import main

sys.exit(main())
