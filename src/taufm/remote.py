"""Inputs on XRootD servers (EOS and the like): ``root://`` URLs in ``data.files``.

A URL ``root://host[:port]//path/file.root`` is read where it lies: uproot streams it through
``fsspec-xrootd`` in the same chunks as a local file, nothing is copied. This module holds what
the workflow and the ingestion need besides the reading itself:

- :func:`expand_patterns`: the ``data.files`` entries of one sample as a sorted list of files.
  Local entries are expanded with :func:`glob.glob`; remote ones are listed on the server (``*``
  and ``[...]`` within one path component; ``?`` starts the URL's query, as XRootD reads it, so
  it is no wildcard here). A pattern matching nothing is an error naming it.
- :func:`stat`: size and modification time of a remote file (and, on request, the server's
  checksum) as a :class:`RemoteFile`; :meth:`RemoteFile.identity` is what the ingestion rules
  carry as a param, so that a change on the server reruns exactly the jobs reading that file.
- :func:`open_root` and :func:`iterate_resuming`: opening and chunked reading with retries.

Which errors are retried (:func:`is_transient`): a lost or refused connection, a socket error or
timeout, a request that expired, and the server answers that say "try again" (XRootD error codes
3007 I/O error, 3008 out of memory, 3012 internal error, 3014 no server available, 3020 in
progress, 3024 overloaded). Any other answer of the server (3011 no such file, 3010 not
allowed, 3005 not a directory, ...) and an invalid address or failed authentication are
permanent: a :class:`~taufm.errors.TaufmError` naming the URL, at once. A transient error is
retried ``TAUFM_XROOTD_ATTEMPTS`` times in a row (default 4), waiting ``TAUFM_XROOTD_BACKOFF_S``
seconds (default 2) doubled after each failure; a read that fails mid-file reopens the file and
resumes at the first entry not yet read, so the output does not depend on the failures. The
XRootD client's own reconnection is shortened (see :data:`CLIENT_DEFAULTS`) unless the
environment sets it, so that a dead server is noticed in seconds rather than minutes.
"""

from __future__ import annotations

import contextlib
import fnmatch
import glob
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taufm.errors import TaufmError

log = logging.getLogger(__name__)

SCHEME = "root://"
# Wildcards of a remote pattern ('?' is left out: it starts the query of an XRootD URL).
REMOTE_WILDCARDS = re.compile(r"[*\[]")
# The XRootD client's settings taufm lowers when the environment does not set them: a refused
# connection is retried for XRD_CONNECTIONWINDOW seconds XRD_CONNECTIONRETRY times (the client's
# defaults, 120 s x 5, hold a job for ten minutes on a dead server), a request unanswered for
# XRD_REQUESTTIMEOUT seconds fails (default 1800), and after a failed connection every request to
# that server fails at once for XRD_STREAMERRORWINDOW seconds (default 1800: no retry could reach
# a server back after a restart). taufm's own retries, with their backoff, come on top.
CLIENT_DEFAULTS = {"XRD_CONNECTIONWINDOW": "10", "XRD_CONNECTIONRETRY": "2", "XRD_REQUESTTIMEOUT": "300", "XRD_STREAMERRORWINDOW": "1"}
# XRootD server error codes (kXR_*) that mean "try again later".
TRANSIENT_SERVER_ERRORS = {3007: "I/O error", 3008: "out of memory", 3012: "internal error", 3014: "no server available", 3020: "in progress", 3024: "overloaded"}
# Client messages that no retry can fix.
PERMANENT_CLIENT_ERRORS = ("invalid address", "auth failed", "authentication", "not supported", "invalid url")
_SERVER_ERROR = re.compile(r"\[(3\d\d\d)\]")
INSTALL_HINT = "reading root:// URLs needs the XRootD client: pip install 'taufm[remote]' (fsspec-xrootd and xrootd)"
NOT_FOUND, NOT_A_DIRECTORY = 3011, 3005


