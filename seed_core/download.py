"""Resumable, verified downloads of large files over HTTP(S).

The bytes go to `<dest>.partial`; an interrupted download is continued with an HTTP Range request;
the finished file is checked against its checksum and only then renamed to `dest`, so `dest`
exists only when it is whole and verified. Progress goes to a callback: libraries never print.
"""
from __future__ import annotations

import hashlib
import http.client
import logging
import os
import urllib.error
import urllib.request
from typing import Callable, Optional

from .errors import ChecksumError, DownloadError

logger = logging.getLogger(__name__)

# progress(bytes done, total bytes or None when the server does not say)
Progress = Callable[[int, Optional[int]], None]
CHUNK = 1 << 20
HASHES = ("md5", "sha256")


def parse_checksum(checksum: str) -> tuple[str, str]:
    """'sha256:ab12...' -> ('sha256', 'ab12...'). A prefix of the hex digest is accepted, as
    publishers print one (MoCo's README: 8 hex digits of the md5)."""
    algo, _, digest = checksum.partition(":")
    if algo not in HASHES or len(digest) < 8 or any(c not in "0123456789abcdef" for c in digest.lower()):
        raise ValueError(f"checksum {checksum!r} must be md5:<hex> or sha256:<hex> (at least 8 digits)")
    return algo, digest.lower()


def file_digests(path: str) -> dict[str, str]:
    """md5 and sha256 hex digests of a file, in one pass."""
    hashes = {name: hashlib.new(name) for name in HASHES}
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            for h in hashes.values():
                h.update(block)
    return {name: h.hexdigest() for name, h in hashes.items()}


def matches(digests: dict[str, str], checksum: str) -> bool:
    algo, digest = parse_checksum(checksum)
    return digests[algo].startswith(digest)


def download(url: str, dest: str, checksum: str | None = None, progress: Progress | None = None,
             timeout: float = 60.0) -> dict[str, str]:
    """Download `url` to `dest` (resuming `<dest>.partial`), verify it against `checksum` (None:
    nothing to compare with) and return its digests. On a mismatch the partial file is deleted and
    ChecksumError raised; when the server cannot be reached DownloadError says where the file can
    be placed by hand. Callers that may run concurrently hold a lock around this call."""
    partial = dest + ".partial"
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    try:
        _fetch_into(url, partial, progress, timeout)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:  # ValueError: a bad URL
        reason = getattr(e, "reason", None) or e
        kept = os.path.getsize(partial) if os.path.exists(partial) else 0
        resume = f" {kept} bytes are kept in {partial}; run again to resume." if kept else ""
        raise DownloadError(f"could not download {url} ({reason}).{resume} Without network access, download "
                            f"it elsewhere and place it at {dest}") from None
    digests = file_digests(partial)
    if checksum and not matches(digests, checksum):
        algo, _ = parse_checksum(checksum)
        os.unlink(partial)
        raise ChecksumError(f"{url}: the downloaded file's {algo} is {digests[algo]}, expected {checksum}; "
                            f"the partial file {partial} was deleted. Run again to download it afresh; "
                            f"if it fails again, the file on the server has changed")
    os.replace(partial, dest)
    return digests


def _fetch_into(url: str, partial: str, progress: Progress | None, timeout: float) -> None:
    start = os.path.getsize(partial) if os.path.exists(partial) else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and start:  # nothing after `start`: the partial file is already whole
            logger.info("%s: the partial file is complete", partial)
            return
        raise
    with response:
        if start and response.status != 206:  # the server ignored the Range header: start over
            logger.info("%s does not resume downloads; starting again from byte 0", url)
            start = 0
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        if start:
            logger.info("resuming %s at byte %d", url, start)
        done = start
        with open(partial, "ab" if start else "wb") as f:
            if progress:
                progress(done, total)
            for block in iter(lambda: response.read(CHUNK), b""):
                f.write(block)
                done += len(block)
                if progress:
                    progress(done, total)
            f.flush()
            os.fsync(f.fileno())
    if total is not None and done != total:
        raise ConnectionError(f"the connection closed after {done} of {total} bytes")

