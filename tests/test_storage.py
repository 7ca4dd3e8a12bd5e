"""Storage against the real GCS API server and a local folder bucket."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from jitrender.storage import GCSStore, LocalStore, Store, crc32c_of_bytes
from tests.conftest import put_object


@pytest.fixture(params=["gs", "file"])
def bucket_and_store(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Store]:
    if request.param == "gs":
        return request.getfixturevalue("gcs_bucket"), GCSStore()
    root = tmp_path / "bucket"
    root.mkdir()
    return f"file://{root}", LocalStore()


def test_stat_list_download_roundtrip(bucket_and_store: tuple[str, Store]) -> None:
    bucket, store = bucket_and_store
    put_object(f"{bucket}/seq/a.0001.exr", b"one")
    put_object(f"{bucket}/seq/a.0002.exr", b"two!")
    put_object(f"{bucket}/seq/sub/deep.txt", b"deep")
    info = store.stat(f"{bucket}/seq/a.0002.exr")
    assert info is not None and info.size == 4
    assert store.stat(f"{bucket}/seq/nope.exr") is None
    names = [i.url.rsplit("/", 1)[1] for i in store.list(f"{bucket}/seq/", recursive=False)]
    assert names == ["a.0001.exr", "a.0002.exr"]
    assert len(store.list(f"{bucket}/seq/")) == 3
    sink = io.BytesIO()
    store.download(info, sink)
    assert sink.getvalue() == b"two!"
    sink = io.BytesIO()
    store.download(info, sink, 1, 3)
    assert sink.getvalue() == b"wo"


def test_gcs_reports_crc32c(gcs_bucket: str) -> None:
    put_object(f"{gcs_bucket}/x.bin", b"hello")
    info = GCSStore().stat(f"{gcs_bucket}/x.bin")
    assert info is not None and info.crc32c == crc32c_of_bytes(b"hello")


def test_put_if_absent_never_overwrites(
    bucket_and_store: tuple[str, Store], tmp_path: Path
) -> None:
    bucket, store = bucket_and_store
    first, second = tmp_path / "first", tmp_path / "second"
    first.write_bytes(b"frame one")
    second.write_bytes(b"frame one, different")
    url = f"{bucket}/out/f.0001.png"
    assert store.put_if_absent(first, url, {"jitrender-job": "abc"}).outcome == "created"
    before = store.stat(url)
    assert store.put_if_absent(first, url).outcome == "identical"
    assert store.put_if_absent(second, url).outcome == "conflict"
    after = store.stat(url)
    assert before is not None and after is not None
    assert after.generation == before.generation
    assert store.read_bytes(url) == b"frame one"
    assert store.put_if_absent(second, url, overwrite=True).outcome == "overwritten"
    assert store.read_bytes(url) == b"frame one, different"


def test_list_range_returns_exactly_the_range(bucket_and_store: tuple[str, Store]) -> None:
    """Ten frames straddling 0999/1000 share only the prefix "p.": the range still bounds it."""
    bucket, store = bucket_and_store
    for frame in range(990, 1011):
        put_object(f"{bucket}/seq/p.{frame:04d}.exr", b"x")
    put_object(f"{bucket}/seq/sub/p.1000.exr", b"nested, not listed")
    found = store.list_range(
        f"{bucket}/seq/p.", f"{bucket}/seq/p.0995.exr", f"{bucket}/seq/p.1004.exr"
    )
    assert [i.url.rsplit("/", 1)[1] for i in found] == [f"p.{f:04d}.exr" for f in range(995, 1005)]


def test_gcs_writes_ask_for_a_read_write_token_reads_for_a_read_only_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Real GCS (no emulator): each kind of request gets credentials of its own scope, asked
    for once; the emulator gets none at all (anonymous)."""
    import google.auth

    from jitrender import storage

    asked: list[tuple[str, ...]] = []

    class Token:
        def __init__(self, scopes: tuple[str, ...]) -> None:
            self.scopes = scopes

        def before_request(
            self, _request: object, _method: str, _url: str, headers: dict[str, str]
        ) -> None:
            headers["authorization"] = " ".join(self.scopes)

    def default(scopes: tuple[str, ...]) -> tuple[Token, str]:
        asked.append(scopes)
        return Token(scopes), "project"

    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setattr(google.auth, "default", default)
    reader = storage._GcsReader(4)
    headers: dict[str, str] = {}
    for write in (False, True, True, False):
        reader.authorize("POST" if write else "GET", f"{reader.base}/x", headers, write=write)
        expected = "devstorage.read_write" if write else "devstorage.read_only"
        assert headers["authorization"].endswith(expected)
    assert asked == [storage._READ_SCOPES, storage._WRITE_SCOPES]
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:1")
    anonymous, headers = storage._GcsReader(4), {}
    anonymous.authorize("POST", f"{anonymous.base}/x", headers, write=True)
    assert headers == {} and len(asked) == 2


def test_gcs_upload_above_the_multipart_limit_keeps_the_resumable_path(
    gcs_bucket: str, tmp_path: Path
) -> None:
    from jitrender.storage import MULTIPART_UPLOAD_BYTES

    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * (MULTIPART_UPLOAD_BYTES + 1))
    url = f"{gcs_bucket}/out/big.bin"
    store = GCSStore()
    created = store.put_if_absent(big, url, {"jitrender-job": "abc"})
    assert created.outcome == "created" and created.info is not None
    assert created.info.crc32c == crc32c_of_bytes(big.read_bytes())
    assert created.info.metadata == {"jitrender-job": "abc"}
    # (fake-gcs-server ignores ifGenerationMatch on resumable uploads: no repeat tried here.)
    assert store.read_bytes(url) == big.read_bytes()
    assert store.put_bytes_if_absent(b"small", url).outcome == "conflict"


def test_read_bytes_of_an_object_rewritten_after_its_stat_reads_the_new_bytes(
    gcs_bucket: str,
) -> None:
    """A lease renewed (rewritten: a new generation) between a reader's stat and its download
    is read again at the new generation, never taken for a lease released (the old
    generation's download is a 404 on the real API server). Where it is really gone, the
    reader is told so."""
    url = f"{gcs_bucket}/claims/run.a.json"
    put_object(url, b'{"refreshed": 1}')
    rewrites = [b'{"refreshed": 2}']

    class RenewedMeanwhile(GCSStore):
        def stat(self, url: str):  # type: ignore[no-untyped-def]
            info = super().stat(url)
            if rewrites:  # the holder renews its lease just after this stat
                put_object(url, rewrites.pop())
            return info

    assert RenewedMeanwhile().read_bytes(url) == b'{"refreshed": 2}'
    with pytest.raises(FileNotFoundError):
        GCSStore().read_bytes(f"{gcs_bucket}/claims/run.gone.json")
