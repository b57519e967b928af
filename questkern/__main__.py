import sys

from questkern.cli import main

sys.exit(main())
