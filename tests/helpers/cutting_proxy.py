"""A TCP proxy between a PostgreSQL client and server that cuts the connection at a commit.

:class:`CuttingProxy` listens on a free port of 127.0.0.1 and forwards the bytes of
each connection both ways, reading the frontend's side message by message (the
startup packets, then a type byte and an int32 length per message). Armed
(:meth:`CuttingProxy.arm`), it cuts the next connection that sends a simple Query
committing a marker (its SQL names ``aiolmdb_commits`` and holds ``COMMIT``), as a
network failure at that moment would, in one of the ways of :class:`CutMode`:

- ``CUT_AFTER_SENDING``: the Query goes to the server, which commits; the client's
  side is closed once the server answered, with nothing of the answer forwarded:
  the client never learns that the commit happened.
- ``CUT_BEFORE_SENDING``: both sides are closed and the Query is dropped: the server
  never commits (it rolls the transaction back when it sees its client gone).
- ``CUT_THEN_SEND_LATE``: the client's side is closed at once and the Query held back,
  to reach the server only when :meth:`CuttingProxy.send_held` says so (a commit
  still on its way while the client asks whether it happened).
- ``CUT_WHEN_TOLD``: the Query goes to the server, and the client's side is closed
  when :meth:`CuttingProxy.cut_client` says so (or once the server ended the
  session), with nothing of the answer forwarded: a commit the server is still
  making when the client finds its connection gone.

After the cut the proxy forwards normally again, or (``then=Afterwards.REFUSE``)
closes every connection and every new one at once: the server cannot be reached
(as after :meth:`CuttingProxy.refuse`, until :meth:`CuttingProxy.admit`).
Only plain connections can be read: URLs to the proxy (:func:`proxied_url`) say
``sslmode=disable`` and ``gssencmode=disable``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import re
from types import TracebackType
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

__all__ = [
    "Afterwards",
    "Cut",
    "CutMode",
    "CuttingProxy",
    "LinkState",
    "ProxyError",
    "proxied_url",
]

#: The request codes of startup packets that a second startup packet follows
#: (the server answers them with one byte, 'N' here: no encryption).
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
#: The frontend's Terminate message: the server ends the session once it read it.
TERMINATE = b"X\x00\x00\x00\x04"
#: What a commit with a marker says (``Sql.commit_with_marker``).
COMMITS_TABLE = b"aiolmdb_commits"
COMMIT = b"COMMIT"
_MARKER = re.compile(rb"'([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})'")
#: Seconds the server has to answer a Query the proxy sent it alone.
SERVER_ANSWER_WAIT = 30.0
#: Seconds the proxy's tasks have to end once their connections are closed.
CLOSE_WAIT = 5.0
#: Bytes read from the server at a time.
CHUNK = 65536


class ProxyError(RuntimeError):
    """The proxy was used in a way it cannot follow; the message says how."""


class CutMode(enum.Enum):
    """How a commit's connection is cut."""

    CUT_AFTER_SENDING = "cut after sending"
    CUT_BEFORE_SENDING = "cut before sending"
    CUT_THEN_SEND_LATE = "cut, then send late"
    CUT_WHEN_TOLD = "cut when told"


class Afterwards(enum.Enum):
    """What the proxy does once the cuts it was armed for are made."""

    FORWARD = "forward"
    #: Close every connection, and every new one: the server is out of reach.
    REFUSE = "refuse"


class LinkState(enum.Enum):
    """Where one proxied connection is."""

    STARTING = "starting"  # startup packets, which have no type byte
    FORWARDING = "forwarding"
    CUT = "cut"  # nothing from the server reaches the client any more
    CLOSED = "closed"


@dataclasses.dataclass(frozen=True)
class Cut:
    """One commit cut: how, and the marker it committed."""

    mode: CutMode
    marker: str


def commit_marker(sql: bytes) -> str | None:
    """The marker a Query's SQL commits, or None when it is no commit with a marker."""
    if COMMITS_TABLE not in sql or COMMIT not in sql:
        return None
    found = _MARKER.search(sql)
    if found is None:
        raise ProxyError(f"a commit of {COMMITS_TABLE.decode()} without a marker: {sql!r}")
    return found.group(1).decode()


