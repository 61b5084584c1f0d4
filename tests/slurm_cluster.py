"""A real single-node Slurm cluster on localhost, started and stopped by the tests.

Daemons (MariaDB for accounting, slurmdbd, slurmctld, slurmd) run in the foreground as child
processes of the test, with every state, spool, log and socket file in one temporary directory;
stopping terminates exactly those pids. What must live outside it, and why:

* ``/etc/slurm/slurm.conf`` (+ ``gres.conf``, ``slurmdbd.conf`` beside it): the Snakemake Slurm
  executor strips every ``SLURM_*`` variable, ``SLURM_CONF`` included, before ``srun``, so the
  configuration must be at the compiled-in path. They are symbolic links into the temporary
  directory, created only where no configuration exists and removed on stop.

The node is declared with a fake GPU (``gres/gpu``, no device file) in a ``gpu`` partition beside
the default ``cpu`` one, so GPU requests are scheduled and accounted as on a real GPU cluster;
``SlurmdParameters=config_overrides`` lets the declared size exceed this machine's. Accounting
(``sacct``, which the executor polls) goes through slurmdbd into a throwaway MariaDB started with
``--skip-grant-tables``; authentication is ``auth/none``: a test cluster on loopback only.

Requirements (Debian): ``apt-get install slurm-wlm slurmdbd mariadb-server``, and root (slurmd
launches jobs as their user). :func:`unavailable_reason` says what is missing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path

SLURM_CONF_DIR = Path("/etc/slurm")
CONFIG_FILES = ("slurm.conf", "gres.conf", "slurmdbd.conf")
DAEMONS = ("slurmctld", "slurmd", "slurmdbd", "sbatch", "sacct", "sinfo", "scontrol")
MARIADB_SERVERS = ("mariadbd", "mysqld")
MARIADB_INSTALLERS = ("mariadb-install-db", "mysql_install_db")
INSTALL_HINT = "apt-get install slurm-wlm slurmdbd mariadb-server"


def _first_executable(names: tuple[str, ...]) -> str | None:
    for name in names:
        path = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None)
        if path:
            return path
    return None


def unavailable_reason() -> str | None:
    """Why a test cluster cannot be started here, or None when it can."""
    missing = [name for name in DAEMONS if _first_executable((name,)) is None]
    if _first_executable(MARIADB_SERVERS) is None:
        missing.append("mariadbd")
    if _first_executable(MARIADB_INSTALLERS) is None:
        missing.append("mariadb-install-db")
    if missing:
        return f"Slurm test cluster: {', '.join(missing)} not installed ({INSTALL_HINT})"
    if os.geteuid() != 0:
        return "Slurm test cluster: slurmd must run as root to launch jobs (run the tests as root)"
    for name in CONFIG_FILES:
        path = SLURM_CONF_DIR / name
        if path.exists() and not path.is_symlink():
            return f"Slurm test cluster: {path} exists (a real cluster's?); not touching it"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlurmTestCluster:
    """One node, partitions ``cpu`` (default) and ``gpu``; use as a context manager."""

    def __init__(self, cpus: int = 16, memory_mb: int = 64000, gpus: int = 2, min_job_age_s: int = 300):
        self.cpus, self.memory_mb, self.gpus, self.min_job_age_s = cpus, memory_mb, gpus, min_job_age_s
        self.base = Path(tempfile.mkdtemp(prefix="taufm-slurm-"))
        self.node = socket.gethostname().split(".")[0]
        self.processes: dict[str, subprocess.Popen] = {}
        self.links: list[Path] = []

    # ---- configuration ----------------------------------------------------------------------
    def _write_configs(self) -> None:
        for sub in ("state", "spool", "log", "mysql", "run"):
            (self.base / sub).mkdir()
        self.ports = {name: _free_port() for name in ("slurmctld", "slurmd", "slurmdbd", "mariadb")}
        b = self.base
        slurm_conf = f"""\
ClusterName=taufmtest
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={self.ports["slurmctld"]}
SlurmdPort={self.ports["slurmd"]}
SlurmUser=root
SlurmdUser=root
AuthType=auth/none
CredType=cred/none
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge={self.min_job_age_s}
SchedulerParameters=sched_interval=1,bf_interval=1
StateSaveLocation={b / "state"}
SlurmdSpoolDir={b / "spool"}
SlurmctldPidFile={b / "run" / "slurmctld.pid"}
SlurmdPidFile={b / "run" / "slurmd.pid"}
SlurmctldLogFile={b / "log" / "slurmctld.log"}
SlurmdLogFile={b / "log" / "slurmd.log"}
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={self.ports["slurmdbd"]}
AccountingStorageTRES=gres/gpu
AccountingStoreFlags=job_comment
DefMemPerCPU=1000
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} Gres=gpu:{self.gpus} State=UNKNOWN
PartitionName=cpu Nodes=ALL Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=ALL Default=NO MaxTime=INFINITE State=UP
"""
        # Slurm wants a distinct character device per GPU: nodes with /dev/null's numbers.
        (b / "dev").mkdir()
        for i in range(self.gpus):
            os.mknod(b / "dev" / f"fakegpu{i}", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        gres_conf = f"NodeName={self.node} Name=gpu File={b / 'dev'}/fakegpu[0-{self.gpus - 1}]\n"
        slurmdbd_conf = f"""\
