"""Inputs over XRootD: root:// URLs read from a real ``xrootd`` server on loopback.

The server (tests/xrootd_server.py) exports a temporary directory holding copies of the fixtures;
the tests ingest the URLs and compare with ingesting the local files, expand remote globs, lose
the server mid-read, ask for a file that is not there, and run the smoke preset's ingestion of one
sample through Snakemake from a URL. Skipped, with the reason, where the ``xrootd`` binary or the
Python client is missing (``apt-get install xrootd-server``, ``pip install 'taufm[remote]'``).
The first tests need no server: the URL grammar, which errors are retried, and resuming.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from taufm import paths, remote
from taufm.errors import TaufmError
from tests.xrootd_server import XRootDServer, exported_directory, unavailable_reason

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
EE_FIXTURE = FIXTURES / "edm4hep" / "podio-0.16_ZH_Htautau.root"  # the file the smoke preset reads
JETCLASS_FIXTURE = FIXTURES / "jetclass" / "TTBar_000.root"
SMOKE = ROOT / "workflow" / "presets" / "smoke.yaml"
# The XRootD client gives up on a refused connection after one 1 s window (read when the client
# loads, so set before any test imports it); taufm retries twice, 0.1 s apart.
os.environ.setdefault("XRD_CONNECTIONWINDOW", "1")
os.environ.setdefault("XRD_CONNECTIONRETRY", "1")
FAST_RETRIES = {"TAUFM_XROOTD_ATTEMPTS": "2", "TAUFM_XROOTD_BACKOFF_S": "0.1", "XRD_CONNECTIONWINDOW": "1", "XRD_CONNECTIONRETRY": "1"}

REASON = unavailable_reason()
needs_server = pytest.mark.skipif(REASON is not None, reason=REASON or "")


# ---- Without a server ----


def test_urls_are_split_and_named():
    url = remote.RemoteURL.parse("root://eosuser.cern.ch//eos/user/t/tau/ZH_000.root")
    assert (url.server, url.path, url.name) == ("root://eosuser.cern.ch", "/eos/user/t/tau/ZH_000.root", "ZH_000.root")
    assert str(remote.RemoteURL.parse("root://host:1094/eos/a.root?xrd.wantprot=krb5")) == "root://host:1094//eos/a.root?xrd.wantprot=krb5"
    assert remote.file_name("root://host//a/b/c.root") == "c.root" and remote.file_name("a/b/c.root") == "c.root"
    assert remote.as_source("root://host//a/b.root") == "root://host//a/b.root"  # a Path would fold the //
    assert not remote.is_remote(Path("root://host//a.root")) and not remote.is_remote("/data/root.root")
    for bad in ("root://", "root://host", "root://host//"):
        with pytest.raises(TaufmError, match="not an XRootD URL"):
            remote.RemoteURL.parse(bad)


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (OSError("File did not vector_read properly: [FATAL] Connection error"), True),
        (OSError("Failed to open file: [ERROR] Operation expired"), True),
        (OSError("[FATAL] Socket timeout"), True),
        (ConnectionResetError("reset by peer"), True),
        (TimeoutError(), True),
        (OSError("[ERROR] Server responded with an error: [3024] server overloaded"), True),
        (OSError("Failed to open file: [ERROR] Server responded with an error: [3011] Unable to open /x; no such file or directory"), False),
        (OSError("[ERROR] Server responded with an error: [3010] Stating path '/etc' is disallowed."), False),
        (OSError("[FATAL] Auth failed: No protocols left to try"), False),
        (OSError("[FATAL] Invalid address"), False),
        (FileNotFoundError("x"), False),
        (ValueError("not a ROOT file"), False),
    ],
)
def test_which_errors_are_retried(error, transient):
    assert remote.is_transient(error) is transient


def test_retry_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("TAUFM_XROOTD_ATTEMPTS", "3")
    monkeypatch.setenv("TAUFM_XROOTD_BACKOFF_S", "0.5")
    policy = remote.RetryPolicy.from_environment()
    assert (policy.attempts, [policy.wait(n) for n in (1, 2, 3)]) == (3, [0.5, 1.0, 2.0])
    monkeypatch.setenv("TAUFM_XROOTD_ATTEMPTS", "0")
    with pytest.raises(TaufmError, match="TAUFM_XROOTD_ATTEMPTS"):
        remote.RetryPolicy.from_environment()


class _FlakyTree:
    """Entries 0..n-1 in chunks; the read of chunk ``fail_at`` fails ``failures`` times."""

    def __init__(self, n: int, step: int, fail_at: int, failures: int, error: OSError) -> None:
        self.n, self.step, self.fail_at, self.failures, self.error = n, step, fail_at, failures, error
        self.opened = 1
        self.starts: list[int] = []

    def reopen(self):
        self.opened += 1
        return _Closable(), self

    def iterate(self, tree, entry_start):
        self.starts.append(entry_start)
        for start in range(entry_start, self.n, self.step):
            if start == self.fail_at and self.failures:
                self.failures -= 1
                raise self.error
            yield list(range(start, min(start + self.step, self.n)))


class _Closable:
    closed = False

    def close(self):
        self.closed = True


def test_a_lost_connection_resumes_at_the_chunk_that_failed():
    tree = _FlakyTree(10, 3, fail_at=6, failures=2, error=OSError("[FATAL] Connection error"))
    policy = remote.RetryPolicy(attempts=3, backoff_s=0.0)
    chunks = list(remote.iterate_resuming("root://h//f.root", _Closable(), tree, tree.reopen, tree.iterate, policy=policy))
    assert [start for start, _ in chunks] == [0, 3, 6, 9]
    assert [e for _, values in chunks for e in values] == list(range(10))  # each entry once
    assert tree.starts == [0, 6, 6] and tree.opened == 3


def test_a_connection_lost_too_often_or_a_permanent_error_names_the_url_and_entry():
    policy = remote.RetryPolicy(attempts=2, backoff_s=0.0)
    tree = _FlakyTree(10, 3, fail_at=3, failures=5, error=OSError("[FATAL] Connection error"))
    with pytest.raises(TaufmError, match=r"root://h//f.root: reading from entry 3 failed 2 times in a row \(Connection error\)"):
        list(remote.iterate_resuming("root://h//f.root", _Closable(), tree, tree.reopen, tree.iterate, policy=policy))
    tree = _FlakyTree(10, 3, fail_at=3, failures=1, error=OSError("[ERROR] Server responded with an error: [3010] not allowed"))
    with pytest.raises(TaufmError, match=r"root://h//f.root: reading from entry 3 failed: \[3010\] not allowed"):
        list(remote.iterate_resuming("root://h//f.root", _Closable(), tree, tree.reopen, tree.iterate, policy=policy))
    assert tree.opened == 1  # not retried


def test_a_local_file_is_never_retried():
    tree = _FlakyTree(10, 3, fail_at=3, failures=1, error=OSError("disk"))
    with pytest.raises(OSError, match="disk"):
        list(remote.iterate_resuming(Path("f.root"), _Closable(), tree, tree.reopen, tree.iterate))
    assert tree.opened == 1


def test_local_patterns_expand_as_before(tmp_path):
    for name in ("b.root", "a.root", "c.txt"):
        (tmp_path / name).write_text("")
    assert remote.expand_patterns([str(tmp_path / "*.root"), str(tmp_path / "c.txt")], "data.files.future.qq") == [
        str(tmp_path / "a.root"),
        str(tmp_path / "b.root"),
        str(tmp_path / "c.txt"),
    ]
    with pytest.raises(TaufmError, match=r"data.files.future.qq: '.*nothing\*.root' matches no file"):
        remote.expand_patterns([str(tmp_path / "nothing*.root")], "data.files.future.qq")


# ---- A real server ----


@pytest.fixture(scope="session")
def served(tmp_path_factory):
    """(server, export directory): the fixtures, a small glob tree and a simulated file whose
    branches hold several baskets (so that later chunks need later reads)."""
    if REASON is not None:
        pytest.skip(REASON)
    from taufm.sim.ee import simulate_ee_shard

    export = exported_directory()
    server = XRootDServer(export, name="taufm-test")
    server.publish(EE_FIXTURE)
    server.publish(JETCLASS_FIXTURE)
    for name in ("glob/TTBar_001.root", "glob/TTBar_000.root", "glob/ZJets_000.root", "glob/sub/TTBar_002.root", "glob/.TTBar_hidden.root"):
        server.publish(JETCLASS_FIXTURE, name)
    simulated = tmp_path_factory.mktemp("xrootd") / "ZH_Htautau_000.root"
    simulate_ee_shard("ZH_Htautau", 0, 160, simulated, seed=5, batch_size=40)  # 4 baskets of 40 events
    server.publish(simulated)
    server.start()
    yield server, export
    server.stop()
    subprocess.run(["rm", "-rf", str(export)], check=False)


def _manifest(shard: Path) -> dict:
    return json.loads(paths.manifest(shard).read_text())


def _without_input(manifest: dict) -> dict:
    return {k: v for k, v in manifest.items() if k not in ("input", "remote_input")}


@needs_server
def test_a_url_gives_the_shard_of_the_local_file(served, tmp_path):
    from taufm.ingest.ee import EEIngestSettings, ingest_ee_file
    from taufm.ingest.jetclass import ingest_jetclass_file

    server, export = served
    settings = EEIngestSettings(chunk_size=20)  # 50 events: three chunks, streamed
    url = server.url(EE_FIXTURE.name)
    ingest_ee_file(url, tmp_path / "remote.parquet", sample="ZH_Htautau", settings=settings)
    ingest_ee_file(EE_FIXTURE, tmp_path / "local.parquet", sample="ZH_Htautau", settings=settings)
    ingest_jetclass_file(server.url(JETCLASS_FIXTURE.name), tmp_path / "jc_remote.parquet", sample="TTBar", chunk_size=7)
    ingest_jetclass_file(JETCLASS_FIXTURE, tmp_path / "jc_local.parquet", sample="TTBar", chunk_size=7)

    for name, local in (("remote", EE_FIXTURE), ("jc_remote", JETCLASS_FIXTURE)):
        shard, twin = tmp_path / f"{name}.parquet", tmp_path / f"{name.replace('remote', 'local')}.parquet"
        assert shard.read_bytes() == twin.read_bytes()  # the same table, byte for byte
        manifest = _manifest(shard)
        assert _without_input(manifest) == _without_input(_manifest(twin))
        assert manifest["input"] == server.url(local.name)
        served_copy = export / local.name
        assert manifest["remote_input"] == {
            "url": server.url(local.name),
            "size": served_copy.stat().st_size,
            "mtime": int(served_copy.stat().st_mtime),
            "checksum": manifest["remote_input"]["checksum"],
        }
        assert manifest["remote_input"]["checksum"].startswith("adler32:")


@needs_server
def test_remote_globs_expand_on_the_server(served):
    server, export = served
    listed = {}
    found = remote.expand_patterns([server.url("glob/TTBar_*.root"), server.url("glob/*/TTBar_*.root")], "data.files.jetclass.TTBar", listed=listed)
    assert found == [server.url("glob/TTBar_000.root"), server.url("glob/TTBar_001.root"), server.url("glob/sub/TTBar_002.root")]
    assert sorted(listed) == found and all(listed[url] == remote.stat(url) for url in found)  # the listing's stats
    assert remote.expand_patterns([server.url("glob/[TZ]*_000.root")], "k") == [server.url("glob/TTBar_000.root"), server.url("glob/ZJets_000.root")]
    assert remote.expand_patterns([server.url("glob/ZJets_000.root")], "k") == [server.url("glob/ZJets_000.root")]
    for pattern in ("glob/QCD_*.root", "nowhere/*/TTBar_*.root", "glob/QCD_000.root"):
        with pytest.raises(TaufmError, match=re.escape(f"data.files.jetclass.TTBar: {server.url(pattern)!r} matches no file")):
            remote.expand_patterns([server.url(pattern)], "data.files.jetclass.TTBar")


@needs_server
def test_a_missing_or_forbidden_remote_file_is_an_error_naming_the_url(served, tmp_path):
    from taufm.ingest.ee import ingest_ee_file
    from taufm.ingest.jetclass import ingest_jetclass_file

    server, _ = served
    missing = server.url("missing.root")
    with pytest.raises(TaufmError, match=rf"{missing}: .*no such file"):
        ingest_ee_file(missing, tmp_path / "a.parquet", sample="ZH_Htautau")
    with pytest.raises(TaufmError, match=rf"{missing}: .*no such file"):
        ingest_jetclass_file(missing, tmp_path / "b.parquet", sample="TTBar")
    forbidden = f"{server.server}//etc/hostname"  # outside the export
    with pytest.raises(TaufmError, match=rf"{forbidden}: .*\[3010\]"):
        ingest_ee_file(forbidden, tmp_path / "c.parquet", sample="ZH_Htautau")
    assert list(tmp_path.iterdir()) == []


# The ingestion in a child process that stops after its first chunk until told to go on.
PAUSED_INGESTION = """
import sys
import taufm.ingest.ee as ee
from taufm.cli import main
process_chunk, seen = ee.process_chunk, []
def pausing(*args, **kwargs):
    seen.append(1)
    if len(seen) == 1:  # the first chunk is read: pause before the next read
        print("PAUSED", flush=True)
        sys.stdin.readline()
    return process_chunk(*args, **kwargs)
