import sys

from wiresnake.cli import main

sys.exit(main())
