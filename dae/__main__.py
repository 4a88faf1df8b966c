import sys

from dae.commands import main

sys.exit(main())
