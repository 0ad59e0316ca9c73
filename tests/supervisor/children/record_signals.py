"""Record every signal received (one number per line in LOG) until all of EXPECTED came;
write 'ready' to READY once the handlers are in.  usage: record_signals.py READY LOG S1,S2,..."""

import signal
import sys
import time
from pathlib import Path

ready, log, expected = (
    Path(sys.argv[1]),
    Path(sys.argv[2]),
    {int(s) for s in sys.argv[3].split(",")},
)
seen: set[int] = set()


def handler(signum: int, _frame: object) -> None:
    seen.add(signum)
    with log.open("a") as f:
        f.write(f"{signum}\n")


for s in signal.valid_signals():
    if 1 <= s <= 31 and s not in (signal.SIGKILL, signal.SIGSTOP):
        signal.signal(s, handler)
ready.write_text("ready\n")
deadline = time.monotonic() + 30
while not expected <= seen and time.monotonic() < deadline:
    time.sleep(0.01)
sys.exit(0 if expected <= seen else 1)
