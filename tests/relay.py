"""A fault-injecting TCP relay on 127.0.0.1: forwards to one target until cut() (a network partition)
or freeze() (the target's machine lost with everything it was sending)."""

from __future__ import annotations

import logging
import socket
import threading

from pylitefs.cluster import free_port

log = logging.getLogger(__name__)

#: How often the accept loop notices close().
ACCEPT_POLL = 0.1


def _shut(sock: socket.socket) -> None:
    """Shut down then close: shutdown wakes a thread blocked in recv() on it, close alone does not."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


class Relay:
    """Listens on a free 127.0.0.1 port and forwards every connection, both ways, to the target.

    cut() closes every open connection and then blackholes new ones: they are accepted but nothing is
    forwarded, so a client times out as it would behind a partition (no quick "connection refused").
    restore() forwards again, including the connections accepted while cut.

    freeze() is a machine that dies with its network: from then on nothing is forwarded either way, what
    arrives is discarded, and the peers see neither a close nor a reset, only silence (the target's own
    close or reset, e.g. its kill -9, is swallowed too). thaw() is the machine back: every connection it
    had, open or accepted while frozen, is closed; new ones are forwarded.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._lock = threading.Lock()
        self._cut = False
        self._frozen = False
        self._closed = False
        self._open: set[socket.socket] = set()      # sockets of forwarded connections (both sides)
        self._held: list[socket.socket] = []        # accepted while cut, not forwarded yet
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(ACCEPT_POLL)
        self._thread = threading.Thread(target=self._accept_loop, name=f"relay-{self.port}", daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut(self) -> None:
        """Close every forwarded connection; connections accepted from now on hang until restore()."""
        with self._lock:
            self._cut = True
            victims, self._open = self._open, set()
        for sock in victims:
            _shut(sock)

    def restore(self) -> None:
        """Forward again: new connections and the ones that were held while cut."""
        with self._lock:
            self._cut = False
            held, self._held = self._held, []
        for sock in held:
            self._forward(sock)

    def freeze(self) -> None:
        """Forward nothing from now on, and discard it: no byte the target sends after this returns gets out."""
        with self._lock:
            self._frozen = True

    def thaw(self) -> None:
        """End a freeze: close the connections of before (the machine is back, they are gone) and forward again."""
        with self._lock:
            self._frozen = False
            victims, self._open = self._open, set()
            held, self._held = self._held, []
        for sock in [*victims, *held]:
            _shut(sock)

    def close(self) -> None:
        """Stop listening and close every connection, forwarded or held."""
        with self._lock:
            self._closed = True
            victims = list(self._open) + self._held
            self._open, self._held = set(), []
        self._thread.join()
        self._listener.close()
        for sock in victims:
            _shut(sock)

    def _accept_loop(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                log.warning("relay %d cannot accept: %s", self.port, exc)
                return
            sock.settimeout(None)
            with self._lock:
                if self._closed:
                    sock.close()
                    return
                if self._cut or self._frozen:
                    self._held.append(sock)
                    continue
            self._forward(sock)

    def _forward(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError as exc:
            log.info("relay %d cannot reach %s:%d: %s", self.port, *self.target, exc)
            client.close()
            return
        upstream.settimeout(None)
        with self._lock:
            if self._cut or self._frozen or self._closed:  # cut while we were connecting
                upstream.close()
                if self._closed:
                    client.close()
                else:
                    self._held.append(client)
                return
            self._open.update((client, upstream))
        pumps = [threading.Thread(target=self._pump, args=pair, daemon=True, name=f"relay-{self.port}-pump")
                 for pair in ((client, upstream), (upstream, client))]
        for pump in pumps:
            pump.start()
        threading.Thread(target=self._reap, args=(client, upstream, pumps), daemon=True,
                         name=f"relay-{self.port}-reap").start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        """Copy one direction; on an error tear the whole connection down. Frozen: discard, pass no end on."""
        try:
            while data := source.recv(65536):
                if not self._frozen:
                    sink.sendall(data)
            if not self._frozen:
                sink.shutdown(socket.SHUT_WR)
        except OSError:  # closed by cut()/close()/thaw() or reset by a peer
            if not self._frozen:
                _shut(source)
                _shut(sink)

    def _reap(self, client: socket.socket, upstream: socket.socket, pumps: list[threading.Thread]) -> None:
        """Close both sockets once both directions are done."""
        for pump in pumps:
            pump.join()
        with self._lock:
            self._open.discard(client)
            self._open.discard(upstream)
        _shut(client)
        _shut(upstream)
