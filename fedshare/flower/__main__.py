"""``python -m fedshare.flower``: see `fedshare.flower.launch`."""

import sys

from fedshare.flower.launch import main

sys.exit(main())