class RemoteError(TaufmError):
    """A request to an XRootD server that failed for good; ``code`` is the server's error code
    (kXR_*, e.g. 3011 no such file), None when the client gave up without an answer."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


def is_remote(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a ``root://`` URL (a Path never is: it would lose the ``//``)."""
    return isinstance(path, str) and path.startswith(SCHEME)


def as_source(path: str | os.PathLike[str]) -> str | Path:
    """A URL stays a string (``Path`` would fold its ``//``); anything else becomes a Path."""
    return path if is_remote(path) else Path(path)


@dataclass(frozen=True)
class RemoteURL:
    """``root://host[:port]//path[?query]``, split; ``str()`` gives the canonical URL."""

    server: str  # root://host[:port]
    path: str  # absolute path on the server
    query: str = ""  # without the '?'

    @classmethod
    def parse(cls, url: str) -> RemoteURL:
        match = re.fullmatch(r"(root://[^/?#]+)/([^?]*)(?:\?(.*))?", url)
        if not match or not match.group(2).strip("/"):
            raise TaufmError(f"{url!r} is not an XRootD URL of a file (root://host[:port]//path/to/file.root)")
        server, path, query = match.groups()
        return cls(server, "/" + path.lstrip("/"), query or "")

    def __str__(self) -> str:
        return f"{self.server}/{self.path}" + (f"?{self.query}" if self.query else "")

    def with_path(self, path: str) -> RemoteURL:
        return RemoteURL(self.server, path, self.query)

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rpartition("/")[2]


def file_name(source: str | os.PathLike[str]) -> str:
    """The base name of a local path or of a URL's path (what the shards' ``file`` column holds)."""
    return RemoteURL.parse(source).name if is_remote(source) else Path(source).name


# ---- Which errors are worth retrying ----


def _error_text(err: BaseException | Any) -> str:
    return str(getattr(err, "message", None) or err)


def is_transient(err: BaseException) -> bool:
    """Whether a failed XRootD request may succeed when tried again (see the module docstring).

    The XRootD client and fsspec-xrootd report every failure as an ``OSError`` carrying the
    client's message; the server's answer, when there was one, holds its error code ``[3xxx]``.
    """
    if isinstance(err, (ConnectionError, TimeoutError)):
        return True
    if isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    if not isinstance(err, OSError):
        return False
    return _transient_message(_error_text(err))


def server_error_code(text: str) -> int | None:
    """The XRootD server's error code in a client message, if the server answered."""
    code = _SERVER_ERROR.search(text)
    return int(code.group(1)) if code else None


def _transient_message(text: str) -> bool:
    code = server_error_code(text)
    if code is not None:
        return code in TRANSIENT_SERVER_ERRORS
    lowered = text.lower()
    return not any(phrase in lowered for phrase in PERMANENT_CLIENT_ERRORS)


def _reason(text: str) -> str:
    """The client's message without fsspec-xrootd's wrapping ("Failed to submit <...> request:")
    and the client's decoration, for an error line: "Connection error", "[3011] Unable to ..."."""
    text = " ".join(text.split())
    marker = min((i for i in (text.find("[ERROR]"), text.find("[FATAL]")) if i >= 0), default=0)
    text = text[marker:]
    for prefix in ("[ERROR] Server responded with an error: ", "[ERROR] ", "[FATAL] "):
        text = text.replace(prefix, "")
    return text


def describe_error(err: BaseException) -> str:
    """An XRootD failure in a few words ("Connection error", "[3011] Unable to open ...")."""
    return _reason(_error_text(err))


