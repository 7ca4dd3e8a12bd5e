"""Watching the GCE metadata server's preemption notice, so a Spot VM's run stops like on
SIGTERM as soon as Google decides to take the machine back.

The watcher only starts where a metadata server can exist: ``GCE_METADATA_HOST`` is set (the
variable google-auth honours, also how tests point it at a local server), or this machine
looks like a GCE VM or GKE node (the DMI product name says Google, or ``/etc/hosts`` names
``metadata.google.internal``). Deciding that reads two small local files and nothing else;
name resolution and every request happen on a daemon thread with timeouts, so a run never
waits for it. ``JITRENDER_PREEMPTION_WATCH=off`` turns it off.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

METADATA_HOST = "metadata.google.internal"
PREEMPTED_PATH = "/computeMetadata/v1/instance/preempted"
# The server holds a wait_for_change request up to timeout_sec; the socket waits a bit longer.
WAIT_S = 30
_SOCKET_SLACK_S = 10
_MAX_ERRORS = 5


_WATCH_OFF = ("off", "0", "false", "no")
_WATCH_ON = ("", "auto", "on", "1", "true", "yes")


def watch_setting(environ: Mapping[str, str]) -> str:
    """``JITRENDER_PREEMPTION_WATCH``, lower case; ConfigError (78) for a value that is neither
    off (``off``, ``0``, ``false``, ``no``) nor on (unset, ``auto``, ``on``, ``1``, ``true``,
    ``yes``): a typo must not leave the watch on without a word."""
    raw = environ.get("JITRENDER_PREEMPTION_WATCH", "")
    value = raw.strip().lower()
    if value not in _WATCH_OFF + _WATCH_ON:
        from jitrender.errors import ConfigError

        raise ConfigError(
            f"JITRENDER_PREEMPTION_WATCH: {raw!r} is not off/0/false/no or on/1/true/yes/auto"
        )
    return value


def _looks_like_gce(hosts_file: Path, product_file: Path) -> bool:
    with contextlib.suppress(OSError, UnicodeDecodeError):
        if "google" in product_file.read_text(encoding="utf-8")[:200].lower():
            return True
    with contextlib.suppress(OSError, UnicodeDecodeError):
        return METADATA_HOST in hosts_file.read_text(encoding="utf-8")[:65536]
    return False


class PreemptionWatcher:
    """Sets ``stop`` (and calls ``on_notice`` with a reason) when the metadata server says the
    instance is being preempted. :meth:`start` returns at once; :meth:`close` ends watching."""

    def __init__(
        self,
        stop: threading.Event,
        on_notice: Callable[[str], None] | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        hosts_file: Path = Path("/etc/hosts"),
        product_file: Path = Path("/sys/class/dmi/id/product_name"),
    ) -> None:
        self.stop = stop
        self.on_notice = on_notice
        self.environ = os.environ if environ is None else environ
        self.hosts_file = hosts_file
        self.product_file = product_file
        self.noticed = False
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def host(self) -> str | None:
        """Where to ask, or None when this is no place to watch (no network involved)."""
        if watch_setting(self.environ) in _WATCH_OFF:
            return None
        explicit = self.environ.get("GCE_METADATA_HOST", "").strip()
        if explicit:
            return explicit
        if _looks_like_gce(self.hosts_file, self.product_file):
            return METADATA_HOST
        return None

    def start(self) -> bool:
        """Start watching in the background if this may be GCE; True when it started."""
        host = self.host()
        if host is None:
            return False
        self._thread = threading.Thread(
            target=self._watch, args=(host,), name="preemption-watch", daemon=True
        )
        self._thread.start()
        return True

    def close(self) -> None:
        self._closed.set()  # the daemon thread notices after its current request returns

    def _get(self, url: str, timeout: float) -> tuple[str, str | None]:
        import urllib.request  # here, on the watcher's thread: 30 ms of every run's start

        request = urllib.request.Request(url, headers={"Metadata-Flavor": "Google"})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
        with opener.open(request, timeout=timeout) as response:
            body = response.read(64).decode("ascii", "replace").strip()
            return body, response.headers.get("ETag")

    def _notice(self) -> None:
        if self._closed.is_set():
            return
        self.noticed = True
        if self.on_notice is not None:
            self.on_notice("GCE preemption notice: the instance is being preempted")
        self.stop.set()

    def _watch(self, host: str) -> None:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
        try:
            socket.getaddrinfo(name, None)
        except OSError:
            return  # the name does not resolve: no metadata server here
        url = f"http://{host}{PREEMPTED_PATH}"
        try:
            value, etag = self._get(url, timeout=2)
        except (OSError, ValueError):  # URLError is an OSError
            return  # not reachable: nothing to watch
        if value == "TRUE":
            self._notice()
            return
        errors = 0
        while not self._closed.is_set() and not self.stop.is_set():
            query = f"?wait_for_change=true&timeout_sec={WAIT_S}"
            if etag:
                query += f"&last_etag={etag}"
            try:
                value, etag = self._get(url + query, timeout=WAIT_S + _SOCKET_SLACK_S)
                errors = 0
            except (OSError, ValueError):  # URLError is an OSError
                errors += 1
                if errors >= _MAX_ERRORS or self._closed.wait(min(2.0**errors, 10.0)):
                    return
                continue
            if value == "TRUE":
                self._notice()
                return
