"""End-to-end check that a Python service can use jetlock with nothing but
nats-py and JSON (see jetlock_json.py).

Usage: scenario.py <nats url>     (a `jetlock serve` must be running)
Exits non-zero on the first failed check.
"""

import asyncio
import json

from checks import expect, log, run
from jetlock_json import Session

KEY = "py:acct:1"


async def main(url):
    names = ["A", "B", "C", "D", "E"]
    sessions = {}
    for n in names:
        sessions[n] = await Session(url, name=f"py{n}").connect()
    A, B, C, D, E = (sessions[n] for n in names)
    who = {s.id: n for n, s in sessions.items()}
    ack = A.last_ack
    log(f"sessions {', '.join(f'{n}={s.id}' for n, s in sessions.items())}; "
        f"heartbeat ack {json.dumps(ack)}")
    assert ack.get("alive") is True and ack.get("coordinators", 0) >= 1, ack

    try:
        # a. A takes the lock.
        granted = expect(await A.acquire(KEY, ttl_ms=10000, wait_ms=0), "granted")
        token_a = granted["token"]
        assert isinstance(token_a, int) and token_a > 0, granted
        assert granted["key"] == KEY and granted["holds"] == 1, granted
        log(f"a. A granted {KEY} token {token_a}")

        # b. B, C, D queue in that order (each waits for its `queued` answer
        #    before the next sends, which fixes arrival order); A releases
        #    and the lock is handed down the queue.
        waiting = {}
        for position, n in enumerate(["B", "C", "D"], start=1):
            pending = await sessions[n].start_acquire(KEY, ttl_ms=10000, wait_ms=20000)
            first = expect(await asyncio.wait_for(pending.first, 10), "queued")
            assert first["position"] == position, f"{n}: {first}"
            waiting[n] = pending
            log(f"b. {n} queued at position {first['position']}")
        released = expect(await A.release(KEY, token_a), "released")
        assert released["holds"] == 0, released
        log("b. A released")
        order, tokens = [], [token_a]
        while waiting:
            by_future = {p.final: n for n, p in waiting.items()}
            done, _ = await asyncio.wait(by_future, timeout=20,
                                         return_when=asyncio.FIRST_COMPLETED)
            assert done, f"nobody was granted; still waiting: {sorted(waiting)}"
            for fut in done:  # normally exactly one
                n = by_future[fut]
                answer = expect(fut.result(), "granted")
                del waiting[n]
                order.append(n)
                tokens.append(answer["token"])
                log(f"b. {n} granted token {answer['token']} (waiters behind: {answer['waiters']})")
                expect(await sessions[n].release(KEY, answer["token"]), "released")
        assert order == ["B", "C", "D"], f"grant order {order}, expected B, C, D"
        assert all(a < b for a, b in zip(tokens, tokens[1:])), f"tokens not increasing: {tokens}"
        log(f"b. grant order {order}, tokens {tokens}: FIFO and increasing")

        # c. A try-lock on a held lock is refused at once with the holder.
        held = expect(await A.acquire(KEY, wait_ms=0), "granted")
        token = held["token"]
        assert token > tokens[-1], f"token {token} after {tokens}"
        busy = expect(await E.acquire(KEY, wait_ms=0), "error", "busy")
        holder = busy.get("holder")
        assert holder and holder["session"] == A.id and holder["token"] == token, busy
        log(f"c. E's try-lock: busy, holder {who[holder['session']]} token {holder['token']}")

        # d. Malformed requests get `error` answers with stable codes.
        cases = [
            ("acquire", b"this is not json", None, "bad_request"),
            ("acquire", b'{"v":2,"id":"bad-v","key":"k"}', "bad-v", "unsupported_version"),
            ("release", b'{"v":1,"id":"bad-token","key":"k","token":"x"}', "bad-token", "bad_request"),
            ("acquire", b'{"v":1,"id":"bad-key","key":""}', "bad-key", "invalid_key"),
        ]
        for op, body, id_, code in cases:
            answer = expect(await E.raw_request(op, body, id=id_), "error", code)
            assert answer.get("re") == id_, f"re {answer.get('re')!r}, expected {id_!r}: {answer}"
            log(f"d. {op} {body.decode()!r}: error {code} (re {answer.get('re')!r})")

        # e. Another session cannot release A's lock, even with A's token.
        refused = expect(await B.release(KEY, token), "error", "not_holder")
        log(f"e. B releasing A's lock with A's token: {refused['code']}")
        busy = expect(await C.acquire(KEY, wait_ms=0), "error", "busy")
        assert busy["holder"]["session"] == A.id and busy["holder"]["token"] == token, busy
        log("e. the lock is still A's (C's try-lock: busy)")
        expect(await A.release(KEY, token), "released")
        log("e. A released")

        # Notices are informational; show what arrived (A was told that
        # B waited behind it).
        for n, s in sessions.items():
            seen = []
            while not s.notices.empty():
                seen.append(s.notices.get_nowait().get("type"))
            if seen:
                log(f"notices for {n}: {seen}")
    finally:
        for s in sessions.values():
            await s.close()


if __name__ == "__main__":
    run(main, "python scenario")
