"""Cold start of `veza up` to a usable page, measured from outside.

    .venv/bin/python -m tests.local.coldstart [--runs 3]

For each run: a fresh data dir, then the same dir again (warm). "Usable" means the entry
point answers `/` (the page), `/web/app.js`, `/api/v1/rooms` with the example room declared and
`/stream/radio/now-playing`. Prints one line per start and, last, one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from tests.support.up import EXAMPLES
from veza_local.controlplane import wait_for
from veza_local.services import free_port


def _ok(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:  # noqa: S310 - loopback
            return r.read() if r.status == 200 else None
    except OSError:
        return None


def start(data: Path, timeout: float = 120.0) -> float:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "veza_cli.main", "up", "-f", str(EXAMPLES), "--data-dir", str(data),
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def usable() -> bool:
        if proc.poll() is not None:
            raise SystemExit(f"veza up exited with {proc.returncode}; see {data}/logs")
        rooms = _ok(f"{base}/api/v1/rooms")
        return bool(rooms and b'"general"' in rooms and _ok(f"{base}/") and _ok(f"{base}/web/app.js")
                    and _ok(f"{base}/stream/radio/now-playing"))

    try:
        wait_for(usable, timeout, interval=0.05, message="the page, the API and the stream answering")
        return time.monotonic() - t0
    except TimeoutError:
        raise SystemExit(f"not usable within {timeout} s") from None
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    fresh, warm = [], []
    for i in range(args.runs):
        data = Path(tempfile.mkdtemp(prefix="veza-coldstart-"))
        try:
            fresh.append(start(data / "data"))
            warm.append(start(data / "data"))
        finally:
            shutil.rmtree(data, ignore_errors=True)
        print(f"run {i + 1}: fresh {fresh[-1]:.1f} s, warm {warm[-1]:.1f} s, load {os.getloadavg()[0]:.1f}",
              file=sys.stderr)
    print(json.dumps({"fresh_seconds": [round(x, 2) for x in fresh], "warm_seconds": [round(x, 2) for x in warm],
                      "fresh_best": round(min(fresh), 2), "warm_best": round(min(warm), 2),
                      "load_average_1m": round(os.getloadavg()[0], 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
