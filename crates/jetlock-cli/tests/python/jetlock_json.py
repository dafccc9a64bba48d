"""A minimal jetlock client speaking the JSON protocol (v1) over NATS.

It needs nothing but a NATS client (nats-py) and JSON, and is meant to be
read: it shows everything a client in any language has to do.

    1. Pick a session id: 1-4 dot-separated tokens of [A-Za-z0-9_-].
    2. Subscribe to `jetlock.to.<session>` (core NATS) BEFORE sending
       anything: answers and notices are not stored, a late subscriber
       misses them.
    3. Heartbeat on `jetlock.hb.<session>` (core NATS request) every ~1/4 of
       the session timeout; a session that stops heartbeating is declared
       dead and loses its locks.
    4. Send requests as JetStream publishes to `jetlock.req.<op>.<session>`
       (the JETLOCK_REQ stream stores them, so an acknowledged request
       survives a coordinator restart), with header
       `Nats-Msg-Id: <session>:<request id>` so a retried publish is stored
       once. In a deployment whose requests are partitioned (bucket 0's
       stream metadata `jetlock.partitions`), publishing to
       `jetlock.preq.<partition>.<op>.<session>` lets only the partition's
       coordinator read it; `jetlock.req.` still works, read by all.
    5. Match answers to requests by their `re` field (= the request's `id`).
       `queued` is informational; any other answer ends the request.
       Messages without `re` are notices (`contended`, `revoke_notice`,
       `lost`) or errors about requests whose id was unreadable.

Authoritative definitions: crates/jetlock/src/protocol.rs.
"""

import asyncio
import json
import secrets

import nats
import nats.js.errors

try:  # only for deployments of several buckets or partitioned requests
    import xxhash
except ImportError:
    xxhash = None

VERSION = 1


class Pending:
    """One request in flight: `first` resolves with the first answer (the
    `queued` answer of a waiting acquire, or the final answer), `final`
    with the answer that ends the request."""

    def __init__(self, loop, id):
        self.id = id  # the request id (`target` of a cancel)
        self.first = loop.create_future()
        self.final = loop.create_future()