ee.process_chunk = pausing
sys.exit(main(sys.argv[1:]))
"""


@needs_server
def test_a_server_lost_mid_read_is_an_error_naming_the_url_and_leaves_no_shard(served, tmp_path):
    _, export = served
    with XRootDServer(export, name="taufm-killed") as doomed:
        url = doomed.url("ZH_Htautau_000.root")
        output = tmp_path / "out" / "ZH_Htautau_000.parquet"
        command = [sys.executable, "-c", PAUSED_INGESTION, "ingest-ee", "--sample", "ZH_Htautau", "--settings", json.dumps({"chunk_size": 40}), "--output", str(output), url]
        child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **FAST_RETRIES})
        try:
            assert child.stdout.readline().strip() == "PAUSED", child.communicate(timeout=60)
            doomed.kill()
            out, err = child.communicate("go\n", timeout=60)
        finally:
            child.kill()
    assert child.returncode == 2, err
    assert f"taufm ingest-ee: error: {url}: reading from entry 40 failed (Connection error) and reopening it failed" in err
    assert "Traceback" not in err
    assert not output.exists() and not paths.manifest(output).exists()
    assert list(output.parent.iterdir()) == []  # no temporary file either


@needs_server
def test_a_server_back_after_a_loss_gives_the_same_shard(served, tmp_path):
    """The server dies after the first chunk and is back while taufm waits to retry: the
    ingestion reopens the file, resumes at the chunk that failed and writes the local shard."""
    _, export = served
    local = tmp_path / "local.parquet"
    output = tmp_path / "resumed.parquet"
    from taufm.ingest.ee import EEIngestSettings, ingest_ee_file

    ingest_ee_file(export / "ZH_Htautau_000.root", local, sample="ZH_Htautau", settings=EEIngestSettings(chunk_size=40))
    first = XRootDServer(export, name="taufm-lost").start()
    url = first.url("ZH_Htautau_000.root")
    command = [sys.executable, "-c", PAUSED_INGESTION, "ingest-ee", "--sample", "ZH_Htautau", "--settings", json.dumps({"chunk_size": 40}), "--output", str(output), url]
    env = {**os.environ, **FAST_RETRIES, "TAUFM_XROOTD_ATTEMPTS": "4", "TAUFM_XROOTD_BACKOFF_S": "1.5"}
    child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    second = XRootDServer(export, port=first.port, name="taufm-back")
    try:
        assert child.stdout.readline().strip() == "PAUSED", child.communicate(timeout=60)
        first.kill()
        child.stdin.write("go\n")
        child.stdin.flush()
        warnings = []
        while not warnings or "reopening in" not in warnings[-1]:  # taufm noticed and waits
            warnings.append(child.stderr.readline())
            assert warnings[-1], "".join(warnings)
        second.start()
        _, err = child.communicate(timeout=60)
    finally:
        child.kill()
        first.stop()
        second.stop()
    assert child.returncode == 0, "".join(warnings) + err
    assert f"{url}: reading from entry 40 failed (Connection error); reopening" in warnings[-1]
    assert output.read_bytes() == local.read_bytes()
    assert _without_input(_manifest(output)) == _without_input(_manifest(local))


@needs_server
def test_snakemake_reads_a_sample_from_a_url_and_reruns_only_when_it_changes(served, tmp_path):
    server, _ = served
    local_files = yaml.safe_load(SMOKE.read_text())["data"]["files"]["future"]["ZH_Htautau"]
    assert local_files == [str(EE_FIXTURE.relative_to(ROOT))]  # the file the server holds a copy of
    shard = paths.INGESTED_EE.format(sample="ZH_Htautau", shard=paths.shard_label(0))
    env = {**os.environ, **FAST_RETRIES}
    served_copy = server.publish(EE_FIXTURE, f"snakemake/{EE_FIXTURE.name}")  # this test's own copy: it changes it

    def snakemake(results: Path, *args: str, url: str | None = None) -> subprocess.CompletedProcess:
        override = tmp_path / f"{results.name}.yaml"
        files = {"data": {"files": {"future": {"ZH_Htautau": [url]}}}} if url else {}
        override.write_text(yaml.safe_dump({"results_dir": str(results), **files}))
        command = [sys.executable, "-m", "snakemake", "--cores", "1", *args, str(results / shard), "--configfile", str(SMOKE), str(override)]
        proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        return proc

    url = server.url(served_copy)
    snakemake(tmp_path / "local")
    snakemake(tmp_path / "remote", url=url)
    local, streamed = tmp_path / "local" / shard, tmp_path / "remote" / shard
    assert streamed.read_bytes() == local.read_bytes()
    assert _without_input(_manifest(streamed)) == _without_input(_manifest(local))
    assert _manifest(streamed)["remote_input"]["url"] == url

    unchanged = snakemake(tmp_path / "remote", "--dry-run", url=url)
    assert "Nothing to be done" in unchanged.stdout + unchanged.stderr
    os.utime(served_copy, (served_copy.stat().st_atime, served_copy.stat().st_mtime + 60))  # rewritten on the server
    changed = snakemake(tmp_path / "remote", "--dry-run", url=url)
    assert "ingest_ee" in changed.stdout and "Params have changed" in changed.stdout, changed.stdout
