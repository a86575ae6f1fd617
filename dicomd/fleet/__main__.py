"""``python -m dicomd.fleet``: a worker process, started by the node's parent process."""

import sys

from dicomd.fleet.child import main

sys.exit(main())
