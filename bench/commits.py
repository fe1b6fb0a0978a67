"""(f) The gateway on PostgreSQL when each commit waits for a synchronous standby.

    .venv/bin/python -m bench.run --only f        # GATEWAY_BENCH_POSTGRES_URL, or a local server

With a synchronous standby, the commit of a transaction that wrote waits for the standby's
answer (a network round trip or more) while the transaction keeps its locks and stays invisible;
a transaction that wrote nothing commits at once (PostgreSQL waits only for commits with a
transaction id: xact.c, RecordTransactionCommit). Here a TCP proxy between the gateway and
PostgreSQL, in a process of its own (`python -m bench.commits proxy`), plays the standby. It
parses the frontend protocol (it answers SSLRequest and GSSENCRequest "N" itself), forwards
every byte unchanged and in order, and holds each COMMIT of a transaction that wrote for the
delay before forwarding it: a simple query COMMIT, or the Execute of a statement parsed from one
(psycopg prepares a statement run five times on a connection, COMMIT included). It tells
transactions that wrote from the server's command tags (INSERT, UPDATE, DELETE or MERGE of rows,
DDL). The arm "every COMMIT" holds read-only commits too, as a pessimistic bound.

Two ratios, 10 ms commits against fast ones (direct connections), measured in the same run:
  - personalize: POST /v1/personalize answered per second by gunicorn with 8 workers, from 16
    client threads asking for random seeded subjects with granted consent; p50 latency and the
    answers other than 200 (there must be none) of each arm;
  - writers: 32 threads of this process, a connection each, committing transactions
    (`write_transaction(serialize=False)`) of one inserted row, with its audit entry (`audit()`:
    pending in the transaction, chained after the commit) or without; audited tx/s against
    plain tx/s, with 10 ms commits (the figure) and with fast ones.
Both also run through the proxy without delay, which tells the proxy's own cost from the
delay's. The arms take turns in rounds, so that drift hits them alike, and each reports the
commits the proxy held and the CPU it took. Then the audit chain is sealed and verified: it must
hold exactly one entry per request answered, or per audited transaction.

Each run works in fresh schemas of the PostgreSQL database, dropped at the end; the keystore
stays on SQLite in the instance folder.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import http.client
import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent

# Startup-phase request codes of the PostgreSQL protocol (a length, then one of these).
SSL_REQUEST, GSSENC_REQUEST = 80877103, 80877104
# Command tags of statements that give a transaction an id (and so a commit a standby confirms).
ROW_TAGS = {b"INSERT", b"UPDATE", b"DELETE", b"MERGE"}
DDL_TAGS = {b"CREATE", b"ALTER", b"DROP", b"TRUNCATE", b"GRANT", b"REVOKE", b"COMMENT"}
MODES = ("writes", "all")
# The arms: (name, COMMIT delay in ms through the proxy or None for direct, commits held).
ARMS: tuple[tuple[str, float | None, str], ...] = (
    ("fast", None, "writes"),
    ("proxy", 0, "writes"),
    ("slow", 10, "writes"),
    ("all", 10, "all"),
)
LABELS = {
    "fast": "direct, fast commits",
    "proxy": "through the proxy, no delay",
    "slow": "10 ms commits",
    "all": "10 ms on every COMMIT",
}


# --- The proxy (its own process) -----------------------------------------------------------


@dataclass
class CommitDelayProxy:
    """Forward connections to PostgreSQL at `target`, holding COMMITs for `delay` seconds:
    those of transactions that wrote (mode "writes"), or every one (mode "all")."""

    target: tuple[str, int]
    delay: float = 0.0
    mode: str = "writes"
    stats: Counter[str] = field(default_factory=Counter)
    log_types: bool = False

    def client(self) -> asyncio.Protocol:
        self.stats["connections"] += 1
        return _ClientSide(self)


class _ClientSide(asyncio.Protocol):
    """One client connection: its messages are parsed, and forwarded in order to its own
    server connection, each COMMIT to hold after the delay."""

    def __init__(self, proxy: CommitDelayProxy) -> None:
        self.proxy = proxy
        self.inbox = bytearray()
        self.started = False  # the startup packet is through: typed messages follow
        self.holding = False  # a COMMIT at the head of the inbox waits for its delay
        self.released = False  # ... and has waited: it goes now
        self.wrote = False  # the open transaction wrote (the server's command tags say)
        self.statements: set[bytes] = set()  # prepared statements that COMMIT, by name
        self.portals: set[bytes] = set()  # portals bound to one of them
        self.client: asyncio.Transport | None = None
        self.server: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.client = transport
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_connection(
                lambda: _ServerSide(self), *self.proxy.target
            )
        except OSError:
            assert self.client is not None
            self.client.close()
            return
        self.server = transport
        self.pump()

    def data_received(self, data: bytes) -> None:
        self.inbox += data
        self.pump()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.server is not None:
            self.server.close()

    def pump(self) -> None:
        """Forward every complete message of the inbox, up to a COMMIT to hold."""
        if self.server is None or self.holding:
            return
        buffer, pos = self.inbox, 0
        if not self.started:
            pos = self._startup()
        while self.started and len(buffer) - pos >= 5:
            end = pos + 1 + int.from_bytes(buffer[pos + 1 : pos + 5], "big")
            if end > len(buffer):
                break
            if not self.released and self._holds(buffer[pos], bytes(buffer[pos + 5 : end])):
                self.holding = True
                asyncio.get_running_loop().call_later(self.proxy.delay, self._release)
                break
            self.released = False
            pos = end
        if pos:
            self.server.write(bytes(buffer[:pos]))
            del buffer[:pos]

    def _release(self) -> None:
        self.holding, self.released = False, True
        self.pump()

    def _startup(self) -> int:
        """Answer encryption requests "N" (the client goes on in clear); returns how many bytes
        of the inbox go to the server (the startup packet, once complete)."""
        assert self.client is not None
        while len(self.inbox) >= 8:
            length = int.from_bytes(self.inbox[:4], "big")
            if len(self.inbox) < length:
                return 0
            if int.from_bytes(self.inbox[4:8], "big") in (SSL_REQUEST, GSSENC_REQUEST):
                self.proxy.stats["encryption_requests_refused"] += 1
                self.client.write(b"N")
                del self.inbox[:length]
                continue
            self.started = True  # a StartupMessage, or a CancelRequest (nothing follows)
            return length
        return 0

    def _holds(self, kind: int, body: bytes) -> bool:
        """Whether this message runs a COMMIT to hold: a simple query, or the Execute of a
        portal bound to a statement parsed from one (psycopg prepares a statement it has run
        five times on a connection, COMMIT included, and then only binds and executes it)."""
        stats = self.proxy.stats
        if self.proxy.log_types:
            stats[f"client:{chr(kind)}"] += 1
        if kind == ord("Q"):
            if not _is_commit(body.rstrip(b"\0")):
                return False
        elif kind == ord("P"):  # Parse: statement name, query, parameter types
            name, query, _ = body.split(b"\0", 2)
            if _is_commit(query):
                self.statements.add(name)
            else:
                self.statements.discard(name)
            return False
        elif kind == ord("B"):  # Bind: portal name, statement name, parameters
            portal, statement, _ = body.split(b"\0", 2)
            if statement in self.statements:
                self.portals.add(portal)
            else:
                self.portals.discard(portal)
            return False
        elif kind == ord("E"):  # Execute: portal name, row limit
            if body.split(b"\0", 1)[0] not in self.portals:
                return False
        else:
            return False
        stats[f"commit:{chr(kind)}"] += 1
        if self.proxy.delay <= 0 or not (self.wrote or self.proxy.mode == "all"):
            stats["commits_passed"] += 1
            return False
        stats["commits_held"] += 1
        return True


class _ServerSide(asyncio.Protocol):
    """The server's side of a connection: bytes go back to the client as they come; command
    tags and transaction ends are noted (only those messages are read whole)."""

    def __init__(self, link: _ClientSide) -> None:
        self.link = link
        self.partial = bytearray()  # the start of a message to read whole, or of a header
        self.skip = 0  # bytes of a message not read that are still to come

    def data_received(self, data: bytes) -> None:
        assert self.link.client is not None
        self.link.client.write(data)
        if self.skip >= len(data):
            self.skip -= len(data)
            return
        buffer, pos = (self.partial + data, 0) if self.partial else (data, self.skip)
        self.partial, self.skip = bytearray(), 0
        while pos < len(buffer):
            if len(buffer) - pos < 5:
                self.partial = bytearray(buffer[pos:])
                return
            kind = buffer[pos]
            end = pos + 1 + int.from_bytes(buffer[pos + 1 : pos + 5], "big")
            if kind in (ord("C"), ord("Z")):
                if end > len(buffer):
                    self.partial = bytearray(buffer[pos:])
                    return
                self._note(kind, bytes(buffer[pos + 5 : end]))
            elif end > len(buffer):
                self.skip = end - len(buffer)
                return
            pos = end

    def _note(self, kind: int, body: bytes) -> None:
        link = self.link
        if kind == ord("C"):  # CommandComplete: a tag such as b"INSERT 0 1"
            words = body.rstrip(b"\0").split()
            if words and (words[0] in DDL_TAGS or (words[0] in ROW_TAGS and words[-1] != b"0")):
                link.wrote = True
        elif body[:1] == b"I":  # ReadyForQuery, idle: no transaction open now
            if link.wrote and link.proxy.log_types:
                link.proxy.stats["transactions_wrote"] += 1
            link.wrote = False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.link.client is not None:
            self.link.client.close()


def _is_commit(query: bytes) -> bool:
    return query.strip().rstrip(b";").strip().upper() in (b"COMMIT", b"END")


async def _serve_proxy(proxy: CommitDelayProxy, listen: tuple[str, int]) -> None:
    """Serve until stdin closes. Control lines on stdin: `set DELAY_MS MODE` (answers "ok"),
    `stats` (answers the counters as JSON, and resets them)."""
    server = await asyncio.get_running_loop().create_server(proxy.client, *listen)
    port = server.sockets[0].getsockname()[1]
    print(f"listening {port}", flush=True)
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        words = line.split()
        if words[:1] == ["set"]:
            proxy.delay, proxy.mode = float(words[1]) / 1000, words[2]
            print("ok", flush=True)
        elif words[:1] == ["stats"]:
            print(json.dumps(dict(proxy.stats)), flush=True)
            proxy.stats.clear()
    server.close()


class ProxyProcess:
    """The proxy in a process of its own (no GIL shared with the load it carries)."""

    def __init__(self, target_url: str, *, log_types: bool = False) -> None:
        parts = urlsplit(target_url)
        command = [sys.executable, "-m", "bench.commits", "proxy"]
        command += ["--target", f"{parts.hostname or 'localhost'}:{parts.port or 5432}"]
        if log_types:
            command.append("--log-types")
        self.process = subprocess.Popen(
            command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.port = int(self._answer().split()[1])

    def _stdin(self) -> IO[str]:
        assert self.process.stdin is not None
        return self.process.stdin

    def _answer(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the commit-delay proxy stopped")
        return line.strip()

    def route(self, url: str) -> str:
        """`url` (of the target server) through this proxy."""
        return proxied_url(url, self.port)

    def set(self, delay_ms: float, mode: str = "writes") -> None:
        assert mode in MODES, mode
        self._stdin().write(f"set {delay_ms} {mode}\n")
        self._stdin().flush()
        assert self._answer() == "ok"

    def stats(self) -> dict[str, int]:
        self._stdin().write("stats\n")
        self._stdin().flush()
        found: dict[str, int] = json.loads(self._answer())
        return found

    def stop(self) -> None:
        self._stdin().close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def proxied_url(url: str, port: int) -> str:
    """`url` with its host and port replaced by the proxy's, encryption off (the proxy reads
    the protocol in clear, and would refuse it anyway)."""
    parts = urlsplit(url)
    userinfo, at, _ = parts.netloc.rpartition("@")
    query = urlencode(
        {**dict(parse_qsl(parts.query)), "sslmode": "disable", "gssencmode": "disable"}
    )
    return urlunsplit(parts._replace(netloc=f"{userinfo}{at}127.0.0.1:{port}", query=query))


def proxy_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.commits proxy")
    parser.add_argument("--target", required=True, help="HOST:PORT of PostgreSQL")
    parser.add_argument("--listen", type=int, default=0, help="port (default: a free one)")
    parser.add_argument("--log-types", action="store_true", help="count every message type")
    args = parser.parse_args(argv)
    host, port = args.target.rsplit(":", 1)
    proxy = CommitDelayProxy((host, int(port)), log_types=args.log_types)
    asyncio.run(_serve_proxy(proxy, ("127.0.0.1", args.listen)))


# --- The benchmark ---------------------------------------------------------------------------


def server_url() -> str | None:
    """The PostgreSQL server for (f): GATEWAY_BENCH_POSTGRES_URL, else the local throwaway one
    `scripts/postgres.sh start` starts (installing it if need be); None if neither is there."""
    given = os.environ.get("GATEWAY_BENCH_POSTGRES_URL", "")
    if given:
        return given
    try:
        found = subprocess.run(
            [str(ROOT / "scripts" / "postgres.sh"), "start"],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return found.stdout.strip().splitlines()[-1]


def _pg(url: str) -> Any:
    import psycopg

    return psycopg.connect(url, autocommit=True)


def with_schema(url: str, schema: str) -> str:
    """`url` whose connections use `schema` (search_path, set by libpq's options)."""
    parts = urlsplit(url)
    query = {**dict(parse_qsl(parts.query)), "options": f"-csearch_path={schema}"}
    return urlunsplit(parts._replace(query=urlencode(query)))


@contextmanager
def fresh_schema(url: str, name: str) -> Iterator[str]:
    """A new schema in the database at `url`, dropped afterwards; yields the URL that uses it."""
    schema = f"bench_{name}_{uuid.uuid4().hex[:12]}"
    with closing(_pg(url)) as connection:
        connection.execute(f"CREATE SCHEMA {schema}")
    try:
        yield with_schema(url, schema)
    finally:
        with closing(_pg(url)) as connection:
            connection.execute(f"DROP SCHEMA {schema} CASCADE")


def server_settings(url: str) -> str:
    """The server's version and the settings that decide what a commit costs."""
    with closing(_pg(url)) as connection:
        names = ("server_version", "synchronous_commit", "fsync", "synchronous_standby_names")
        values = [connection.execute(f"SHOW {name}").fetchone()[0] for name in names]
    version, commit, fsync, standbys = values
    return (
        f"PostgreSQL {version} (synchronous_commit={commit}, fsync={fsync}, "
        f"synchronous_standby_names='{standbys}')"
    )


def make_app(home: Path, database_url: str) -> Any:
    """An initialized app on `database_url` (binds this process's database to it)."""
    from gateway import create_app
    from gateway.cli import initialize

    app = create_app(
        {
            "HOME": str(home),
            "DATABASE_URL": database_url,
            "POLICIES": str(ROOT / "policies"),
            "REGISTRY": str(ROOT / "registry"),
            "RATELIMIT_ENABLED": False,
        }
    )
    with app.app_context():
        initialize(app)
    return app


def commit_latency(url: str, rounds: int = 50) -> float:
    """The median seconds of one COMMIT of a one-row write on a single connection at `url`."""
    timings = []
    with closing(_pg(url)) as connection:
        connection.execute("CREATE TEMPORARY TABLE bench_probe (n int)")
        for n in range(rounds):
            connection.execute("BEGIN")
            connection.execute("INSERT INTO bench_probe VALUES (%s)", (n,))
            started = time.perf_counter()
            connection.execute("COMMIT")
            timings.append(time.perf_counter() - started)
    return sorted(timings)[rounds // 2]


def verified_chain(app: Any, expected: int) -> Any:
    """Seal what is pending, then verify the chain: it must be intact and hold `expected`
    entries, or this raises."""
    from gateway.audit import seal_now, verify_database
    from gateway.store.db import database

    with app.app_context(), database.connection_context():
        seal_now(wait=True)
        result = verify_database()
    if not result.ok or result.entries != expected:
        raise AssertionError(f"the audit chain does not verify as expected ({expected}): {result}")
    return result


# Where the time goes ----------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of process `pid` and its children so far (Linux; 0.0 where
    /proc cannot tell)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for found in [pid, *_children(pid)]:
        try:
            fields = Path(f"/proc/{found}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def postmaster(url: str) -> int | None:
    """The pid of the PostgreSQL server at `url` when it runs on this machine (its processes'
    CPU is then counted), else None."""
    with closing(_pg(url)) as connection:
        backend = int(connection.execute("SELECT pg_backend_pid()").fetchone()[0])
        try:
            stat = Path(f"/proc/{backend}/stat").read_text()
        except OSError:
            return None
    return int(stat.rsplit(")", 1)[1].split()[1])  # the backend's parent


def watched(url: str, proxy: ProxyProcess) -> dict[str, int]:
    """The processes whose CPU an arm counts, besides this one and the gateway's: the proxy,
    and the PostgreSQL server (all its processes, whoever they serve) if it runs here."""
    server = postmaster(url)
    return {"proxy": proxy.process.pid, **({"postgres": server} if server else {})}


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all cores; Linux, else 0.0)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return 0.0
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


@dataclass
class Arm:
    """One arm, summed over its rounds: what completed, in how long, and what it cost."""

    seconds: float = 0.0
    done: int = 0  # requests answered 200, or transactions committed
    latencies: list[float] = field(default_factory=list)  # of each, when timed
    statuses: Counter[str] = field(default_factory=Counter)  # HTTP statuses, errors
    held: int = 0  # commits the proxy held
    cpu: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))  # seconds
    measured: float = 0.0  # seconds during which the CPU was counted

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds else 0.0

    @property
    def failed(self) -> int:
        return sum(self.statuses.values()) - self.statuses["200"]

    def percentile_ms(self, share: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))] * 1000 if ordered else 0.0

    def per_item(self, count: float) -> float:
        return count / max(1, self.done)

    def cpu_ms(self) -> str:
        """CPU milliseconds per request or transaction, by process, and the rest of the
        machine's (other processes: noise)."""
        parts = {k: v for k, v in self.cpu.items() if k != "machine"}
        parts["other"] = self.cpu["machine"] - sum(parts.values())
        return ", ".join(f"{k} {self.per_item(v) * 1000:.2f}" for k, v in parts.items())

    def busy(self) -> float:
        """The share of the machine's cores that were busy."""
        cores = os.cpu_count() or 1
        return self.cpu["machine"] / (self.measured * cores) if self.measured else 0.0


