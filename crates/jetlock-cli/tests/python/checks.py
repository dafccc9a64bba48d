"""What the Python scenarios share: a timed log, answer checks, and the
entry point that runs a scenario against a NATS url."""

import asyncio
import json
import sys
import time

T0 = time.monotonic()


def log(msg):
    print(f"[{time.monotonic() - T0:6.2f}s] {msg}", flush=True)


def expect(answer, type_, code=None):
    """Asserts the answer's type (and error code) and returns it."""
    got = (answer.get("type"), answer.get("code"))
    assert got == (type_, code), f"expected {type_} {code or ''}, got {json.dumps(answer)}"
    return answer


def run(main, label, within=100):
    """Runs `main(url)` with the url from the command line; prints
    `<label>: ok`, or exits 1 on the first failed check."""
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} <nats url>")
    try:
        asyncio.run(asyncio.wait_for(main(sys.argv[1]), within))
    except AssertionError as e:
        print(f"{label}: FAILED: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    print(f"{label}: ok", flush=True)
