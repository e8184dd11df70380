import sys

from chronotope.cli import main

sys.exit(main())