class Session:
    def __init__(self, url, name="py", timeout_ms=5000):
        # A random suffix makes the session id unique; the prefix helps
        # people reading coordinator logs.
        self.id = f"{name}.{secrets.token_hex(8)}"
        self.url = url
        self.timeout_ms = timeout_ms
        self.nc = None
        self.js = None
        self._pending = {}  # request id -> Pending
        self.notices = asyncio.Queue()  # contended / revoke_notice / lost
        self.orphan_errors = asyncio.Queue()  # errors without `re`
        self._hb_task = None
        self.last_ack = None  # the last heartbeat answer
        self._readers = {}  # read/write lock name -> (reader owner, holds)
        self.buckets = None  # how many buckets the locks spread over
        self.partitions = None  # how many partitions the requests split into

    # -- connection and heartbeats ------------------------------------------

    async def connect(self):
        self.nc = await nats.connect(self.url, name=f"jetlock-py {self.id}")
        self.js = self.nc.jetstream()
        # Subscribe first, and flush so the server has the subscription
        # before any request can be answered.
        await self.nc.subscribe(f"jetlock.to.{self.id}", cb=self._dispatch)
        await self.nc.flush()
        # One heartbeat in the foreground: proves a coordinator is up and
        # tells it our timeout, then keep beating in the background.
        await self.heartbeat()
        self._hb_task = asyncio.create_task(self._heartbeat_loop())
        return self

    def _heartbeat_body(self, leaving=False):
        body = {"timeout_ms": self.timeout_ms}
        # Optional: our connection as the server names it. When the server
        # reports that this connection closed (process killed), the
        # coordinator declares the session dead at once instead of after
        # `timeout_ms`. nats-py keeps the server's INFO in a private field.
        server_id = getattr(self.nc, "_server_info", {}).get("server_id")
        if server_id and self.nc.client_id is not None:
            body["conn"] = {"server_id": server_id, "cid": self.nc.client_id}
        if leaving:
            body["leaving"] = True  # release our locks now
        return json.dumps(body).encode()

    async def heartbeat(self, leaving=False):
        msg = await self.nc.request(
            f"jetlock.hb.{self.id}", self._heartbeat_body(leaving), timeout=2
        )
        ack = json.loads(msg.data)
        # {"v":1,"alive":true,"timeout_ms":5000,"coordinators":1}
        self.last_ack = ack
        if not ack.get("alive", False) and not leaving:
            raise RuntimeError(f"session {self.id} was declared dead: {ack}")
        # The coordinator may clamp our timeout; beat on its figure.
        self.timeout_ms = ack.get("timeout_ms", self.timeout_ms)
        return ack

    async def _heartbeat_loop(self):
        while True:
            await asyncio.sleep(self.timeout_ms / 4000)
            try:
                await self.heartbeat()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a missed beat is not fatal; keep going
                print(f"[{self.id}] heartbeat failed: {e!r}", flush=True)

    async def close(self):
        """Stops heartbeating, says goodbye (the coordinator releases what
        we still hold) and closes the connection."""
        if self._hb_task:
            self._hb_task.cancel()
        try:
            await self.heartbeat(leaving=True)
        except Exception:
            pass  # the session times out anyway
        await self.nc.close()

    # -- answers ------------------------------------------------------------

    async def _dispatch(self, msg):
        try:
            answer = json.loads(msg.data)
        except ValueError:
            print(f"[{self.id}] unreadable answer: {msg.data!r}", flush=True)
            return
        pending = self._pending.get(answer.get("re"))
        if pending is None:
            # No `re` (or one we do not know): a notice, or an error about
            # a request whose id the coordinator could not read.
            if answer.get("type") == "error":
                self.orphan_errors.put_nowait(answer)
            else:
                self.notices.put_nowait(answer)
            return
        if not pending.first.done():
            pending.first.set_result(answer)
        if answer.get("type") != "queued":
            del self._pending[answer["re"]]
            if not pending.final.done():
                pending.final.set_result(answer)

    # -- requests -----------------------------------------------------------

    def next_id(self):
        # Unguessable: the stream drops a second message with the same
        # Nats-Msg-Id whoever sends it, so a predictable id (r1, r2, ...)
        # lets another user of the account drop this request in advance.
        return secrets.token_urlsafe(16)

    async def send(self, op, body, id=None):
        """Publishes a request (a dict, or raw bytes to test the
        coordinator's checks). Returns a Pending when the request has an id
        to match the answer to."""
        if isinstance(body, dict):
            id = body["id"]
            body = json.dumps(body).encode()
        pending = None
        if id is not None:
            pending = Pending(asyncio.get_running_loop(), id)
            self._pending[id] = pending
        headers = {"Nats-Msg-Id": f"{self.id}:{id or secrets.token_hex(8)}"}
        # JetStream publish: returns once the request stream has stored it.
        ack = await self.js.publish(await self._subject(op, body), body, headers=headers)
        if ack.duplicate:
            # Our first send of this id was not stored: somebody else used
            # the message id first, and nobody will answer this request.
            self._pending.pop(id, None)
            raise RuntimeError(f"message id of request {id!r} was already used; use a new id")
        return pending

    async def _subject(self, op, body):
        """Where request `op` goes: its lock's partition in a deployment
        whose requests are partitioned (docs/PROTOCOL.md, "Partitioned
        requests"), else `jetlock.req.`, which every coordinator reads.
        A body that is not a request about a lock goes there too, to be
        refused."""
        await self._deployment()
        try:
            key = key_of(json.loads(body)["key"])
        except (ValueError, KeyError, TypeError, AttributeError):
            key = None
        if self.partitions > 1 and key is not None and xxhash is not None:
            return f"jetlock.preq.{partition_of(key, self.partitions)}.{op}.{self.id}"
        return f"jetlock.req.{op}.{self.id}"

    async def request(self, op, body, timeout=10):
        pending = await self.send(op, body)
        return await asyncio.wait_for(pending.final, timeout)

    async def raw_request(self, op, body_bytes, id=None, timeout=10):
        """Sends `body_bytes` as is. With `id`, waits for the answer whose
        `re` is `id`; without, for the next error that has no `re`."""
        pending = await self.send(op, body_bytes, id=id)
        if pending is None:
            return await asyncio.wait_for(self.orphan_errors.get(), timeout)
        return await asyncio.wait_for(pending.final, timeout)

    def start_acquire(self, key, ttl_ms=10000, wait_ms=0, owner=None):
        body = {"v": VERSION, "id": self.next_id(), "key": key,
                "ttl_ms": ttl_ms, "wait_ms": wait_ms}
        if owner is not None:
            body["owner"] = owner  # reentrancy identity; default: the session
        return self.send("acquire", body)

    async def acquire(self, key, ttl_ms=10000, wait_ms=0, owner=None):
        """`granted`, or `error` (busy, timeout, ...). Waits at most
        wait_ms in the coordinator's queue (0: try-lock)."""
        pending = await self.start_acquire(key, ttl_ms, wait_ms, owner)
        return await asyncio.wait_for(pending.final, wait_ms / 1000 + 10)

    async def release(self, key, token):
        return await self.request(
            "release", {"v": VERSION, "id": self.next_id(), "key": key, "token": token})

    async def renew(self, key, token, ttl_ms=10000):
        return await self.request(
            "renew", {"v": VERSION, "id": self.next_id(), "key": key,
                      "token": token, "ttl_ms": ttl_ms})

    async def cancel(self, key, target):
        return await self.request(
            "cancel", {"v": VERSION, "id": self.next_id(), "key": key, "target": target})

    # -- read/write locks and semaphores ------------------------------------
    #
    # No op of their own: they are ordinary locks under reserved names, and
    # one rule between them (docs/PROTOCOL.md, "Read/write locks and
    # semaphores"). A newcomer takes its own key first, then reads the gate
    # from the stream leader; the gate's holder holds the gate first, then
    # reads the holders' keys. Reading the bucket needs a user allowed to
    # (the shipped `worker` role), not only the JSON subjects.

    async def read_lock(self, name, ttl_ms=10000, wait_ms=0, owner=None):
        """`granted` for the session's reader key `<name>:~rw:read:<session>`
        (give it back with `read_unlock`), or `error`.

        The key's holds share one owner, `reader.<random>`, new each time
        the session takes the key afresh: a key an earlier read left held
        (its release lost) is then not mistaken for ours, and its lease
        ends it."""
        mine, gate = f"{name}:~rw:read:{self.id}", f"{name}:~rw:write"
        owner = owner or self.id
        held = await self._read_hold(name, mine, ttl_ms)
        if held["type"] != "granted" or await self._gate_open(gate, owner):
            return held
        # A writer holds or waits for the gate: give the hold back and
        # queue behind it, then take the key while holding the gate.
        await self.read_unlock(name, held)
        passed = await self.acquire(gate, ttl_ms, wait_ms, owner=owner)
        if passed["type"] != "granted":
            return passed
        try:
            return await self._read_hold(name, mine, ttl_ms)
        finally:
            await self.release(gate, passed["token"])

    async def _read_hold(self, name, mine, ttl_ms):
        reader, holds = self._readers.get(name, (f"reader.{secrets.token_hex(8)}", 0))
        held = await self.acquire(mine, ttl_ms, 0, owner=reader)
        if held["type"] == "granted":
            self._readers[name] = (reader, holds + 1)
        return held

    async def read_unlock(self, name, held):
        """Gives back one read of `name` taken by `read_lock`."""
        reader, holds = self._readers.pop(name, (None, 0))
        if holds > 1:
            self._readers[name] = (reader, holds - 1)
        return await self.release(held["key"], held["token"])

    async def write_lock(self, name, ttl_ms=10000, wait_ms=0, owner=None):
        """`granted` for the gate `<name>:~rw:write` once no reader holds,
        or `error` (`timeout`; `upgrade` when this session reads `name`)."""
        gate, readers = f"{name}:~rw:write", f"{name}:~rw:read"
        deadline = asyncio.get_running_loop().time() + wait_ms / 1000
        held = await self.acquire(gate, ttl_ms, wait_ms, owner=owner)
        if held["type"] != "granted":
            return held
        while True:
            holders, last = await self._holders(readers)
            if f"{readers}:{self.id}" in holders:
                await self.release(gate, held["token"])
                return {"type": "error", "code": "upgrade", "key": name,
                        "message": "this session reads the lock; release the reads first"}
            # None held, as read; confirmed by a write expecting the newest
            # sequence read below the readers' prefix.
            if not holders and await self._confirm(gate, readers, True, last):
                return held
            if asyncio.get_running_loop().time() >= deadline:
                await self.release(gate, held["token"])
                return {"type": "error", "code": "timeout", "key": name,
                        "message": f"readers still hold {name}"}
            await self._keep(gate, held, ttl_ms)

    async def permit(self, name, permits, ttl_ms=10000, wait_ms=0):
        """`granted` for one of `<name>:~sem:permit:<i>`, i < permits, or
        `error`. Permits are not reentrant: each attempt is its own owner."""
        queue = f"{name}:~sem:queue"
        slots = [f"{name}:~sem:permit:{i}" for i in range(permits)]
        owner = f"{self.id}#{secrets.token_hex(6)}"
        deadline = asyncio.get_running_loop().time() + wait_ms / 1000
        for slot in slots:
            held = await self.acquire(slot, ttl_ms, 0, owner=owner)
            if held["type"] == "granted":
                if await self._gate_open(queue, None):
                    return held
                # Somebody queued first: the permit is theirs.
                await self.release(slot, held["token"])
                break
            if held.get("code") != "busy":
                return held
        if wait_ms == 0:
            return {"type": "error", "code": "busy", "key": name,
                    "message": f"every permit of {name} below {permits} is held, or queued for"}
        passed = await self.acquire(queue, ttl_ms, wait_ms, owner=owner)
        if passed["type"] != "granted":
            return passed
        try:
            while True:
                taken, _ = await self._holders(f"{name}:~sem:permit")
                for slot in slots:
                    if slot in taken:
                        continue
                    held = await self.acquire(slot, ttl_ms, 0, owner=owner)
                    if held["type"] == "granted" or held.get("code") != "busy":
                        return held
                if asyncio.get_running_loop().time() >= deadline:
                    return {"type": "error", "code": "timeout", "key": name,
                            "message": f"no permit of {name} came free"}
                await self._keep(queue, passed, ttl_ms)
        finally:
            await self.release(queue, passed["token"])

    async def _keep(self, gate, held, ttl_ms):
        """A pause while holding a gate and waiting on holders' keys; the
        gate's lease is renewed as it goes (reads only; nothing is stored)."""
        await asyncio.sleep(0.02)
        now = asyncio.get_running_loop().time()
        renewed = held.setdefault("_renewed", now)
        if now - renewed > ttl_ms / 3000:
            held["_renewed"] = now
            answer = await self.renew(gate, held["token"], ttl_ms)
            if answer["type"] != "renewed":
                raise RuntimeError(f"lost the gate {gate}: {answer}")

    async def _gate_open(self, gate, owner):
        """Whether `gate` is vacant, or held by this session as `owner`:
        read from the stream leader, then confirmed by a write (a paused
        leader that was deposed meanwhile may answer a read with what it
        had; it cannot commit a write)."""
        while True:
            holder, seq = await self._holder(gate)
            if holder is not None and (owner is None or holder != (self.id, owner)):
                return False
            if await self._confirm(gate, gate, False, seq):
                return True

    async def _bucket(self, name):
        """The bucket holding `name`'s key (docs/PROTOCOL.md, "Key
        layouts"): bucket 0 names how many there are in its stream
        metadata, read once. Only read/write locks and semaphores need it:
        they read the bucket; plain locks only send requests."""
        await self._deployment()
        index = bucket_of(key_of(name), self.buckets)
        return BUCKET if index == 0 else f"{BUCKET}_{index}"

    async def _deployment(self):
        """Reads once what bucket 0's stream metadata says of the
        deployment: its layout, buckets and request partitions."""
        if self.buckets is None:
            info = await self.js.stream_info(f"KV_{BUCKET}")
            meta = info.config.metadata or {}
            if meta.get("jetlock.layout", "1") not in ("1", "2", "3"):
                raise RuntimeError(f"bucket {BUCKET} uses key layout {meta['jetlock.layout']}, "
                                   "which this client does not speak")
            self.partitions = int(meta.get("jetlock.partitions", "1"))
            self.buckets = int(meta.get("jetlock.buckets", "1"))

    async def _confirm(self, gate, name, under, seq):
        """Whether the last message of `name`'s key (with `under`, of every
        key below it) is still `seq`: a delete marker on the gate's mark key
        (`N:~rw:mark`) that expects it, by the header
        Nats-Expected-Last-Subject-Sequence-Subject."""
        mark = gate.rsplit(":", 1)[0] + ":mark"
        # The mark, the gate and the parts are all in the lock's bucket.
        bucket = await self._bucket(name)
        subject = f"$KV.{bucket}.{key_of(name)}" + (".>" if under else "")
        headers = {
            "Nats-Expected-Last-Subject-Sequence": str(seq),
            "Nats-Expected-Last-Subject-Sequence-Subject": subject,
            "KV-Operation": "DEL",
            "Nats-TTL": "1s",
        }
        try:
            await self.js.publish(f"$KV.{bucket}.{key_of(mark)}", b"", headers=headers)
            return True
        except nats.js.errors.APIError as e:
            if e.err_code == 10071:  # wrong last sequence: it moved on
                return False
            raise

    async def _holder(self, name):
        """(session, owner) of the record under `name`'s key, or None, and
        the key's last sequence (0: no message)."""
        bucket = await self._bucket(name)
        try:
            msg = await self.js.get_last_msg(f"KV_{bucket}", f"$KV.{bucket}.{key_of(name)}")
        except nats.js.errors.NotFoundError:
            return None, 0  # no message: never held
        headers = msg.headers or {}
        if "KV-Operation" in headers or "Nats-Marker-Reason" in headers:
            return None, msg.seq  # released, purged or expired
        return record_holder(msg.data), msg.seq

    async def _holders(self, under):
        """The names under `under` that are held, and the newest sequence
        among their keys' last messages (0: none): which keys have
        messages, then each key's last one, from the stream leader."""
        bucket = await self._bucket(under)
        prefix = f"$KV.{bucket}.{key_of(under)}."
        info = await self.js.stream_info(f"KV_{bucket}", subjects_filter=prefix + ">")
        held, last = set(), 0
        for subject in (info.state.subjects or {}):
            name = f"{under}:{unescape(subject[len(prefix):])}"
            holder, seq = await self._holder(name)
            last = max(last, seq)
            if holder is not None:
                held.add(name)
        return held, last


