"""Drop-in acceptance rate: write N files into pending/ the careful way
(.dN.tmp then rename; not timed), then time one `queuectl status` that accepts
them all. Usage: python bench/dropins.py DIR [N] [canonical]"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time


def main() -> None:
    base, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
    spool = os.path.join(base, "spool")
    shutil.rmtree(spool, ignore_errors=True)
    qc = os.path.join(os.path.dirname(sys.executable), "queuectl")
    subprocess.run([qc, "--spool", spool, "status"], check=True, capture_output=True)
    pending = os.path.join(spool, "pending")
    for i in range(n):
        tmp = os.path.join(pending, f".d{i}.tmp")
        with open(tmp, "w") as f:
            json.dump({"id": f"j{i}", "command": f"echo {i}"}, f)
        os.rename(tmp, os.path.join(pending, f"j{i}.json"))
    os.sync()
    t = time.perf_counter()
    subprocess.run([qc, "--spool", spool, "status"], check=True, capture_output=True)
    dt = time.perf_counter() - t
    print(f"{n} drop-ins accepted in {dt:.2f}s: {n / dt:,.0f} jobs/s ({base})")
    shutil.rmtree(spool, ignore_errors=True)


if __name__ == "__main__":
    main()
