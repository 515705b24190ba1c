"""The worker's end of its link to the supervisor: the variable, readiness, the supervisor's end.

``test_subprocess.py`` runs a real worker with the link; ``test_supervisor.py`` the other side.
"""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from server.supervised import SUPERVISOR_FD, SupervisorLink
from tests.server.support import GUARD


def test_no_variable_no_supervisor() -> None:
    assert SupervisorLink.from_environment({}) is None


@pytest.mark.parametrize("text", ["", "three", "-1"])
def test_a_variable_that_names_no_descriptor_is_refused(text: str) -> None:
    environ = {SUPERVISOR_FD: text}
    with pytest.raises(ValueError, match=f"^{SUPERVISOR_FD}=.* is not a socket's descriptor$"):
        SupervisorLink.from_environment(environ)
    assert environ == {}


def test_a_descriptor_that_is_no_socket_is_refused() -> None:
    read, write = os.pipe()
    try:
        with pytest.raises(ValueError, match="is not a socket's descriptor"):
            SupervisorLink.from_environment({SUPERVISOR_FD: str(read)})
    finally:
        os.close(read)
        os.close(write)


async def test_ready_sends_one_byte_and_the_supervisors_end_is_noticed() -> None:
    supervisor, worker = socket.socketpair()
    environ = {SUPERVISOR_FD: str(worker.detach()), "OTHER": "kept"}
    link = SupervisorLink.from_environment(environ)
    assert link is not None
    assert environ == {"OTHER": "kept"}  # a process the worker starts inherits no link
    lost = asyncio.Event()
    try:
        link.watch(lost.set)
        link.ready()
        with supervisor:
            assert supervisor.recv(2) == b"\n"
        async with asyncio.timeout(GUARD):
            await lost.wait()
    finally:
        link.close()


async def test_close_stops_watching() -> None:
    supervisor, worker = socket.socketpair()
    fd = worker.fileno()
    link = SupervisorLink(worker)
    link.watch(lambda: None)
    link.close()
    supervisor.close()
    assert worker.fileno() == -1
    assert not asyncio.get_running_loop().remove_reader(fd)  # no longer watched