BUCKET = "JETLOCK_LOCKS"
PLAIN = set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def key_of(name):
    """A lock name's KV key (docs/PROTOCOL.md, "Lock names and keys")."""
    def segment(s):
        if not s:
            return "="
        return "".join(chr(b) if b in PLAIN else f"={b:02X}" for b in s.encode())
    return ".".join(segment(s) for s in name.split(":"))


def route_of(key):
    """The part of `key` that decides its bucket and partition: the key up
    to its first part (a segment starting with an escaped `~`), or the
    text of a `{tag}` in that."""
    route = key.split(".=7E", 1)[0]
    start = route.find("=7B")
    if start >= 0:
        end = route.find("=7D", start + 3)
        if end > start + 3:
            route = route[start + 3:end]
    return route


def bucket_of(key, buckets):
    """Which of `buckets` buckets holds `key`: xxh3-64 of its route mod
    the count."""
    if buckets <= 1:
        return 0
    if xxhash is None:
        raise RuntimeError(f"the locks spread over {buckets} buckets: "
                           "`pip install xxhash` to find a key's")
    return xxhash.xxh3_64_intdigest(route_of(key).encode()) % buckets


def partition_of(key, partitions):
    """Which of `partitions` request partitions `key`'s requests go to:
    xxh3-64 of its route mod the count."""
    if partitions <= 1:
        return 0
    return xxhash.xxh3_64_intdigest(route_of(key).encode()) % partitions


def unescape(key):
    """A key's name again (for keys this client reads back)."""
    def segment(s):
        if s == "=":
            return ""
        out, i = bytearray(), 0
        while i < len(s):
            if s[i] == "=":
                out.append(int(s[i + 1:i + 3], 16))
                i += 3
            else:
                out.append(ord(s[i]))
                i += 1
        return out.decode()
    return ":".join(segment(s) for s in key.split("."))


def record_holder(data):
    """(session, owner) from a v1 record (docs/PROTOCOL.md, "Record v1"):
    magic 'J', version 1, then bincode strings owner and session."""
    if not data or data[:2] != b"J\x01":
        raise ValueError(f"not a v1 lock record: {data[:8]!r}")
    at = 2

    def varint():
        nonlocal at
        b = data[at]
        at += 1
        width = {0xFB: 2, 0xFC: 4, 0xFD: 8}.get(b)
        if width is None:
            return b
        value = int.from_bytes(data[at:at + width], "little")
        at += width
        return value

    def string():
        nonlocal at
        n = varint()
        s = data[at:at + n].decode()
        at += n
        return s

    owner = string()
    session = string()
    return session, owner
