"""A WebSocket echo application for the proxy's tests: `python -m tests.apps.ws_echo --port N --name NODE`.

Every text message comes back as `NODE: <text>` (so a test sees which node
answered), binary messages come back as they are. Built on wsproto over trio.
"""

from __future__ import annotations

import argparse

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    Request,
    TextMessage,
)
from wsproto.utilities import RemoteProtocolError


async def serve(port: int, name: str) -> None:
    async def handle(stream: trio.SocketStream) -> None:
        ws = WSConnection(ConnectionType.SERVER)
        text, binary = "", b""  # a message arrives in fragments: answered once whole
        async with stream:
            try:
                while True:
                    data = await stream.receive_some(65536)
                    ws.receive_data(data or None)
                    out = b""
                    closed = False
                    for event in ws.events():
                        if isinstance(event, Request):
                            out += ws.send(AcceptConnection())
                        elif isinstance(event, TextMessage):
                            text += event.data
                            if event.message_finished:
                                out += ws.send(Message(data=f"{name}: {text}"))
                                text = ""
                        elif isinstance(event, BytesMessage):
                            binary += event.data
                            if event.message_finished:
                                out += ws.send(Message(data=binary))
                                binary = b""
                        elif isinstance(event, Ping):
                            out += ws.send(event.response())
                        elif isinstance(event, CloseConnection):
                            out += ws.send(event.response())
                            closed = True
                    if out:
                        await stream.send_all(out)
                    if closed or not data:
                        return
            except (RemoteProtocolError, trio.BrokenResourceError, OSError):
                return

    await trio.serve_tcp(handle, port, host="127.0.0.1")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", required=True)
    args = parser.parse_args()
    trio.run(serve, args.port, args.name)


if __name__ == "__main__":
    main()
