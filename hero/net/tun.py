"""The L3 face: a Linux TUN device with the node's overlay address, `400::/7` routed into the overlay.

Needs CAP_NET_ADMIN and /dev/net/tun. Reads are driven by `loop.add_reader`
(no thread, no polling); writes are non-blocking and a full device queue drops
the packet, as a NIC would. Addresses and routes are set with `ip` once at
start (a subprocess, awaited).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import struct
from collections.abc import Callable

log = logging.getLogger("hero.net")

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
MTU = 65_000  # Mycelium uses 1,400; a packet costs us the same Python work at any size (see BENCHMARKS.md)
MIN_MTU = 1280  # IPv6's minimum
MAX_MTU = 65_000  # an IPv6 packet plus the session's header and tag fits one data packet (65,535 bytes)
MAX_PACKET = 65535


class TunUnavailable(Exception):
    """No TUN here (no /dev/net/tun, no CAP_NET_ADMIN, no `ip`): the node runs the message overlay alone."""


async def _ip(*args: str) -> None:
    try:
        proc = await asyncio.create_subprocess_exec(
            "ip", *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
    except FileNotFoundError:
        raise TunUnavailable("the `ip` command is not installed") from None
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise TunUnavailable(f"ip {' '.join(args)}: {err.decode().strip()}")


class Tun:
    def __init__(self, fd: int, name: str) -> None:
        self.fd = fd
        self.name = name
        self.rx_packets = 0
        self.tx_packets = 0
        self.dropped = 0
        self._reading = False

    @classmethod
    async def open(cls, name: str, address: str, *, mtu: int = MTU) -> Tun:
        try:
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise TunUnavailable(f"cannot open /dev/net/tun: {exc.strerror}") from None
        try:
            ifr = struct.pack("16sH", name.encode()[:15], IFF_TUN | IFF_NO_PI)
            actual = fcntl.ioctl(fd, TUNSETIFF, ifr)[:16].rstrip(b"\0").decode()
        except OSError as exc:
            os.close(fd)
            raise TunUnavailable(f"cannot create TUN device {name}: {exc.strerror}") from None
        tun = cls(fd, actual)
        try:
            await _ip("link", "set", "dev", actual, "mtu", str(mtu), "up")
            await _ip("-6", "addr", "add", f"{address}/7", "dev", actual, "nodad")
        except TunUnavailable:
            tun.close()
            raise
        return tun

    def start(self, on_packet: Callable[[bytes], None]) -> None:
        loop = asyncio.get_running_loop()

        def readable() -> None:
            for _ in range(64):  # drain what is queued, then yield to the loop
                try:
                    packet = os.read(self.fd, MAX_PACKET)
                except BlockingIOError:
                    return
                except OSError:
                    self.stop()
                    return
                self.rx_packets += 1
                on_packet(packet)

        loop.add_reader(self.fd, readable)
        self._reading = True

    def write(self, packet: bytes | memoryview) -> None:
        try:
            os.write(self.fd, packet)
            self.tx_packets += 1
        except (BlockingIOError, OSError):
            self.dropped += 1

    def stop(self) -> None:
        if self._reading:
            asyncio.get_running_loop().remove_reader(self.fd)
            self._reading = False

    def close(self) -> None:
        if self.fd >= 0:
            if self._reading:
                try:
                    self.stop()
                except RuntimeError:
                    self._reading = False
            os.close(self.fd)  # the kernel removes the device with its last descriptor
            self.fd = -1
