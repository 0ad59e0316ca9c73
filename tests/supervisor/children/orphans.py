"""Leave N short-lived orphans behind, wait for them to die, count the zombies the
supervisor (our parent, their reaper) left unreaped into RESULT, then exit with CODE.
Only its own count: outside a PID namespace /proc shows the machine's processes, and
other work's zombies are not the supervisor's to reap.  usage: orphans.py N RESULT CODE"""

import os
import sys
import time
from pathlib import Path

n, result, code = int(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
for _ in range(n):
    pid = os.fork()
    if pid == 0:
        # The intermediate exits at once: its child becomes an orphan of the reaper.
        if os.fork() == 0:
            time.sleep(0.2)
            os._exit(0)
        os._exit(0)
    os.waitpid(pid, 0)
time.sleep(1.0)  # the orphans die; the supervisor must have reaped them by now


reaper = os.getppid()


def zombies() -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            state, ppid = stat.rsplit(")", 1)[1].split()[:2]
            if state == "Z" and int(ppid) == reaper:
                out.append(int(entry.name))
    return out


deadline = time.monotonic() + 3
while zombies() and time.monotonic() < deadline:
    time.sleep(0.05)
result.write_text(f"{len(zombies())}\n")
sys.exit(code)
