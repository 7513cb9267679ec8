"""Downloading members' attachments: with a size cap and a time limit, whatever the sender
or the declared size says."""

from __future__ import annotations

import asyncio

import aiohttp

from generation.inputs import MAX_UPLOAD_BYTES, UploadError

DOWNLOAD_TIMEOUT_S = 20.0
CHUNK_BYTES = 64 * 1024


async def download(session: aiohttp.ClientSession, url: str, name: str, *,
                   max_bytes: int = MAX_UPLOAD_BYTES, timeout_s: float = DOWNLOAD_TIMEOUT_S) -> bytes:
    """The file's bytes; UploadError (naming the file) when it is too large, too slow or unreachable.
    Reads in chunks and stops at the cap, so a lying Content-Length cannot make it read more."""
    try:
        async with asyncio.timeout(timeout_s):
            async with session.get(url) as response:
                if response.status != 200:
                    raise UploadError(f"{name} could not be downloaded (HTTP {response.status}).")
                if response.content_length is not None and response.content_length > max_bytes:
                    raise _too_large(name, max_bytes)
                data = bytearray()
                async for chunk in response.content.iter_chunked(CHUNK_BYTES):
                    data += chunk
                    if len(data) > max_bytes:
                        raise _too_large(name, max_bytes)
                return bytes(data)
    except TimeoutError:
        raise UploadError(f"{name} took longer than {timeout_s:.0f} s to download.") from None
    except aiohttp.ClientError as err:
        raise UploadError(f"{name} could not be downloaded ({type(err).__name__}).") from None


def _too_large(name: str, max_bytes: int) -> UploadError:
    return UploadError(f"{name} is larger than {max_bytes / 1024**2:.0f} MB.")
