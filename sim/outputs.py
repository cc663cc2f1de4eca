"""Output files, checked before any work: the folder exists and is writable, the extension names a format the
command writes, the name fits the file system; names that come from inputs are made safe for file names.

Every command calls :func:`check_output` for each output option first, so a bad path costs nothing and the
result is never lost after a long simulation; :func:`write_atomic` then writes through a temporary file in the
same folder and turns any late OS error into an input error naming the option.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from sim.errors import SimInputError

#: Image formats matplotlib writes with its default backends (the agg, pdf, ps and svg ones).
IMAGE_FORMATS = ("png", "svg", "pdf", "jpg", "jpeg", "webp", "tif", "tiff", "eps", "ps")
JSON_FORMATS = ("json",)
PARQUET_FORMATS = ("parquet",)
YAML_FORMATS = ("yaml", "yml")
YAML_FORMATS = ("yaml", "yml")
CSV_FORMATS = ("csv",)
#: Longest file name (one path component) and path that POSIX file systems take; the temporary file that
#: :func:`write_atomic` writes beside the target adds ``TEMP_EXTRA`` characters to the name.
NAME_MAX = 255
PATH_MAX = 4096
TEMP_EXTRA = 12


def check_output(path: str | os.PathLike[str], option: str, formats: Iterable[str] = ()) -> Path:
    """The target of ``option`` if it can be written; else a :class:`SimInputError` naming the option."""
    text = os.fspath(path)
    formats = tuple(formats)
    if not text or "\x00" in text:
        raise SimInputError("an empty path or a path with a NUL character", field=option)
    if len(text) > PATH_MAX:
        raise SimInputError(f"path of {len(text):,} characters; at most {PATH_MAX:,}", field=option)
    target = Path(text)
    long = [p for p in target.parts if len(p.encode()) > NAME_MAX]
    if long:
        raise SimInputError(f"a name of {len(long[0].encode()):,} bytes in the path; file names have at most "
                            f"{NAME_MAX}", field=option)
    if len(target.name.encode()) + TEMP_EXTRA > NAME_MAX:
        raise SimInputError(f"file name of {len(target.name.encode())} bytes; at most {NAME_MAX - TEMP_EXTRA} "
                            "(room for the temporary file written beside it)", field=option)
    if is_dir(target):
        raise SimInputError(f"{text} is a folder; give a file name", field=option)
    suffix = target.suffix.lower().lstrip(".")
    if formats and suffix not in formats:
        kind = "image" if formats == IMAGE_FORMATS else "file"
        got = f"extension .{suffix}" if suffix else "no extension"
        raise SimInputError(f"unsupported {kind} type ({got}); use {', '.join('.' + f for f in formats)}",
                            field=option)
    folder = target.parent if str(target.parent) else Path(".")
    if not is_dir(folder):
        raise SimInputError(f"folder {folder} does not exist", field=option)
    try:
        fd, probe = tempfile.mkstemp(prefix=".sim-write-check.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise SimInputError(f"cannot write in folder {folder}: {e.strerror or e}", field=option) from None
    return target


def check_outputs(outputs: Iterable[tuple[str | None, str, Iterable[str]]]) -> None:
    """:func:`check_output` for every ``(path, option, formats)`` whose path is given; two options may not
    name the same file."""
    seen: dict[str, str] = {}
    for path, option, formats in outputs:
        if path is None:
            continue
        target = check_output(path, option, formats)
        key = os.path.abspath(target)
        if key in seen:
            raise SimInputError(f"the same file as {seen[key]}", field=option)
        seen[key] = option


def write_atomic(path: str | os.PathLike[str], write: Callable[[Path], object], option: str = "output") -> None:
    """Write via a temporary file in the same folder, renamed into place only when complete."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise SimInputError(f"folder {folder} does not exist", field=option)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name[:NAME_MAX - TEMP_EXTRA - 8]}.", suffix=target.suffix,
                                   dir=folder)
    except OSError as e:
        raise SimInputError(f"cannot write {target}: {e.strerror or e}", field=option) from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)
        write(Path(tmp))
        os.replace(tmp, target)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise SimInputError(f"cannot write {target}: {e.strerror or e}", field=option) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False


_UNSAFE = re.compile(r"\.\.+|[^A-Za-z0-9._+-]+")


def safe_filename(name: str, max_length: int = 100, default: str = "sim") -> str:
    """``name`` as a portable file name: runs of other characters than letters, digits, ``._+-`` become ``_``,
    no leading dot or dash, at most ``max_length`` characters (``deepseek-v3 / 2048 GPUs`` ->
    ``deepseek-v3_2048_GPUs``)."""
    out = _UNSAFE.sub("_", name).lstrip("_.-")[:max_length].rstrip("_")
    return out or default