@contextmanager
def measured(arm: Arm, proxy: ProxyProcess, pids: dict[str, int]) -> Iterator[None]:
    """Add to `arm` the CPU seconds of the machine, this process and the processes `pids`
    name (with their children), and the commits the proxy held, while the block runs."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    process, machine = time.process_time(), busy_seconds()
    proxy.stats()  # counted from here
    started = time.perf_counter()
    yield
    arm.measured += time.perf_counter() - started
    arm.held += proxy.stats().get("commits_held", 0)
    arm.cpu["machine"] += busy_seconds() - machine
    arm.cpu["this process"] += time.process_time() - process
    for name, pid in pids.items():
        arm.cpu[name] += cpu_seconds(pid) - before[name]


# (f) personalize under gunicorn ---------------------------------------------------------------


def personalize_load(
    arm: Arm, port: int, key: str, subjects: list[str], clients: int, seconds: float
) -> None:
    """`clients` threads calling POST /v1/personalize for random subjects for `seconds`, counted
    in `arm`; each keeps its connection while the server does (gunicorn's sync workers close
    each)."""
    from bench.personalize import CANDIDATES

    bodies = [
        json.dumps({"subject_id": s, "purpose": "recommendations", "candidates": CANDIDATES})
        for s in subjects
    ]
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    arms = [Arm() for _ in range(clients)]
    stop = time.monotonic() + seconds

    def client(mine: Arm, pick: Callable[[list[str]], str]) -> None:
        connection: http.client.HTTPConnection | None = None
        while time.monotonic() < stop:
            if connection is None:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            began = time.perf_counter()
            try:
                connection.request("POST", "/v1/personalize", pick(bodies), headers)
                response = connection.getresponse()
                response.read()
            except (OSError, http.client.HTTPException) as exc:
                mine.statuses[type(exc).__name__] += 1
                connection.close()
                connection = None
                continue
            mine.statuses[str(response.status)] += 1
            if response.status == 200:
                mine.done += 1
                mine.latencies.append(time.perf_counter() - began)
            if response.will_close:
                connection.close()
                connection = None
        if connection is not None:
            connection.close()

    threads = [
        threading.Thread(target=client, args=(mine, random.Random(n).choice))
        for n, mine in enumerate(arms)
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    arm.seconds += time.perf_counter() - started
    for mine in arms:
        arm.done += mine.done
        arm.latencies += mine.latencies
        arm.statuses += mine.statuses


@dataclass
class Site:
    """A seeded instance and the server serving it."""

    url: str  # its database (its own schema), direct
    key: str  # an app client's
    subjects: list[str]  # seeded, with granted consent
    server: Any = None
    answered: int = 0  # personalize requests answered 200: entries in its chain


def bench_personalize(
    home: Path,
    url: str,
    proxy: ProxyProcess,
    *,
    workers: int = 8,
    clients: int = 16,
    seconds: float = 10,
    rounds: int = 2,
    warmup: float = 2,
    subjects: int = 1000,
) -> dict[str, Any]:
    """Two servers, one connecting directly, one through the proxy, each on an instance (schema,
    keyring, witness) of its own seeded alike, so that neither one's sealers chain the other's
    entries. The arms take turns, `rounds` times, so that drift hits them alike."""
    from bench.personalize import Server, seed_subjects
    from gateway.store.clients import Role, create_client
    from gateway.store.db import database

    arms = {name: Arm() for name, _, _ in ARMS}
    with ExitStack() as stack:
        sites: dict[str, Site] = {}
        for name in ("direct", "proxied"):
            schema_url = stack.enter_context(fresh_schema(url, f"f_{name}"))
            app = make_app(home / name, schema_url)
            with app.app_context(), database.connection_context():
                now = datetime.now(UTC)
                _, key = create_client("bench-app", Role.APP, ["recommendations"], now)
                site = sites[name] = Site(schema_url, key, seed_subjects(app, subjects))
            profile = home / name / "profile.json"
            profile.write_text("[]")
            target = schema_url if name == "direct" else proxy.route(schema_url)
            site.server = Server(app, profile, workers, {"GATEWAY_DATABASE_URL": target})
            stack.callback(site.server.stop)  # before its schema is dropped
        for site in sites.values():
            warm = Arm()
            personalize_load(warm, site.server.port, site.key, site.subjects, clients, warmup)
            site.answered += warm.done
            if warm.failed:
                raise RuntimeError(f"personalize answered other than 200: {warm.statuses}")
        others = watched(url, proxy)
        for _ in range(rounds):
            for name, delay, mode in ARMS:
                proxy.set(delay or 0, mode)
                site = sites["direct" if delay is None else "proxied"]
                arm, before = arms[name], arms[name].done
                pids = {"gateway": site.server.process.pid, **others}
                with measured(arm, proxy, pids):
                    load = (site.server.port, site.key, site.subjects, clients, seconds / rounds)
                    personalize_load(arm, *load)
                site.answered += arm.done - before
        proxy.set(0)
        failed = {name: dict(a.statuses) for name, a in arms.items() if a.failed}
        if failed:
            raise RuntimeError(f"personalize answered other than 200: {failed}")
        entries = {
            name: verified_chain(make_app(home / name, site.url), site.answered).entries
            for name, site in sites.items()
        }
    return {
        "workers": workers,
        "clients": clients,
        "subjects": subjects,
        "arms": arms,
        "ratio": arms["slow"].rate / arms["fast"].rate,
        "delay_only": arms["slow"].rate / arms["proxy"].rate,
        "entries": entries,
    }


# (f) audited transactions against plain ones, in this process -------------------------------


@functools.cache
def _bench_row() -> Any:
    """The benchmark's table: one row per transaction."""
    from peewee import BigAutoField, IntegerField, Model, TextField

    from gateway.store.db import database

    class BenchWrite(Model):
        id = BigAutoField()
        n = IntegerField()
        payload = TextField()

        class Meta:
            table_name = "bench_write"

    BenchWrite._meta.database = database  # type: ignore[attr-defined]
    return BenchWrite