def proxied_url(url: str, port: int) -> str:
    """``url`` (a libpq URL) with its host and port the proxy's, and no encryption asked."""
    parts = urlsplit(url)
    user = parts.netloc.rpartition("@")[0]
    netloc = f"{user}@127.0.0.1:{port}" if user else f"127.0.0.1:{port}"
    query = dict(parse_qsl(parts.query))
    query.update(sslmode="disable", gssencmode="disable")
    # libpq reads %20, not +, as a space (options holds several settings).
    encoded = urlencode(query, quote_via=quote)
    return urlunsplit((parts.scheme, netloc, parts.path, encoded, parts.fragment))


class _Link:
    """One client connection and the proxy's connection to the server for it."""

    def __init__(
        self,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        server: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.client_reader, self.client_writer = client
        self.server_reader, self.server_writer = server
        self.state = LinkState.STARTING
        #: Set when the server's side reached its end (the server closed it).
        self.server_gone = asyncio.Event()

    def close(self) -> None:
        self.state = LinkState.CLOSED
        self.client_writer.close()
        self.server_writer.close()


@dataclasses.dataclass(frozen=True)
class _Held:
    """A commit's Query held back by a ``CUT_THEN_SEND_LATE`` cut, with its connection."""

    link: _Link
    query: bytes
    marker: str


class CuttingProxy:
    """A proxy on 127.0.0.1 to the PostgreSQL server at ``host``:``port``.

    Use as ``async with CuttingProxy(host, port) as proxy:``; :attr:`port` is where
    it listens, :meth:`url` gives a URL through it.
    """

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._listener: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        # What went wrong in the proxy's own tasks, raised by close().
        self._failures: list[BaseException] = []
        self._mode = CutMode.CUT_AFTER_SENDING
        self._cuts_left = 0
        self._then = Afterwards.FORWARD
        self._refusing = False
        self._held: _Held | None = None
        self._told: _Link | None = None
        #: The commits cut, in order.
        self.cuts: list[Cut] = []
        #: The markers of the commits the server received through the proxy, in order.
        self.commits_sent: list[str] = []

    async def __aenter__(self) -> CuttingProxy:
        self._listener = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def port(self) -> int:
        """The port the proxy listens on."""
        if self._listener is None:
            raise ProxyError("the proxy has no port before it started")
        port: int = self._listener.sockets[0].getsockname()[1]
        return port

    def url(self, url: str) -> str:
        """``url`` (a URL of the server proxied) made to go through the proxy."""
        return proxied_url(url, self.port)

    def arm(self, mode: CutMode, *, cuts: int = 1, then: Afterwards = Afterwards.FORWARD) -> None:
        """Cut the next ``cuts`` commits in ``mode``; then do as ``then`` says."""
        if cuts < 1:
            raise ProxyError(f"arm() needs cuts >= 1, got {cuts}")
        self._mode, self._cuts_left, self._then = mode, cuts, then

    async def send_held(self) -> None:
        """Send the Query held back by a ``CUT_THEN_SEND_LATE`` cut to the server, and
        return once the server answered it (and ended that session)."""
        held, self._held = self._held, None
        if held is None:
            raise ProxyError("send_held(): no Query is held (no CUT_THEN_SEND_LATE cut made)")
        try:
            await self._send_alone(held.link, held.query, held.marker)
        finally:
            self._drop(held.link)

    def refuse(self) -> None:
        """Close every connection, and every new one until :meth:`admit`: the server is
        out of reach."""
        self._refuse(keep=None)

    def admit(self) -> None:
        """Forward new connections again."""
        self._refusing = False

    def cut_client(self) -> None:
        """Close the client's side of the connection a ``CUT_WHEN_TOLD`` cut left open."""
        link, self._told = self._told, None
        if link is None:
            raise ProxyError("cut_client(): no client is left to cut (no CUT_WHEN_TOLD cut made)")
        link.client_writer.close()

    async def close(self) -> None:
        """Stop listening and close every connection (a held Query is never sent).

        Raises :class:`ProxyError` if the proxy failed meanwhile (a connection it
        could not follow), which would otherwise pass for a lost connection.
        """
        if self._listener is not None:
            self._listener.close()
        self._held = self._told = None
        for link in list(self._links):
            self._drop(link)
        # Their connections closed, the tasks end on their own (asyncio complains of
        # a connection's task that is cancelled instead).
        if self._tasks:
            _, left = await asyncio.wait(set(self._tasks), timeout=CLOSE_WAIT)
            for task in left:
                task.cancel()
            await asyncio.gather(*left, return_exceptions=True)
        if self._listener is not None:
            await self._listener.wait_closed()
            self._listener = None
        if self._failures:
            raise ProxyError(f"the proxy failed: {self._failures!r}") from self._failures[0]

    # -- inside ----------------------------------------------------------

    def _track(self, task: asyncio.Task[None] | None) -> None:
        assert task is not None
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        failure = None if task.cancelled() else task.exception()
        if failure is not None:
            self._failures.append(failure)

    def _drop(self, link: _Link) -> None:
        link.close()
        self._links.discard(link)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._track(asyncio.current_task())
        if self._refusing:
            writer.close()
            return
        try:
            server = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        link = _Link((reader, writer), server)
        self._links.add(link)
        self._track(asyncio.ensure_future(self._from_server(link)))
        try:
            await self._from_client(link)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # one side went away: so does the other
        finally:
            if not self._keeps(link):
                self._drop(link)

    def _refuse(self, keep: _Link | None) -> None:
        self._refusing = True
        for link in list(self._links):
            if link is not keep:
                self._drop(link)

    def _keeps(self, link: _Link) -> bool:
        """Whether ``link`` stays open after its client's side ended (a cut still to finish)."""
        return link is self._told or (self._held is not None and link is self._held.link)

    async def _from_client(self, link: _Link) -> None:
        reader = link.client_reader
        while link.state is LinkState.STARTING:
            header = await reader.readexactly(4)
            packet = header + await reader.readexactly(int.from_bytes(header, "big") - 4)
            link.server_writer.write(packet)
            if int.from_bytes(packet[4:8], "big") not in (SSL_REQUEST, GSSENC_REQUEST):
                link.state = LinkState.FORWARDING  # the startup message (or a cancel)
        while link.state is LinkState.FORWARDING:
            header = await reader.readexactly(5)
            message = header + await reader.readexactly(int.from_bytes(header[1:], "big") - 4)
            marker = commit_marker(message[5:]) if message[:1] == b"Q" else None
            if marker is not None and self._cuts_left:
                await self._cut(link, message, marker)
                return
            if marker is not None:
                self.commits_sent.append(marker)
            link.server_writer.write(message)
            await link.server_writer.drain()

    async def _from_server(self, link: _Link) -> None:
        try:
            while data := await link.server_reader.read(CHUNK):
                if link.state is LinkState.FORWARDING or link.state is LinkState.STARTING:
                    link.client_writer.write(data)
                    await link.client_writer.drain()
                # After a cut the client learns nothing more.
        except ConnectionError:
            pass
        finally:
            link.server_gone.set()
            link.client_writer.close()

    async def _cut(self, link: _Link, query: bytes, marker: str) -> None:
        mode = self._mode
        link.state = LinkState.CUT
        self.cuts.append(Cut(mode, marker))
        self._cuts_left -= 1
        if not self._cuts_left and self._then is Afterwards.REFUSE:
            # Before the client learns of the cut, so that it finds no way back in.
            self._refuse(keep=link)
        if mode is CutMode.CUT_AFTER_SENDING:
            # The client's side closes when the server's does, after the answer.
            await self._send_alone(link, query, marker)
        elif mode is CutMode.CUT_BEFORE_SENDING:
            self._drop(link)
        elif mode is CutMode.CUT_THEN_SEND_LATE:
            self._held = _Held(link, query, marker)
            link.client_writer.close()
        elif mode is CutMode.CUT_WHEN_TOLD:
            self._told = link
            self.commits_sent.append(marker)
            link.server_writer.write(query + TERMINATE)

    async def _send_alone(self, link: _Link, query: bytes, marker: str) -> None:
        """Send ``query`` and a Terminate: the server runs the Query whole, then ends the
        session; wait for that, nothing of its answer forwarded."""
        self.commits_sent.append(marker)
        link.server_writer.write(query + TERMINATE)
        await link.server_writer.drain()
        try:
            await asyncio.wait_for(link.server_gone.wait(), SERVER_ANSWER_WAIT)
        except asyncio.TimeoutError:
            raise ProxyError(
                f"the server did not answer a commit within {SERVER_ANSWER_WAIT} s: {query!r}"
            ) from None
