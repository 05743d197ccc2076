"""The demo's port probe: TIME_WAIT left by a previous run is not "busy"; a listener is."""

from __future__ import annotations

import socket

from cascade_dev.demo import _available


def time_wait_port() -> int:
    """A loopback port whose server side closed first: it sits in TIME_WAIT, not listening."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = int(listener.getsockname()[1])
    client = socket.create_connection(("127.0.0.1", port), timeout=5)
    accepted, _ = listener.accept()
    accepted.close()  # the active closer keeps (127.0.0.1:port) in TIME_WAIT
    client.recv(1)  # EOF: the FIN arrived
    client.close()
    listener.close()
    return port


def test_a_port_in_time_wait_is_available() -> None:
    port = time_wait_port()
    with socket.socket() as plain:  # the old probe: without SO_REUSEADDR this bind fails
        try:
            plain.bind(("127.0.0.1", port))
            in_time_wait = False
        except OSError:
            in_time_wait = True
    assert in_time_wait, "the fixture did not leave the port in TIME_WAIT"
    assert _available(port) == port


def test_a_listening_port_is_busy() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        assert _available(int(listener.getsockname()[1])) == 0
