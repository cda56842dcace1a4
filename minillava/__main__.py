import sys

from minillava.cli import main

sys.exit(main())
