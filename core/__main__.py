import sys

from spikereveal.cli import main

sys.exit(main())
