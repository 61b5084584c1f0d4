"""Writing outputs safely: atomic replacement and byte-reproducible ROOT files."""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from taufm.errors import TaufmError

# ROOT stores creation/modification times (TDatime) and a UUID in every file and directory. A
# fixed time and a UUID derived from the file's content key make two runs with one seed write
# identical bytes. SOURCE_DATE_EPOCH is the reproducible-builds convention for such a time.
_DEFAULT_EPOCH = 1735689600  # 2025-01-01T00:00:00Z


def ensure_writable_dir(directory: Path) -> None:
    """Create ``directory`` if needed and fail clearly when it cannot be written to."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise TaufmError(f"cannot create output directory {directory}: {err.strerror}") from err
    if not os.access(directory, os.W_OK | os.X_OK):
        raise TaufmError(f"output directory {directory} is not writable")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    On any exception the temporary file is removed, so no half-written output is ever left
    under the final name (Snakemake and the user see either the whole file or nothing).
    """
    final = Path(path)
    ensure_writable_dir(final.parent)
    # The temporary file keeps the final file's name inside a hidden scratch directory: formats
    # that record their own file name (ROOT does) then come out identical run after run.
    scratch = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent))
    tmp = scratch / final.name
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _reproducible_datetime() -> datetime.datetime:
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", _DEFAULT_EPOCH))
    # uproot converts naive local datetimes to ROOT's TDatime; keep it naive and fixed.
    return datetime.datetime.fromtimestamp(epoch, tz=datetime.timezone.utc).replace(tzinfo=None)


@contextlib.contextmanager
def reproducible_root_timestamps() -> Iterator[None]:
    """Make uproot stamp every key, directory and tree it writes with one fixed time.

    uproot has an option for the UUID (``uuid_function``) but none for the time: it calls
    ``datetime.datetime.now()`` in its writing modules. Within this block those modules see a
    ``datetime`` whose ``now()`` is fixed; the patch is undone on exit.
    """
    import uproot.writing._cascade as cascade
    import uproot.writing._cascadetree as cascadetree

    fixed = _reproducible_datetime()

    class _FixedDatetime(datetime.datetime):
        @classmethod
        def now(cls, tz=None):  # noqa: ARG003 - signature of datetime.now
            return fixed

    _module = datetime

    class _DatetimeModule:
        datetime = _FixedDatetime
        timezone = _module.timezone
        timedelta = _module.timedelta

    patched = [(cascade, cascade.datetime), (cascadetree, cascadetree.datetime)]
    try:
        for module, _ in patched:
            module.datetime = _DatetimeModule
        yield
    finally:
        for module, original in patched:
            module.datetime = original


def deterministic_uuid_function(key: str):
    """Return a ``uuid_function`` for ``uproot.recreate`` yielding UUIDs derived from ``key``."""
    counter = iter(range(1 << 30))
    return lambda: uuid.uuid5(uuid.NAMESPACE_OID, f"{key}/{next(counter)}")