def writers(arm: Arm, app: Any, threads: int, seconds: float, audited: bool) -> None:
    """`threads` connections committing for `seconds`, counted in `arm`: each transaction
    inserts one row and, with `audited`, its audit entry (chained after the commit)."""
    from gateway import policies
    from gateway.audit import audit, chain_now
    from gateway.audit.chain import Action, AuditRecord
    from gateway.audit.sealer import Sealer
    from gateway.store.db import database, write_transaction

    row = _bench_row()
    with app.app_context():
        policy_hash = policies().hash
    counts = [0] * threads
    ready = threading.Barrier(threads + 1)
    errors: list[BaseException] = []
    stop = 0.0

    def writer(index: int) -> None:
        with app.app_context():
            database.connect()
            try:
                ready.wait()
                n = 0
                while time.monotonic() < stop:
                    n += 1
                    with write_transaction(serialize=False):
                        row.insert(n=n, payload=f"thread {index} row {n}").execute()
                        if audited:
                            record = AuditRecord(
                                actor="bench",
                                action=Action.DECISION,
                                policy_hash=policy_hash,
                                subject=f"v1:bench:{index:04d}",
                                purpose="recommendations",
                                outcome="allow",
                                reasons=["consent_granted"],
                                fields={"used": ["browsing"], "dropped": []},
                                request_id=f"r{index}-{n}",
                                decision_id=f"d{index}-{n}",
                            )
                            audit(record, datetime.now(UTC))
                    counts[index] += 1
            except BaseException as exc:  # reported by the caller, never lost in a thread
                errors.append(exc)
            finally:
                database.close()

    # As in a served worker: a sealer thread chains what the writers commit, off their path.
    sealer = Sealer(app) if audited else None
    if sealer is not None:
        app.extensions["gateway.sealer"] = sealer
        sealer.start()
    pool = [threading.Thread(target=writer, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    stop = time.monotonic() + seconds  # every writer is connected when the barrier opens
    ready.wait()
    started = time.perf_counter()
    try:
        for thread in pool:
            thread.join()
        if sealer is not None:  # the clock runs until every committed entry is chained
            with app.app_context(), database.connection_context():
                chain_now(wait=True)
        arm.seconds += time.perf_counter() - started
    finally:
        if sealer is not None:
            app.extensions.pop("gateway.sealer")
            sealer.stop()
    arm.done += sum(counts)
    if errors:
        raise RuntimeError(f"{len(errors)} of {threads} writers failed") from errors[0]


def bench_writers(
    home: Path,
    url: str,
    proxy: ProxyProcess,
    *,
    threads: int = 32,
    seconds: float = 5,
    rounds: int = 2,
) -> dict[str, Any]:
    """For each way of committing, plain and audited arms taking turns (`rounds` times); then
    the chain must hold exactly one entry per audited transaction."""
    from gateway.audit import seal_now
    from gateway.store.db import bind, database

    app = make_app(home, url)
    with app.app_context(), database.connection_context():
        _bench_row().create_table()
    arms = {f"{name}_{kind}": Arm() for name, _, _ in ARMS for kind in ("plain", "audited")}
    warm = {kind: Arm() for kind in ("plain", "audited")}
    for name, delay, mode in ARMS:
        bind(url if delay is None else proxy.route(url))
        proxy.set(delay or 0, mode)
        for kind in ("plain", "audited"):  # connections, caches
            writers(warm[kind], app, threads, 1, kind == "audited")
        for _ in range(rounds):
            for kind in ("plain", "audited"):
                arm = arms[f"{name}_{kind}"]
                with measured(arm, proxy, watched(url, proxy)):
                    writers(arm, app, threads, seconds / rounds, kind == "audited")
        with app.app_context(), database.connection_context():
            seal_now(wait=True)  # what the last writers left pending, before the next arm
    proxy.set(0)
    bind(url)
    audited = warm["audited"].done + sum(a.done for k, a in arms.items() if k.endswith("audited"))
    chain = verified_chain(app, audited)
    return {
        "threads": threads,
        "arms": arms,
        "ratio": arms["slow_audited"].rate / arms["slow_plain"].rate,
        "audited": audited,
        "entries": chain.entries,
    }


def bench_commits(
    folder: Path, url: str, seconds: float = 10, writer_seconds: float = 5
) -> dict[str, Any]:
    """Both parts of (f), each in a fresh schema, through one proxy process."""
    proxy = ProxyProcess(url)
    try:
        proxy.set(10)
        latency = {"direct": commit_latency(url), "proxied": commit_latency(proxy.route(url))}
        proxy.set(0)
        personalize = bench_personalize(folder / "personalize", url, proxy, seconds=seconds)
        with fresh_schema(url, "f_writers") as schema_url:
            commits = bench_writers(folder / "writers", schema_url, proxy, seconds=writer_seconds)
    finally:
        proxy.stop()
    return {
        "server": server_settings(url),
        "commit_ms": {k: v * 1000 for k, v in latency.items()},
        "personalize": personalize,
        "writers": commits,
    }


def print_commits(result: dict[str, Any]) -> None:
    p, w = result["personalize"], result["writers"]
    pa: dict[str, Arm] = p["arms"]
    wa: dict[str, Arm] = w["arms"]

    def request(name: str) -> str:
        a = pa[name]
        return f"{a.rate:.0f} req/s, p50 {a.percentile_ms(0.5):.1f} ms, {a.failed} not 200"

    print(
        f"| (f) personalize, {p['workers']} workers, {p['clients']} clients, 10 ms commits | "
        f"{request('slow')} | fast commits: {request('fast')} | {p['ratio']:.2f} | >= 0.7 |"
    )
    for name, label, target in (("slow", "10 ms", ">= 0.8"), ("fast", "fast", "")):
        audited, plain = wa[f"{name}_audited"], wa[f"{name}_plain"]
        print(
            f"| (f) audited vs plain transactions, {w['threads']} writers, {label} commits | "
            f"{audited.rate:.0f} tx/s | plain {plain.rate:.0f} tx/s | "
            f"{audited.rate / plain.rate:.2f} |{f' {target}' if target else ''} |"
        )
    ms = result["commit_ms"]
    print(
        f"\n(f) {result['server']}. One connection's COMMIT after a write: "
        f"{ms['proxied']:.2f} ms through the proxy holding it 10 ms, {ms['direct']:.2f} ms direct."
        "\n    '10 ms commits' holds those of transactions that wrote, as a synchronous standby "
        "does; 'every COMMIT' holds read-only ones too. CPU is in ms per request or transaction; "
        "'other' is the rest of the machine's."
    )
    print("(f) personalize arms: throughput, latency | commits held per request, CPU | busy")
    for name, _, _ in ARMS:
        a = pa[name]
        print(
            f"    {LABELS[name]}: {request(name)}, p99 {a.percentile_ms(0.99):.1f} ms | "
            f"{a.per_item(a.held):.2f}; {a.cpu_ms()} | {a.busy():.0%}"
        )
    print(
        "    10 ms commits against the proxy with no delay (the delay alone): "
        f"{p['delay_only']:.2f}"
    )
    print(
        "    audit chains verified, one entry per request answered: "
        + ", ".join(f"{count:,} ({name} server)" for name, count in p["entries"].items())
    )
    print("(f) writers arms: tx/s | commits held per transaction, CPU | busy")
    for name, _, _ in ARMS:
        audited, plain = wa[f"{name}_audited"], wa[f"{name}_plain"]
        print(
            f"    {LABELS[name]}: audited {audited.rate:.0f}, plain {plain.rate:.0f}, ratio "
            f"{audited.rate / plain.rate:.2f}\n"
            f"        audited | {audited.per_item(audited.held):.2f}; {audited.cpu_ms()} | "
            f"{audited.busy():.0%}\n"
            f"        plain | {plain.per_item(plain.held):.2f}; {plain.cpu_ms()} | "
            f"{plain.busy():.0%}"
        )
    print(
        f"    audit chain verified: {w['entries']:,} entries, one per audited transaction "
        f"({w['audited']:,})"
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["proxy"]:
        proxy_main(sys.argv[2:])
