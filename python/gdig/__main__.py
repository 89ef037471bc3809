import sys

from gdig.cli import main

sys.exit(main())
