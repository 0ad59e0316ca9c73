"""Write 'started' to MARK, then sleep until signalled (default dispositions).
usage: start_marker.py MARK"""

import sys
import time
from pathlib import Path

Path(sys.argv[1]).write_text("started\n")
time.sleep(1000)
