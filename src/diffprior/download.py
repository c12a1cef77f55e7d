"""Download checkpoint files once into a local cache: resumable, verified, and explicit when offline.

The cache folder is `$DIFFPRIOR_HOME`, else `$XDG_CACHE_HOME/diffprior`, else `~/.cache/diffprior`.
A download goes to `NAME.part` first; an interrupted one is continued with an HTTP Range request
(or restarted cleanly when the server ignores Range). Size and sha256 are checked before the file is
renamed into place, so a file at its final path is always complete. A file found in the cache (put there
by hand, or by an older version) has its sha256 checked once; `NAME.verified` beside it remembers the
check for as long as the file's size and modification time stay the same. `DIFFPRIOR_OFFLINE=1` (or
`offline=True`) forbids network access; every failure says which URL to fetch by hand and where to put it.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

ENV_HOME = "DIFFPRIOR_HOME"
ENV_OFFLINE = "DIFFPRIOR_OFFLINE"
USER_AGENT = "diffprior (python urllib)"
CHUNK = 1 << 20  # bytes read per network call


class DownloadError(RuntimeError):
    """A file could not be fetched; the message says how to fetch it by hand."""


class ChecksumError(DownloadError):
    """A downloaded file had the wrong size or sha256 (it has been deleted)."""


@dataclass(frozen=True)
class RemoteFile:
    url: str
    filename: str  # name inside the model's cache folder
    size: int | None = None  # bytes; None where unknown
    sha256: str | None = None  # lowercase hex; None where unknown


def cache_dir() -> Path:
    """The root of the download cache (not created here); a file in its place is refused."""
    if os.environ.get(ENV_HOME):
        folder, where = Path(os.environ[ENV_HOME]).expanduser(), f" ({ENV_HOME})"
    else:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        folder, where = Path(base).expanduser() / "diffprior", ""
    from .io import nearest_existing
    if not (part := nearest_existing(folder)).is_dir():
        raise DownloadError(f"the download cache {folder}{where} cannot be made: {part} is a file, not a folder; "
                            f"set {ENV_HOME} to a folder")
    return folder


def offline_mode() -> bool:
    """True when `DIFFPRIOR_OFFLINE` is set to something other than '', '0', 'false' or 'no'."""
    return os.environ.get(ENV_OFFLINE, "").strip().lower() not in ("", "0", "false", "no")


def manual_instructions(url: str, dest: Path) -> str:
    return (f"Download it by hand from\n    {url}\nand place it at\n    {dest}\n"
            f"(set {ENV_HOME} to use another cache folder)")


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def fetch(url: str, dest: str | Path, *, size: int | None = None, sha256: str | None = None,
          offline: bool | None = None, progress: bool = True, attempts: int = 3, timeout: float = 60.0) -> Path:
    """Return `dest`, downloading `url` there first unless it is already present.

    A present file must have the right size, and its sha256 is checked once (see `verified`).
    offline: forbid network access (None reads DIFFPRIOR_OFFLINE).
    attempts: how many times an interrupted transfer is resumed within this call; a partial file is kept
    for the next call either way.
    """
    dest = Path(dest)
    if dest.is_file():
        if size is not None and dest.stat().st_size != size:
            raise DownloadError(f"{dest} has {dest.stat().st_size} bytes, expected {size}: it is incomplete or a "
                                f"different file. Delete it to download it again, or replace it.\n"
                                + manual_instructions(url, dest))
        if sha256 is not None and not verified(dest, sha256):
            digest = sha256_of(dest)
            if digest != sha256.lower():
                raise ChecksumError(f"{dest} has sha256 {digest}, expected {sha256}: it is corrupt or a different "
                                    "file. Delete it to download it again, or replace it.\n"
                                    + manual_instructions(url, dest))
            remember_verified(dest, sha256)
        return dest
    if offline_mode() if offline is None else offline:
        raise DownloadError(f"{dest.name} is not in the cache and downloading is disabled "
                            f"({ENV_OFFLINE} is set or offline=True).\n" + manual_instructions(url, dest))
    part = dest.with_name(dest.name + ".part")
    for attempt in range(1, attempts + 1):
        try:
            _transfer(url, part, dest, size, progress, timeout)
            break
        except (http.client.IncompleteRead, ConnectionError, TimeoutError, http.client.HTTPException) as e:
            if attempt == attempts:
                have = part.stat().st_size if part.exists() else 0
                raise DownloadError(f"the download of {url} was interrupted ({e!r}) after {have} bytes; "
                                    f"run again to resume from {part}.\n" + manual_instructions(url, dest)) from e
    _verify(part, url, dest, size, sha256)
    os.replace(part, dest)
    if sha256 is not None:
        remember_verified(dest, sha256)
    return dest


def _stamp(path: Path, sha256: str) -> str:
    st = path.stat()
    return json.dumps({"sha256": sha256.lower(), "size": st.st_size, "mtime_ns": st.st_mtime_ns})


def verified(path: Path, sha256: str) -> bool:
    """True when `path` was checked against `sha256` and has not changed since (size and mtime)."""
    mark = path.with_name(path.name + ".verified")
    try:
        return mark.read_text() == _stamp(path, sha256)
    except OSError:
        return False


def remember_verified(path: Path, sha256: str) -> None:
    """Record that `path` has the content `sha256` (its size and mtime with it), so it is not hashed again."""
    from .io import write_text
    stamp = _stamp(path, sha256)
    write_text(path.with_name(path.name + ".verified"), stamp)


def _transfer(url: str, part: Path, dest: Path, size: int | None, progress: bool, timeout: float) -> None:
    """Fill `part` with the whole remote file, continuing from what it already holds."""
    start = part.stat().st_size if part.exists() else 0
    if size is not None and start > size:
        part.unlink()  # longer than the file can be: not a prefix of it
        start = 0
    if size is not None and start == size:
        return  # complete from an earlier run; verified by the caller
    headers = {"User-Agent": USER_AGENT}
    if start:
        headers["Range"] = f"bytes={start}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and start:  # the range starts past the end: the partial file is unusable
            part.unlink()
            return _transfer(url, part, dest, size, progress, timeout)
        raise DownloadError(f"the server answered HTTP {e.code} ({e.reason}) for {url}.\n"
                            + manual_instructions(url, dest)) from e
    except urllib.error.URLError as e:
        raise DownloadError(f"cannot reach {url} ({e.reason}); are you offline?\n"
                            + manual_instructions(url, dest)) from e
    with resp:
        resumed = start > 0 and resp.status == 206 and _range_start(resp.headers.get("Content-Range")) == start
        if resp.status == 206 and not resumed:  # a range we did not ask for: retry from the start
            part.unlink(missing_ok=True)
            raise http.client.HTTPException(f"unexpected Content-Range {resp.headers.get('Content-Range')!r}")
        if not resumed:
            start = 0  # a full response (the server ignored Range): start over
        total = _total_size(resp, start)
        if size is not None and total is not None and total != size:
            part.unlink(missing_ok=True)
            raise ChecksumError(f"{url} is {total} bytes, expected {size}: the remote file has changed or the URL "
                                "is wrong; nothing was kept.\n" + manual_instructions(url, dest))
        part.parent.mkdir(parents=True, exist_ok=True)  # only now: a failed request leaves no empty folder
        with open(part, "ab" if resumed else "wb") as f, \
                tqdm(total=size or total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
                     desc=dest.name, disable=not progress, leave=False) as bar:
            received = 0
            while block := resp.read(CHUNK):
                f.write(block)
                received += len(block)
                bar.update(len(block))
        if total is not None and start + received < total:  # the connection closed early
            raise http.client.IncompleteRead(b"", total - start - received)


def _range_start(content_range: str | None) -> int | None:
    m = re.match(r"bytes (\d+)-", content_range or "")
    return int(m.group(1)) if m else None


def _total_size(resp, start: int) -> int | None:
    """The whole file's size from Content-Range ('bytes a-b/total') or Content-Length."""
    m = re.match(r"bytes \d+-\d+/(\d+)", resp.headers.get("Content-Range") or "")
    if m:
        return int(m.group(1))
    length = resp.headers.get("Content-Length")
    return start + int(length) if length and length.isdigit() else None


def _verify(part: Path, url: str, dest: Path, size: int | None, sha256: str | None) -> None:
    """Check a finished download; on a mismatch delete it and raise."""
    got = part.stat().st_size
    if size is not None and got != size:
        part.unlink()
        raise ChecksumError(f"the download of {url} has {got} bytes, expected {size}; it was deleted.\n"
                            + manual_instructions(url, dest))
    if sha256 is not None:
        digest = sha256_of(part)
        if digest != sha256.lower():
            part.unlink()
            raise ChecksumError(f"the download of {url} has sha256 {digest}, expected {sha256}; the corrupt file "
                                "was deleted. Try again; if it fails again the remote file has changed.\n"
                                + manual_instructions(url, dest))