AuthType=auth/none
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={self.ports["slurmdbd"]}
SlurmUser=root
LogFile={b / "log" / "slurmdbd.log"}
PidFile={b / "run" / "slurmdbd.pid"}
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={self.ports["mariadb"]}
StorageUser=root
StorageLoc=taufm_slurm_acct
"""
        for name, text in zip(CONFIG_FILES, (slurm_conf, gres_conf, slurmdbd_conf)):
            path = b / name
            path.write_text(text)
            path.chmod(0o600)
        SLURM_CONF_DIR.mkdir(parents=True, exist_ok=True)
        for name in CONFIG_FILES:
            link = SLURM_CONF_DIR / name
            if link.is_symlink():
                link.unlink()  # left by a test run that was killed
            link.symlink_to(b / name)
            self.links.append(link)

    # ---- daemons ----------------------------------------------------------------------------
    def _start(self, name: str, command: list[str]) -> None:
        log = open(self.base / "log" / f"{name}.stdout", "wb")  # noqa: SIM115 (closed with the process)
        self.processes[name] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()

    def _wait_for(self, what: str, check, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.processes.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode} while waiting for {what}:\n{self.logs()}")
            if check():
                return
            time.sleep(0.25)
        raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}:\n{self.logs()}")

    @staticmethod
    def _port_open(port: int) -> bool:
        with contextlib.closing(socket.socket()) as s:
            s.settimeout(0.2)
            return s.connect_ex(("127.0.0.1", port)) == 0

    def _node_states(self) -> set[str]:
        """States of the node, one per partition it is in (``idle``, ``drain``, ...)."""
        proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True)
        return set(proc.stdout.split()) if proc.returncode == 0 else set()

    def start(self) -> SlurmTestCluster:
        reason = unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        try:
            self._write_configs()
            b = self.base
            installer = _first_executable(MARIADB_INSTALLERS)
            subprocess.run(
                [installer, "--no-defaults", "--user=root", f"--datadir={b / 'mysql'}", "--auth-root-authentication-method=normal", "--skip-test-db"],
                check=True, capture_output=True,
            )
            # MariaDB fails silently when it cannot write its log: give it one of its own.
            self._start("mariadb", [
                _first_executable(MARIADB_SERVERS), "--no-defaults", "--user=root", f"--datadir={b / 'mysql'}",
                f"--port={self.ports['mariadb']}", "--bind-address=127.0.0.1", f"--socket={b / 'run' / 'mysql.sock'}",
                "--skip-grant-tables", f"--log-error={b / 'log' / 'mariadb.log'}", f"--pid-file={b / 'run' / 'mariadb.pid'}",
            ])
            self._wait_for("MariaDB", lambda: self._port_open(self.ports["mariadb"]))
            self._start("slurmdbd", [_first_executable(("slurmdbd",)), "-D"])
            self._wait_for("slurmdbd", lambda: self._port_open(self.ports["slurmdbd"]))
            self._start("slurmctld", [_first_executable(("slurmctld",)), "-D", "-i"])
            self._wait_for("slurmctld", lambda: self._port_open(self.ports["slurmctld"]))
            self._start("slurmd", [_first_executable(("slurmd",)), "-D"])
            self._wait_for("the node to be idle", lambda: self._node_states() == {"idle"})
            self._wait_for("sacct", lambda: subprocess.run(["sacct", "-n", "-X"], capture_output=True).returncode == 0)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Terminate the daemons this object started (by pid), then remove links and files."""
        for name in ("slurmd", "slurmctld", "slurmdbd", "mariadb"):
            proc = self.processes.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        for link in self.links:
            if link.is_symlink() and Path(os.readlink(link)).parent == self.base:
                link.unlink()
        self.links.clear()
        shutil.rmtree(self.base, ignore_errors=True)

    def logs(self) -> str:
        parts = []
        for path in sorted((self.base / "log").glob("*")):
            text = path.read_text(errors="replace")[-3000:]
            parts.append(f"--- {path.name}\n{text}")
        return "\n".join(parts)

    def sacct(self, *fields: str) -> list[dict[str, str]]:
        """Every job's allocation (one row per job, no steps) with the given sacct fields."""
        proc = subprocess.run(
            ["sacct", "-a", "-X", "-n", "-P", "-S", "now-1days", "-o", ",".join(fields)], capture_output=True, text=True, check=True
        )
        return [dict(zip(fields, line.split("|"))) for line in proc.stdout.splitlines() if line]

    def __enter__(self) -> SlurmTestCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":  # start a cluster by hand: python tests/slurm_cluster.py
    with SlurmTestCluster() as cluster:
        print(f"cluster up (state in {cluster.base}); Ctrl-C stops it")
        subprocess.run(["sinfo"])
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
