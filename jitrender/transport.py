"""How bytes move, decided in one place: which path fetches an object, what the HTTP clients
are told about proxies and CA bundles, and the one check that a download is whole.

Three paths move an object's bytes into a temp file of the cache:

- ``asyncio``: objects below :data:`LARGE_OBJECT_BYTES` whose store names a plain HTTP GET
  (:meth:`Store.http_object`) and promises a crc32c, many at once on one event loop
  (:mod:`jitrender.aio`; the HTTP client is obstore's, which runs in Rust threads);
- ``ranged``: large objects, as concurrent ranges (:class:`RangedDownloader`);
- ``whole``: anything else, one :meth:`Store.download` in the calling thread.

Whatever the path, :func:`verify` decides whether the bytes are the object's (size, then
crc32c), and only then does the cache rename them into place.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from jitrender.storage import ChecksumMismatch, ObjectInfo, Store
from jitrender.transfer import LARGE_OBJECT_BYTES, crc32c_b64

Route = Literal["asyncio", "ranged", "whole"]


def route(info: ObjectInfo, store: Store) -> Route:
    """The path that fetches ``info`` (see the module's docstring)."""
    if info.size >= LARGE_OBJECT_BYTES:
        return "ranged"
    has_get = type(store).http_object is not Store.http_object
    return "asyncio" if has_get and info.crc32c is not None else "whole"


READ_TIMEOUT_ENV, READ_TIMEOUT_S = "JITRENDER_READ_TIMEOUT_S", 60.0


def read_timeout_s(environ: Mapping[str, str] | None = None) -> float:
    """Seconds a storage read may wait for its next bytes (``$JITRENDER_READ_TIMEOUT_S``, 60
    as google-cloud-storage's own default) before the request is given up and retried: a
    connection that stalls mid-download costs that long, not the 300 s it used to. The
    asyncio path's small objects (at most 1 MiB) get it as their whole request's limit.
    ConfigError (78) unless it is a positive number."""
    from jitrender.stopping import seconds_from_env

    return seconds_from_env(READ_TIMEOUT_ENV, READ_TIMEOUT_S, positive=True, environ=environ)


def verify(info: ObjectInfo, size: int, crc32c: int | str) -> None:
    """Raise :class:`ChecksumMismatch` unless ``size`` bytes with checksum ``crc32c`` (an int,
    or base64 as GCS writes it) are ``info``'s object. Every download path calls this once,
    before the cache installs the file."""
    if size != info.size:
        raise ChecksumMismatch(f"{info.url}: got {size} bytes, storage said {info.size}")
    digest = crc32c if isinstance(crc32c, str) else crc32c_b64(crc32c)
    if info.crc32c is not None and digest != info.crc32c:
        raise ChecksumMismatch(f"{info.url}: crc32c mismatch")


@dataclass(frozen=True)
class HttpSettings:
    """Proxy and CA-bundle settings from the environment, as requests reads them; every HTTP
    client of the package (requests for uploads, urllib3 for metadata, obstore for small
    objects) is configured from this, so they cannot drift apart."""

    proxies: Mapping[str, str]  # scheme ("http", "https", "all", "no") -> value
    ca_bundle: str | None

    @property
    def has_proxies(self) -> bool:
        return any(k != "no" for k in self.proxies)

    def proxy_for(self, url: str) -> str | None:
        scheme = url.partition("://")[0].lower()
        return self.proxies.get(scheme) or self.proxies.get("all")

    def client_options(self, base: str, headers: Mapping[str, str], connections: int) -> Any:
        """obstore ``client_options`` for requests to ``base`` sending ``headers``."""
        options: dict[str, Any] = {
            "allow_http": True,  # the emulator (and a studio's own gateway) may be plain HTTP
            "default_headers": dict(headers),
            "pool_max_idle_per_host": str(connections),
            "connect_timeout": "30s",
            "timeout": f"{read_timeout_s() * 1000:.0f}ms",  # (a small object's whole request)
        }
        proxy = self.proxy_for(base)
        if proxy:
            options["proxy_url"] = proxy
            if self.proxies.get("no"):
                options["proxy_excludes"] = self.proxies["no"]
        if self.ca_bundle:
            options["root_certificate"] = Path(self.ca_bundle).read_text()
        return options


def http_settings(environ: Mapping[str, str] | None = None) -> HttpSettings:
    """The settings of ``environ`` (default: this process's): ``*_proxy`` variables (either
    case; lower case wins, as in requests) and ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE``."""
    env = os.environ if environ is None else environ
    proxies: dict[str, str] = {}
    for key, value in env.items():
        lower = key.lower()
        if lower.endswith("_proxy") and value and (key == lower or lower[:-6] not in proxies):
            proxies[lower[:-6]] = value
    bundle = env.get("REQUESTS_CA_BUNDLE") or env.get("CURL_CA_BUNDLE") or None
    return HttpSettings(proxies, bundle)