@dataclass(frozen=True)
class RetryPolicy:
    """How often a transient failure is retried in a row, and the first wait (then doubled)."""

    attempts: int = 4
    backoff_s: float = 2.0

    @classmethod
    def from_environment(cls) -> RetryPolicy:
        def number(name: str, kind, default):
            text = os.environ.get(name)
            if text is None:
                return default
            try:
                value = kind(text)
            except ValueError:
                value = -1
            if value < (1 if kind is int else 0):
                raise TaufmError(f"environment variable {name}={text!r}: expected a {'positive integer' if kind is int else 'non-negative number'}")
            return value

        return cls(number("TAUFM_XROOTD_ATTEMPTS", int, cls.attempts), number("TAUFM_XROOTD_BACKOFF_S", float, cls.backoff_s))

    def wait(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failure in a row."""
        return self.backoff_s * 2 ** (failures - 1)


def retrying(url: str, what: str, request: Callable[[], Any], policy: RetryPolicy | None = None) -> Any:
    """``request()``, retried on transient errors; a TaufmError naming ``url`` when it gives up.

    ``request`` raises an ``OSError`` on failure. Other exceptions pass through unchanged.
    """
    policy = policy or RetryPolicy.from_environment()
    failures = 0
    while True:
        try:
            return request()
        except OSError as err:
            failures += 1
            time.sleep(_wait_after_failure(url, what, err, failures, policy, "trying again"))


def _wait_after_failure(url: str | os.PathLike[str], what: str, err: OSError, failures: int, policy: RetryPolicy, then: str) -> float:
    """After the ``failures``-th failure in a row of ``what`` on ``url``: the seconds to wait before
    ``then`` (said in the log), or a RemoteError naming ``url`` when the error is permanent or the
    attempts are spent."""
    text = _error_text(err)
    if not is_transient(err):
        raise RemoteError(f"{url}: {what} failed: {_reason(text)}", server_error_code(text)) from err
    if failures >= policy.attempts:
        raise RemoteError(f"{url}: {what} failed {failures} times in a row ({_reason(text)}); is the server up and reachable?") from err
    wait = policy.wait(failures)
    log.warning("%s: %s failed (%s); %s in %.1f s (attempt %d of %d)", url, what, _reason(text), then, wait, failures + 1, policy.attempts)
    return wait


# ---- The XRootD client: metadata (stat, listings, checksums) ----


def client():
    """``XRootD.client``, imported after setting :data:`CLIENT_DEFAULTS` where the environment
    does not; a TaufmError saying what to install where it is missing."""
    for name, value in CLIENT_DEFAULTS.items():
        os.environ.setdefault(name, value)
    try:
        from XRootD import client as xrootd_client
    except ImportError as err:
        raise TaufmError(INSTALL_HINT) from err
    return xrootd_client


_FILESYSTEMS: dict[str, Any] = {}


def _filesystem(server: str):
    if server not in _FILESYSTEMS:
        _FILESYSTEMS[server] = client().FileSystem(server)
    return _FILESYSTEMS[server]


def _request(call: Callable[[], tuple[Any, Any]]) -> Callable[[], Any]:
    """An XRootD client call returning (status, response) as a request raising OSError."""

    def run():
        status, response = call()
        if not status.ok:
            raise OSError(status.message.strip())
        return response

    return run


@dataclass(frozen=True)
class RemoteFile:
    """What a remote file is at one moment: its URL, size (bytes), modification time (seconds
    since the epoch, the server's resolution) and, where asked and the server has one, its
    checksum (``adler32:1d2f888f``)."""

    url: str
    size: int
    mtime: int
    checksum: str | None = None

    def identity(self) -> str:
        """The param an ingestion job carries: changes when the file is replaced or rewritten."""
        return f"size={self.size} mtime={self.mtime}"

    def describe(self) -> dict:
        """For a shard's manifest."""
        return {"url": self.url, "size": self.size, "mtime": self.mtime, **({"checksum": self.checksum} if self.checksum else {})}

    def same_file(self, other: RemoteFile) -> bool:
        return (self.size, self.mtime) == (other.size, other.mtime)


def stat(url: str, *, checksum: bool = False, policy: RetryPolicy | None = None) -> RemoteFile:
    """Size and modification time of the file at ``url`` (and its checksum if asked and the
    server answers; one try, nothing when it does not); a TaufmError naming the URL when it is
    missing, not a file, not allowed or the server cannot be reached."""
    parsed = RemoteURL.parse(url)
    fs = _filesystem(parsed.server)
    info = retrying(url, "stat", _request(lambda: fs.stat(parsed.path)), policy)
    if info.flags & client().flags.StatInfoFlags.IS_DIR:
        raise RemoteError(f"{url}: a directory, not a file")
    found = None
    if checksum:
        found = _checksum(fs, parsed)
    return RemoteFile(url=url, size=int(info.size), mtime=int(info.modtime), checksum=found)


def _checksum(fs, parsed: RemoteURL) -> str | None:
    status, response = fs.query(client().flags.QueryCode.CHECKSUM, parsed.path, timeout=30)
    if not status.ok:
        log.debug("%s: no checksum from the server (%s)", parsed, _reason(status.message))
        return None
    words = (response or b"").rstrip(b"\0").decode(errors="replace").split()
    return f"{words[0]}:{words[1]}" if len(words) == 2 else None


# ---- data.files: patterns -> files ----


def expand_remote(
    pattern: str,
    *,
    policy: RetryPolicy | None = None,
    stat_file: Callable[[str], RemoteFile] | None = None,
    listed: dict[str, RemoteFile] | None = None,
) -> list[str]:
    """The sorted URLs of the files ``pattern`` names on its server ([] when none).

    Without a wildcard: the URL itself if the file exists (checked with ``stat_file``). With
    ``*`` or ``[...]``: each wildcard component is matched against the server's directory listing
    (names starting with '.' only by a pattern starting with '.', as :mod:`glob` does); the last
    component matches files, the others directories. The listing holds each file's size and
    mtime: they are put in ``listed`` (URL -> RemoteFile), sparing a stat per file.
    """
    stat_file = stat_file or (lambda url: stat(url, policy=policy))
    parsed = RemoteURL.parse(pattern)
    parts = [p for p in parsed.path.split("/") if p]
    if not any(REMOTE_WILDCARDS.search(p) for p in parts):
        try:
            stat_file(str(parsed))
        except RemoteError as err:
            if err.code == NOT_FOUND:
                return []
            raise
        return [str(parsed)]
    fs = _filesystem(parsed.server)
    flags = client().flags
    candidates = ["/"]
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        found = []
        for directory in candidates:
            if not REMOTE_WILDCARDS.search(part) and not last:
                found.append(f"{directory.rstrip('/')}/{part}")
                continue
            url = str(parsed.with_path(directory))
            try:
                listing = retrying(url, "directory listing", _request(lambda d=directory: fs.dirlist(d, flags.DirListFlags.STAT)), policy)
            except RemoteError as err:
                if err.code in (NOT_FOUND, NOT_A_DIRECTORY):
                    continue  # a directory named before the wildcard that is not there
                raise
            for entry in listing:
                is_dir = bool(entry.statinfo.flags & flags.StatInfoFlags.IS_DIR)
                hidden = entry.name.startswith(".") and not part.startswith(".")
                if hidden or is_dir == last or not fnmatch.fnmatchcase(entry.name, part):
                    continue
                found.append(f"{directory.rstrip('/')}/{entry.name}")
                if last and listed is not None:
                    url = str(parsed.with_path(found[-1]))
                    listed[url] = RemoteFile(url=url, size=int(entry.statinfo.size), mtime=int(entry.statinfo.modtime))
        candidates = found
    return sorted(str(parsed.with_path(path)) for path in candidates)


def expand_patterns(
    patterns: Sequence[str], key: str, *, stat_file: Callable[[str], RemoteFile] | None = None, listed: dict[str, RemoteFile] | None = None
) -> list[str]:
    """Every file the ``data.files`` entries ``patterns`` (local paths and globs, root:// URLs and
    remote globs) name, each pattern's matches sorted, in the order of the patterns; a pattern
    that matches nothing is a TaufmError naming ``key`` and the pattern. ``stat_file`` and
    ``listed``: see :func:`expand_remote`."""
    found: list[str] = []
    for pattern in patterns:
        matches = expand_remote(pattern, stat_file=stat_file, listed=listed) if is_remote(pattern) else sorted(glob.glob(pattern))
        if not matches:
            raise TaufmError(f"{key}: {pattern!r} matches no file")
        found.extend(matches)
    return found


# ---- Reading with uproot ----


def open_root(source: str | os.PathLike[str], policy: RetryPolicy | None = None):
    """``uproot.open`` of a local path, or of a URL with retries (TaufmError naming it when it is
    missing, not allowed or unreachable). Errors that are not the connection's (not a ROOT file)
    pass through for the caller to name."""
    import uproot

    if not is_remote(source):
        return uproot.open(source)
    client()  # the client's settings before fsspec-xrootd loads it; the install hint if missing
    try:
        import fsspec_xrootd  # noqa: F401  (uproot opens root:// through it)
    except ImportError as err:
        raise TaufmError(INSTALL_HINT) from err

    def attempt():
        try:
            return uproot.open(source)
        except OSError:
            forget_open_handle(source)  # fsspec-xrootd would hand the broken handle out again
            raise

    return retrying(source, "open", attempt, policy)


def forget_open_handle(url: str) -> None:
    """Drop fsspec-xrootd's cached handle of ``url`` (after a failure its connection may be
    gone; a reopen must not get it back, and closing it at exit would print an error)."""
    with contextlib.suppress(Exception):
        import fsspec

        fs, path = fsspec.core.url_to_fs(url)
        fs.invalidate_cache(path)


def close_quietly(file, source: str | os.PathLike[str]) -> None:
    """Close an uproot file whose server may be gone (closing a lost handle fails)."""
    with contextlib.suppress(Exception):
        file.close()
    if is_remote(source):
        forget_open_handle(str(source))


def iterate_resuming(
    source: str | os.PathLike[str],
    file,
    tree,
    reopen: Callable[[], tuple[Any, Any]],
    iterate: Callable[[Any, int], Iterator[Any]],
    *,
    identity: RemoteFile | None = None,
    policy: RetryPolicy | None = None,
) -> Iterator[tuple[int, Any]]:
    """(first entry, arrays) for each chunk ``iterate(tree, entry_start)`` yields, closing the file
    at the end.

    For a remote ``source``, a transient error reopens the file (``reopen()`` -> (file, tree))
    and resumes at the first entry not yet yielded; after ``policy.attempts`` failures in a row,
    or a permanent error, a TaufmError names the URL and the entry. With ``identity``, a file
    whose size or modification time changed in between is an error (the entries would not
    belong together). For a local ``source`` errors pass through unchanged.
    """
    policy = policy or RetryPolicy.from_environment()
    entry = failures = 0
    lost: str | None = None  # why the file was closed to be reopened
    try:
        while True:
            try:
                if tree is None:
                    file, tree = reopen()
                    if identity is not None and not identity.same_file(now := stat(str(source), policy=policy)):
                        raise RemoteError(f"{source}: changed on the server while it was read ({identity.identity()} before, {now.identity()} now); run again")
                for arrays in iterate(tree, entry):
                    yield entry, arrays
                    entry += len(arrays)
                    failures, lost = 0, None
                return
            except OSError as err:
                if not is_remote(source):
                    raise
                failures += 1
                wait = _wait_after_failure(source, f"reading from entry {entry}", err, failures, policy, "reopening")
                close_quietly(file, source)
                file = tree = None
                lost = _reason(_error_text(err))
                time.sleep(wait)
            except TaufmError as err:
                if lost is not None:  # reopening after a lost connection failed (after its own retries)
                    why = str(err).removeprefix(f"{source}: ")
                    raise RemoteError(f"{source}: reading from entry {entry} failed ({lost}) and reopening it failed: {why}") from err
                raise
    finally:
        if file is not None:
            if is_remote(source):
                close_quietly(file, source)
            else:
                file.close()
