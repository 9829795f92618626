import sys

from pactmerge.cli import main

sys.exit(main())
