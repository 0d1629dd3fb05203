"""Every file the runner reads or writes goes through here, on a machine that may say no or lie (issue 27).

Reads are capped (MAX_READ bytes, JSON depth bounded): a file that never ends or a JSON nested 10**5 deep
is a one-line FileError (a ValueError), not a hang or a RecursionError. Writes fill a new file beside the
path and rename it over the path: a reader never sees half a file, and a link planted at the path is itself
replaced, never followed to the file it names. A write that fails (a full disk, a read-only file system)
raises OSError naming the file asked for (not the temp file, nor no file: a write() past the end of the
disk names none), and leaves the path as it was; the CLI prints it as one line (`oserror_line`).
"""
from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

# sweep.json, resolved_config.json and a lock are a few KiB; 64 MiB is far above them and far below harm.
MAX_READ = 64 << 20
MAX_LINE = 300  # what an error line quotes of a value or of another error


class FileError(ValueError):
    """A file that is not what the runner reads (too large, not UTF-8, not JSON, nested too deeply)."""


def short(text: Any, limit: int = MAX_LINE) -> str:
    """`text` on one line, cut to `limit` characters: an error message never quotes an unbounded value."""
    one = " ".join(str(text).split())
    return one if len(one) <= limit else one[:limit - 3] + "..."


def read_bytes(path: str | Path, limit: int = MAX_READ) -> bytes:
    with open(path, "rb") as f:  # never more than limit + 1 bytes: /dev/zero ends here too
        data = f.read(limit + 1)
    if len(data) > limit:
        raise FileError(f"{path}: larger than {limit:,} bytes; not a file this runner wrote")
    return data


def read_json(path: str | Path, limit: int = MAX_READ) -> Any:
    """The JSON value in `path`; FileError (one line, naming the file) when it is not one within the budget."""
    data = read_bytes(path, limit)
    try:
        return json.loads(data)
    except RecursionError:  # the C scanner recurses per level: a deep file must not end the process
        raise FileError(f"{path}: JSON nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise FileError(f"{path}: not JSON ({short(e, 120)})") from None


def write_new(path: str | Path, write: Callable[[Any], Any], *, text: bool = False) -> Path:
    """Create `path`: `write(f)` fills a new file made beside it (O_CREAT|O_EXCL|O_NOFOLLOW), renamed over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(tmp, flags, 0o666)  # 0666 & ~umask, as open() would; mkstemp's 0600 survived the rename
    except OSError as e:
        raise naming(e, path, tmp) from e
    try:
        with open(fd, "w" if text else "wb", encoding="utf-8" if text else None) as f:
            write(f)
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise naming(e, path, tmp) from e
        raise
    return path


def write_via_memory(path: str | Path, save: Callable[[Any], Any]) -> Path:
    """`save(buffer)` into memory, then the bytes to `path` by write_new (checkpoints are a few MB). Written
    straight to a full disk, torch.save raised RuntimeError ('unexpected pos') and torch.export.save killed the
    process (a C++ destructor's exception: abort); a write from Python is an OSError, which the CLI reports."""
    buffer = io.BytesIO()
    save(buffer)
    return write_new(path, lambda f: f.write(buffer.getbuffer()))


def naming(e: OSError, path: str | Path, temp: Path) -> OSError:
    """`e` naming `path` alone (an OSError of the same errno) where it named the temp file or no file; an
    error about another file is left as it is."""
    if e.filename is not None and not str(e.filename).startswith(str(temp)):
        return e
    return OSError(e.errno, e.strerror or str(e), str(path))


def write_by_name(path: str | Path, write: Callable[[Path], Any]) -> Any:
    """write_new for writers that take a file name (torch.onnx.export): `write(name)` makes the file in a new
    private folder beside `path` (mkdtemp: nothing there to follow), then renamed. Returns what `write` returns."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    except OSError as e:
        raise naming(e, path, path.parent / f".{path.name}.") from e
    try:
        result = write(tmp / path.name)
        os.replace(tmp / path.name, path)
    except OSError as e:
        raise naming(e, path, tmp) from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def write_text(path: str | Path, text: str) -> Path:
    return write_new(path, lambda f: f.write(text), text=True)


def write_json(obj: Any, path: str | Path) -> Path:
    return write_text(path, json.dumps(obj, indent=2, default=str))


def oserror_line(e: OSError) -> str:
    """'PATH: cause' for an OSError (both paths of a rename); pyarrow's errors carry the path in their text."""
    where = " -> ".join(str(p) for p in (e.filename, e.filename2) if p is not None)
    cause = e.strerror or str(e) or type(e).__name__
    return short(f"{where}: {cause}" if where else cause)


def write_figure(fig: Any, path: str | Path, dpi: int = 120) -> Path:
    """A matplotlib figure as PNG, through write_new."""
    return write_new(path, lambda f: fig.savefig(f, format="png", dpi=dpi))
