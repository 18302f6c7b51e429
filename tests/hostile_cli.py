"""Run `edgedp` commands on hostile input in a subprocess with bounded memory and a hang guard.

The address-space cap is set inside the child after torch is imported, as what it has mapped by
then plus HEADROOM: a CUDA build of torch maps over 3 GB at import and a CPU build 0.6 GB, so a
fixed RLIMIT_AS would either break the import or allow too much. What the command itself may
allocate is then HEADROOM whatever the build; the hostile files would need far more than that.
The timeout only guards against hangs; nothing here asserts on time.
"""
from __future__ import annotations

import json
import subprocess
import sys

HEADROOM = 2 * 1024**3
TIMEOUT_S = 300

_CHILD = """
import contextlib, io, json, resource, sys
import torch  # noqa: F401  (mapped before the cap is set)
from edgedp.cli import main

def _vm_bytes():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize")

cap = _vm_bytes() + int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
calls = json.loads(sys.argv[1])
if len(calls) == 1 and calls[0][0] == "--real-exit":
    sys.exit(main(calls[0][1:]))
out = []
for argv in calls:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    out.append([code, err.getvalue()])
print(json.dumps(out))
"""


def cli_many(calls: list[list[str]]) -> list[subprocess.CompletedProcess]:
    """Each argv through `edgedp.cli.main` in one capped child (one torch import, not one per call)."""
    res = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(calls), str(HEADROOM)], capture_output=True,
                         text=True, timeout=TIMEOUT_S)
    assert res.returncode == 0, res.stderr[-3000:]
    results = json.loads(res.stdout.strip().splitlines()[-1])
    return [subprocess.CompletedProcess(argv, code, "", err) for argv, (code, err) in zip(calls, results)]


def cli(*argv: str) -> subprocess.CompletedProcess:
    """One `edgedp` command as its own capped process: the exit status is the process's."""
    return subprocess.run([sys.executable, "-c", _CHILD, json.dumps([["--real-exit", *argv]]), str(HEADROOM)],
                          capture_output=True, text=True, timeout=TIMEOUT_S)
