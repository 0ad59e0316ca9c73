"""Ignore SIGTERM, start two grandchildren (one in our process group, one escaped with
setsid), write all three pids to PIDS, then sleep forever.  usage: stubborn.py PIDS"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

signal.signal(signal.SIGTERM, signal.SIG_IGN)
same_group = subprocess.Popen(
    ["sleep", "1000"], preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_IGN)
)
escaped = subprocess.Popen(["sleep", "1000"], start_new_session=True)
Path(sys.argv[1]).write_text(f"{os.getpid()} {same_group.pid} {escaped.pid}\n")
while True:
    time.sleep(1)
