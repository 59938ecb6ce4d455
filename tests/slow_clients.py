"""A slow HTTP client for the slow-client tests (tests/slow_clients.rs).

Holds COUNT connections to HOST:PORT, each of which sends a request line and then one header
byte every GAP seconds, never finishing its headers; reopens every connection the server
closes; stops after DURATION seconds and prints one JSON object: the connections opened, how
many the server closed, and the longest and median time the server let a connection live.

    python3 tests/slow_clients.py HOST PORT COUNT GAP DURATION

A process can hold at most its open-file limit of connections, so the test runs several.
"""

import json
import selectors
import socket
import statistics
import sys
import time

REQUEST_LINE = b"GET /healthz HTTP/1.1\r\nHost: slow\r\nX-Slow: "


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    count, gap, duration = int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
    selector = selectors.DefaultSelector()
    # socket -> (time it connected or None while connecting)
    connected_at = {}
    lives = []
    opened = 0
    failed = 0

    def open_one():
        nonlocal opened, failed
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        if sock.connect_ex((host, port)) not in (0, 115):  # 115: EINPROGRESS
            failed += 1
            sock.close()
            return
        opened += 1
        connected_at[sock] = None
        selector.register(sock, selectors.EVENT_WRITE)

    def close(sock, by_server):
        selector.unregister(sock)
        since = connected_at.pop(sock)
        sock.close()
        if by_server and since is not None:
            lives.append(time.monotonic() - since)

    start = time.monotonic()
    for _ in range(count):
        open_one()
    next_byte = start + gap
    while time.monotonic() < start + duration:
        for key, events in selector.select(timeout=0.05):
            sock = key.fileobj
            if connected_at.get(sock, 0) is None and events & selectors.EVENT_WRITE:
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
                    close(sock, False)
                    open_one()
                    continue
                try:
                    sock.send(REQUEST_LINE)
                except OSError:
                    close(sock, False)
                    open_one()
                    continue
                connected_at[sock] = time.monotonic()
                selector.modify(sock, selectors.EVENT_READ)
            elif events & selectors.EVENT_READ:
                try:
                    data = sock.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    close(sock, True)
                    open_one()
        now = time.monotonic()
        if now >= next_byte:
            next_byte = now + gap
            for sock, since in list(connected_at.items()):
                if since is None:
                    continue
                try:
                    sock.send(b"a")
                except BlockingIOError:
                    pass
                except OSError:
                    close(sock, True)
                    open_one()
    held = sum(1 for since in connected_at.values() if since is not None)
    print(
        json.dumps(
            {
                "opened": opened,
                "failed": failed,
                "held_at_end": held,
                "closed_by_server": len(lives),
                "longest_life": max(lives, default=0.0),
                "median_life": statistics.median(lives) if lives else 0.0,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
