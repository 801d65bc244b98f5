"""CPU time by process group, from /proc: where a scenario's CPU went (Postgres backends, nats-server, each
service, the load generator). Linux only; elsewhere every reading is empty."""

from __future__ import annotations

import os
import pathlib

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PROC = pathlib.Path("/proc")


def _group(pid: int, cmdline: list[str]) -> str | None:
    if pid == os.getpid():
        return "bench"
    if not cmdline:
        return None
    exe = os.path.basename(cmdline[0])
    if exe.startswith("postgres"):
        return "postgres"
    if exe == "nats-server":
        return "nats"
    for i, arg in enumerate(cmdline[:-1]):
        if arg == "-m" and cmdline[i + 1].startswith("services."):
            service = cmdline[i + 1].removeprefix("services.")
            return f"{service}-worker" if _role(pid) == "worker" else service
    return None


def _role(pid: int) -> str:
    try:
        environ = (_PROC / str(pid) / "environ").read_bytes().split(b"\0")
    except OSError:
        return ""
    for item in environ:
        if item.startswith(b"OMO_ROLE="):
            return item.removeprefix(b"OMO_ROLE=").decode()
    return ""


def snapshot() -> dict[str, float]:
    """CPU seconds (user + system) used so far by each group's live processes: this process and its
    descendants only (the stack it started), never another stack on the same machine."""
    totals: dict[str, float] = {}
    if not _PROC.exists():
        return totals
    procs: dict[int, tuple[int, float, list[str]]] = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the command name (which may contain spaces): ppid is the 4th field, utime the 14th,
        # stime the 15th.
        fields = stat.rsplit(")", 1)[1].split()
        procs[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK,
                                  [c.decode(errors="replace") for c in cmdline if c])
    me = os.getpid()
    for pid, (_, cpu, cmdline) in procs.items():
        ancestor, hops = pid, 0
        while ancestor not in (me, 0, 1) and ancestor in procs and hops < 16:
            ancestor, hops = procs[ancestor][0], hops + 1
        if ancestor != me:
            continue
        group = _group(pid, cmdline)
        if group is not None:
            totals[group] = totals.get(group, 0.0) + cpu
    return totals


def per_unit_ms(before: dict[str, float], after: dict[str, float], units: int) -> dict[str, float]:
    """Milliseconds of CPU per unit of work (an order, a reservation) by group, and their total. Processes that
    ended in between (a Postgres backend closing) drop out, so read this over a steady window."""
    if units <= 0:
        return {}
    spent = {g: max(0.0, after.get(g, 0.0) - before.get(g, 0.0)) for g in after}
    out = {g: round(s * 1000 / units, 2) for g, s in sorted(spent.items()) if s > 0}
    out["total"] = round(sum(spent.values()) * 1000 / units, 2)
    return out
