"""The transport's decisions as pure functions: which path fetches an object, the one check
that bytes are whole, and the proxy/CA settings every HTTP client is built from."""

from __future__ import annotations

from pathlib import Path

import google_crc32c
import pytest

from jitrender.storage import ChecksumMismatch, GCSStore, LocalStore, ObjectInfo
from jitrender.transfer import LARGE_OBJECT_BYTES
from jitrender.transport import crc32c_b64, http_settings, route, verify


def _info(data: bytes, crc: str | None = "") -> ObjectInfo:
    digest = crc32c_b64(google_crc32c.value(data)) if crc == "" else crc
    return ObjectInfo("gs://b/o", len(data), "1", digest)


def test_verify_accepts_the_objects_bytes_as_int_or_base64() -> None:
    info = _info(b"texture")
    verify(info, 7, google_crc32c.value(b"texture"))
    verify(info, 7, info.crc32c or "")


def test_verify_refuses_a_short_body_and_a_wrong_checksum() -> None:
    info = _info(b"texture")
    with pytest.raises(ChecksumMismatch, match="got 6 bytes"):
        verify(info, 6, google_crc32c.value(b"textur"))
    with pytest.raises(ChecksumMismatch, match="crc32c"):
        verify(info, 7, google_crc32c.value(b"TEXTURE"))


def test_small_gcs_objects_with_a_checksum_go_to_the_asyncio_path() -> None:
    assert route(_info(b"x" * 100), GCSStore()) == "asyncio"
    assert route(_info(b"x" * 100, crc=None), GCSStore()) == "whole"  # nothing to check against
    big = ObjectInfo("gs://b/o", LARGE_OBJECT_BYTES, "1", "AAAAAA==")
    assert route(big, GCSStore()) == "ranged"
    assert route(_info(b"x" * 100), LocalStore()) == "whole"  # no HTTP GET to name


def test_proxy_settings_are_read_as_requests_reads_them(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    env = {
        "HTTPS_PROXY": "http://upper:3128",
        "https_proxy": "http://lower:3128",
        "NO_PROXY": "metadata.google.internal",
        "REQUESTS_CA_BUNDLE": str(bundle),
    }
    settings = http_settings(env)
    assert settings.has_proxies
    assert settings.proxy_for("https://storage.googleapis.com") == "http://lower:3128"
    assert settings.proxy_for("http://127.0.0.1:4443") is None
    options = settings.client_options("https://storage.googleapis.com", {"A": "b"}, 8)
    assert options["proxy_url"] == "http://lower:3128"
    assert options["proxy_excludes"] == "metadata.google.internal"
    assert options["root_certificate"].startswith("-----BEGIN")
    assert options["default_headers"] == {"A": "b"}
    assert not http_settings({"NO_PROXY": "x"}).has_proxies
    assert http_settings({"CURL_CA_BUNDLE": "/etc/ca.pem"}).ca_bundle == "/etc/ca.pem"
