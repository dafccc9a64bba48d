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
       once.
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
        ack = await self.js.publish(f"jetlock.req.{op}.{self.id}", body, headers=headers)
        if ack.duplicate:
            # Our first send of this id was not stored: somebody else used
            # the message id first, and nobody will answer this request.
            self._pending.pop(id, None)
            raise RuntimeError(f"message id of request {id!r} was already used; use a new id")
        return pending

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

    async def acquire(self, key, ttl_ms=10000, wait_ms=0):
        """`granted`, or `error` (busy, timeout, ...). Waits at most
        wait_ms in the coordinator's queue (0: try-lock)."""
        pending = await self.start_acquire(key, ttl_ms, wait_ms)
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
