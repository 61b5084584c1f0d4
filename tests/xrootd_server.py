"""A real XRootD server on loopback, started and stopped by the tests (and benchmarks/xrootd_ingest.py).

``xrootd`` (Debian's ``xrootd-server``) runs in the foreground as a child process, exporting one
directory without authentication, with its admin, pid and log files in a temporary directory of
its own; stopping (or killing, to test a lost server) terminates exactly that pid. xrootd refuses
to run as root: started by root, it is told to switch to an unprivileged user (``-R``: the
``xrootd`` user the package creates, else ``nobody``) and the directories are made readable to it.

Requirements (Debian): ``apt-get install xrootd-server`` and, for the reading, the Python client
(``pip install 'taufm[remote]'``). :func:`unavailable_reason` says what is missing.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

INSTALL_HINT = "apt-get install xrootd-server; pip install 'taufm[remote]'"
SERVICE_USERS = ("xrootd", "nobody")


def _service_user() -> str | None:
    for name in SERVICE_USERS:
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    return None


def unavailable_reason() -> str | None:
    """Why a test server cannot be started and read here, or None when it can."""
    if shutil.which("xrootd") is None:
        return f"XRootD test server: the xrootd binary is not installed ({INSTALL_HINT})"
    # Found, not imported: the client reads its settings (XRD_*) when it loads.
    missing = [module for module in ("XRootD", "fsspec_xrootd") if importlib.util.find_spec(module) is None]
    if missing:
        return f"XRootD test server: the Python client ({', '.join(missing)}) is not installed ({INSTALL_HINT})"
    if os.geteuid() == 0 and _service_user() is None:
        return f"XRootD test server: running as root, and no unprivileged user ({', '.join(SERVICE_USERS)}) to run xrootd as"
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class XRootDServer:
    """``xrootd`` exporting ``export`` on 127.0.0.1:``port`` (a free port unless given).

    ``url(path)`` is the root:// URL of a file under the export. ``start()`` waits until the
    server answers; ``kill()`` ends it with SIGKILL (a server lost mid-read); ``stop()`` ends it
    and removes its run directory.
    """

    def __init__(self, export: str | Path, port: int | None = None, name: str = "taufm-test") -> None:
        self.export = Path(export).resolve()
        self.port = port or free_port()
        self.name = name
        self.run_dir = Path(tempfile.mkdtemp(prefix=f"taufm-xrootd-{name}-"))
        self.log = self.run_dir / "xrootd.log"
        self.process: subprocess.Popen | None = None

    @property
    def server(self) -> str:
        return f"root://127.0.0.1:{self.port}"

    def url(self, path: str | Path) -> str:
        """The URL of ``path`` (absolute, or relative to the export)."""
        path = Path(path)
        return f"{self.server}/{path if path.is_absolute() else self.export / path}"

    def _config(self) -> Path:
        config = self.run_dir / "xrootd.cfg"
        config.write_text(
            "\n".join(
                [
                    f"all.export {self.export}",
                    f"xrd.port {self.port}",
                    f"all.adminpath {self.run_dir}",
                    f"all.pidpath {self.run_dir}",
                    "xrootd.chksum adler32",  # answer `query checksum`, as EOS does
                    "",
                ]
            )
        )
        return config

    def start(self, timeout: float = 20.0) -> XRootDServer:
        command = ["xrootd", "-c", str(self._config()), "-l", str(self.log), "-n", self.name, "-p", str(self.port)]
        if os.geteuid() == 0:  # xrootd will not serve as root: it switches to a service user
            user = pwd.getpwnam(_service_user())
            command[1:1] = ["-R", user.pw_name]
            os.chown(self.run_dir, user.pw_uid, user.pw_gid)
            self.export.chmod(self.export.stat().st_mode | 0o755)
        # The working directory is where xrootd makes its home directory: one it may write.
        self.process = subprocess.Popen(command, cwd=self.run_dir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"xrootd exited with status {self.process.returncode}:\n{self.logs()}")
            if self._answers():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"xrootd did not answer on port {self.port} within {timeout} s:\n{self.logs()}")

    def _answers(self) -> bool:
        """Listening, and its log says it finished starting."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                pass
        except OSError:
            return False
        return f":{self.port} initialization completed" in self.logs()

    def publish(self, source: str | Path, name: str | None = None) -> Path:
        """Copy ``source`` into the export (readable by the server's user); returns the copy."""
        target = self.export / (name or Path(source).name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        target.chmod(0o644)
        for directory in target.relative_to(self.export).parents:
            (self.export / directory).chmod(0o755)
        return target

    def logs(self) -> str:
        found = sorted(self.run_dir.rglob("*.log*"))
        return "\n".join(path.read_text(errors="replace")[-3000:] for path in found)

    def kill(self) -> None:
        """End the server at once (SIGKILL), as a crashed or unreachable one."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def __enter__(self) -> XRootDServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def exported_directory(prefix: str = "taufm-xrootd-data-") -> Path:
    """A new directory outside pytest's (for root, 0700) tree, readable by any user."""
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    directory.chmod(0o755)
    return directory
