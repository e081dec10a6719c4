"""The processes a `moeserve run` child started (its local Ray: GCS, raylet, workers,
agents), as the fault tests find, watch and clean them up, read from /proc."""

from __future__ import annotations

import ipaddress
import os


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (a local Ray's GCS, raylet, workers and agents)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def running(pid: int) -> bool:
    """Alive and not a zombie (an exited child nobody has reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def listening_addresses(pids: set[int]) -> dict[Address, dict[int, str]]:
    """The local addresses TCP sockets of `pids` listen on: for each, port -> process name."""
    owners: dict[str, str] = {}  # socket inode -> the name of a process holding it
    for pid in pids:
        try:
            with open(f"/proc/{pid}/comm") as comm:
                name = f"{comm.read().strip()} ({pid})"
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    owners[link[8:-1]] = name
        except OSError:
            continue  # gone, or not ours to read
    found: dict[Address, dict[int, str]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            next(lines)  # the header
            for line in lines:
                fields = line.split()
                if fields[3] != LISTEN or fields[9] not in owners:
                    continue
                address, port = fields[1].split(":")
                found.setdefault(_address(address), {})[int(port, 16)] = owners[fields[9]]
    return found


def is_loopback(address: Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


LISTEN = "0A"  # the TCP state in /proc/net/tcp


def _address(hex_address: str) -> Address:
    """/proc/net/tcp{,6} print an address as 32-bit words, each in host (little-endian) order."""
    words = [bytes.fromhex(hex_address[i : i + 8])[::-1] for i in range(0, len(hex_address), 8)]
    packed = b"".join(words)
    return ipaddress.ip_address(packed)
