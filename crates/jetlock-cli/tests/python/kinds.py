"""Read/write locks and semaphores from Python, with nothing but nats-py and
JSON (jetlock_json.py): the ordered steps first, then sessions racing, judged
by what each client believed and by the fencing tokens.

Usage: kinds.py <nats url>     (a `jetlock serve` must be running)
Exits non-zero on the first failed check.
"""

import asyncio
import json
import random
import time

from checks import expect, log, run
from jetlock_json import Session, bucket_of, key_of, partition_of


async def not_before(task, what, seconds=0.5):
    """Asserts `task` has not finished after `seconds` (it waits on a holder)."""
    done, _ = await asyncio.wait({task}, timeout=seconds)
    assert not done, f"{what} finished while it should wait: {task.result()}"


async def ordered(A, B, C, D):
    name = "py:ledger"
    # a. Two sessions read at once.
    ra = expect(await A.read_lock(name), "granted")
    rb = expect(await B.read_lock(name), "granted")
    assert ra["key"] == f"{name}:~rw:read:{A.id}", ra
    log(f"a. A and B read {name} (tokens {ra['token']}, {rb['token']})")

    # b. A writer waits for both readers; a reader after it waits for it.
    write = asyncio.create_task(C.write_lock(name, wait_ms=20000))
    await not_before(write, "C's write beside two readers")
    late_read = asyncio.create_task(D.read_lock(name, wait_ms=20000))
    await not_before(late_read, "D's read behind a waiting writer")
    expect(await A.read_unlock(name, ra), "released")
    await not_before(write, "C's write beside one reader")
    expect(await B.read_unlock(name, rb), "released")
    w = expect(await asyncio.wait_for(write, 10), "granted")
    assert w["token"] > max(ra["token"], rb["token"]), (w, ra, rb)
    log(f"b. C writes (token {w['token']}, above both readers') once both released")
    # What the rule's checks rest on: a confirmation that expects what is
    # no longer the gate's last word is refused.
    gate = f"{name}:~rw:write"
    assert not await D._confirm(gate, gate, False, 0), "a stale confirmation passed"
    assert await D._confirm(gate, gate, False, w["token"]), "a current one was refused"
    await not_before(late_read, "D's read beside the writer")
    expect(await C.release(w["key"], w["token"]), "released")
    rd = expect(await asyncio.wait_for(late_read, 10), "granted")
    assert rd["token"] > w["token"], (rd, w)
    log(f"b. D reads (token {rd['token']}) after the writer released")

    # c. A writer that reads the lock itself is refused: it would wait on
    #    its own read forever.
    expect(await D.write_lock(name, wait_ms=1000), "error", "upgrade")
    expect(await D.read_unlock(name, rd), "released")
    log("c. D's write while it reads: upgrade")

    # d. A semaphore of 2: the third waits for a release, in order.
    sem = "py:bank-connector"
    pa = expect(await A.permit(sem, 2), "granted")
    pb = expect(await B.permit(sem, 2), "granted")
    assert {pa["key"], pb["key"]} == {f"{sem}:~sem:permit:0", f"{sem}:~sem:permit:1"}
    expect(await C.permit(sem, 2), "error", "busy")
    third = asyncio.create_task(C.permit(sem, 2, wait_ms=20000))
    await not_before(third, "a third permit of 2")
    expect(await A.release(pa["key"], pa["token"]), "released")
    pc = expect(await asyncio.wait_for(third, 10), "granted")
    assert pc["key"] == pa["key"], (pc, pa)
    for p, s in ((pb, B), (pc, C)):
        expect(await s.release(p["key"], p["token"]), "released")
    log("d. semaphore of 2: two granted, the third waited for a release")


async def racing(sessions, seconds=4.0):
    """Sessions read (90%) and write (10%) one lock, and take permits of a
    semaphore of 2, at random; every belief is a (start, end, kind, token)
    interval on this process's one clock."""
    name, sem = "py:race", "py:race-sem"
    beliefs = {"rw": [], "sem": []}
    stop = time.monotonic() + seconds

    async def worker(s):
        while time.monotonic() < stop:
            if random.random() < 0.5:
                kind = "write" if random.random() < 0.1 else "read"
                take = s.write_lock if kind == "write" else s.read_lock
                held = await take(name, wait_ms=30000)
                group = "rw"
            else:
                kind = "permit"
                held = await s.permit(sem, 2, wait_ms=30000)
                group = "sem"
            expect(held, "granted")
            start = time.monotonic()
            await asyncio.sleep(random.uniform(0, 0.02))
            end = time.monotonic()
            beliefs[group].append((start, end, kind, held["token"], s.id))
            if kind == "read":
                expect(await s.read_unlock(name, held), "released")
            else:
                expect(await s.release(held["key"], held["token"]), "released")

    await asyncio.gather(*(worker(s) for s in sessions))
    rw = sorted(beliefs["rw"])
    for i, (s1, e1, k1, t1, who1) in enumerate(rw):
        for s2, e2, k2, t2, who2 in rw[i + 1:]:
            if s2 >= e1:
                break
            assert k1 == k2 == "read", f"{k1} {who1} {s1:.4f}-{e1:.4f} beside {k2} {who2} {s2:.4f}-{e2:.4f}"
    for s1, e1, k1, t1, _ in rw:
        if k1 != "write":
            continue
        for s2, e2, k2, t2, _ in rw:
            # A reader that believed wholly before the writer has a lower
            # token; one wholly after, a higher one.
            if e2 <= s1:
                assert t2 < t1, f"reader token {t2} before writer token {t1}"
            elif s2 >= e1:
                assert t2 > t1, f"reader token {t2} after writer token {t1}"
    events = sorted([(s, 1) for s, *_ in beliefs["sem"]] + [(e, -1) for _, e, *_ in beliefs["sem"]],
                    key=lambda x: (x[0], x[1]))
    most = level = 0
    for _, d in events:
        level += d
        most = max(most, level)
    assert most <= 2, f"{most} permit holders of 2 at once"
    reads = sum(1 for b in rw if b[2] == "read")
    log(f"racing: {reads} reads, {len(rw) - reads} writes, {len(beliefs['sem'])} permits "
        f"(at most {most} at once), no writer beside anyone")
    assert reads and len(rw) > reads and beliefs["sem"], "every kind was taken"


async def main(url):
    # docs/PROTOCOL.md's vectors of a key's bucket.
    for name, buckets, want in [("account:42", 3, 0), ("account:43", 3, 2),
                                ("account:{7}:debit", 3, 0), ("orders", 16, 11)]:
        assert bucket_of(key_of(name), buckets) == want, (name, buckets)
    # ... and of its request partition.
    for name, partitions, want in [("account:42", 64, 21), ("account:42:~rw:read:s1", 64, 21),
                                   ("account:42", 1, 0)]:
        assert partition_of(key_of(name), partitions) == want, (name, partitions)
    sessions = [await Session(url, name=f"py{i}").connect() for i in range(6)]
    where = await sessions[0]._bucket("py:ledger")
    log(f"py:ledger is in bucket {where} of {sessions[0].buckets}; "
        f"requests in {sessions[0].partitions} partition(s), its subject "
        f"{await sessions[0]._subject('acquire', json.dumps({'key': 'py:ledger'}))}")
    try:
        await ordered(*sessions[:4])
        await racing(sessions)
    finally:
        for s in sessions:
            await s.close()


if __name__ == "__main__":
    run(main, "python kinds")
