import sys

from engram_lab.cli import main

sys.exit(main())
