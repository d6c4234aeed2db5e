"""bg2vec.data.dumps.download against a real local HTTP server (Range, HEAD, injected faults)."""

from __future__ import annotations

import hashlib
import threading

import pytest

from bg2vec.data.dumps.download import fetch
from bg2vec.errors import DownloadError
from dump_server import DATA, DUMP, MD5SUMS, NAME, SHA1SUMS
from dump_server import sums_file as _sums

pytestmark = pytest.mark.usefixtures("fast_retries")


def _listing(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if not p.name.endswith(".lock"))


# --- plain downloads ---------------------------------------------------------------------------------


def test_download_is_byte_identical_and_sha1_verified(dump_server, tmp_path):
    # A wrong md5 proves sha1 is preferred: were md5 used, this download would fail.
    dump_server.files[MD5SUMS] = f"{'0' * 32}  {NAME}\n".encode()
    calls = []
    path = fetch(dump_server.url(DUMP), tmp_path / "dumps", progress=lambda done, total: calls.append((done, total)))

    assert path == tmp_path / "dumps" / NAME
    assert path.read_bytes() == DATA
    assert _listing(tmp_path / "dumps") == [NAME]
    assert len(dump_server.seen(SHA1SUMS)) == 1
    assert dump_server.seen(MD5SUMS) == []
    [request] = dump_server.seen(DUMP)
    assert request.range is None
    assert "bg2vec" in request.user_agent
    assert calls[-1] == (len(DATA), len(DATA))
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


def test_progress_is_rate_limited(dump_server, tmp_path):
    calls = []
    fetch(dump_server.url(DUMP), tmp_path, chunk_size=100, progress=lambda *a: calls.append(a))
    # 2,000 chunks in well under a second: a handful of calls, ending with the total.
    assert 1 <= len(calls) <= 5
    assert calls[-1] == (len(DATA), len(DATA))


# --- resuming and retrying -----------------------------------------------------------------------


def test_resume_sends_range_from_the_part_size(dump_server, tmp_path):
    half = len(DATA) // 2
    (tmp_path / f"{NAME}.part").write_bytes(DATA[:half])

    path = fetch(dump_server.url(DUMP), tmp_path)

    assert [s.range for s in dump_server.seen(DUMP)] == [f"bytes={half}-"]
    assert path.read_bytes() == DATA
    assert _listing(tmp_path) == [NAME]


def test_dropped_connections_resume_where_they_stopped(dump_server, tmp_path):
    dump_server.drop_after(DUMP, 30_000, times=2)

    path = fetch(dump_server.url(DUMP), tmp_path, chunk_size=4096)

    assert [s.range for s in dump_server.seen(DUMP)] == [None, "bytes=30000-", "bytes=60000-"]
    assert path.read_bytes() == DATA


def test_progress_resets_the_retry_budget(dump_server, tmp_path):
    dump_server.drop_after(DUMP, 20_000, times=5)

    path = fetch(dump_server.url(DUMP), tmp_path, retries=1)

    assert len(dump_server.seen(DUMP)) == 6
    assert path.read_bytes() == DATA


def test_failed_download_never_has_the_final_name(server, tmp_path):
    server.files[DUMP] = DATA
    server.drop_after(DUMP, 30_000, times=1)

    # verify=False: only the length check stands between a short body and the final name.
    with pytest.raises(DownloadError, match="30000 bytes") as error:
        fetch(server.url(DUMP), tmp_path, verify=False, retries=0, chunk_size=4096)

    assert server.url(DUMP) in str(error.value) and "resumes" in str(error.value)
    assert _listing(tmp_path) == [f"{NAME}.part"]
    assert (tmp_path / f"{NAME}.part").read_bytes() == DATA[:30_000]

    assert fetch(server.url(DUMP), tmp_path, verify=False).read_bytes() == DATA
    assert [s.range for s in server.seen(DUMP)] == [None, "bytes=30000-"]


def test_server_error_is_retried(dump_server, tmp_path):
    dump_server.fail(DUMP, 500, times=1)

    assert fetch(dump_server.url(DUMP), tmp_path).read_bytes() == DATA
    assert len(dump_server.seen(DUMP)) == 2


def test_timeout_is_retried(dump_server, tmp_path):
    dump_server.stall(DUMP, 1.0, times=1)

    assert fetch(dump_server.url(DUMP), tmp_path, timeout=0.2).read_bytes() == DATA
    assert len(dump_server.seen(DUMP)) == 2


def test_retries_are_bounded(dump_server, tmp_path):
    dump_server.fail(DUMP, 503, times=100)

    with pytest.raises(DownloadError, match="503") as error:
        fetch(dump_server.url(DUMP), tmp_path, retries=2)

    assert dump_server.url(DUMP) in str(error.value)
    assert len(dump_server.seen(DUMP)) == 3
    assert not (tmp_path / NAME).exists()


def test_server_ignoring_range_restarts_from_zero(dump_server, tmp_path):
    dump_server.ignore_range = True
    (tmp_path / f"{NAME}.part").write_bytes(b"x" * 1000)  # garbage: would corrupt the file if appended to

    path = fetch(dump_server.url(DUMP), tmp_path)

    assert [s.range for s in dump_server.seen(DUMP)] == ["bytes=1000-"]
    assert path.read_bytes() == DATA


def test_complete_part_answered_416_is_verified_and_kept(dump_server, tmp_path):
    (tmp_path / f"{NAME}.part").write_bytes(DATA)

    path = fetch(dump_server.url(DUMP), tmp_path)

    assert [s.range for s in dump_server.seen(DUMP)] == [f"bytes={len(DATA)}-"]
    assert path.read_bytes() == DATA
    assert _listing(tmp_path) == [NAME]


def test_part_longer_than_the_file_is_restarted(dump_server, tmp_path):
    (tmp_path / f"{NAME}.part").write_bytes(DATA + b"trailing junk")

    path = fetch(dump_server.url(DUMP), tmp_path)

    assert [s.range for s in dump_server.seen(DUMP)] == [f"bytes={len(DATA) + 13}-", None]
    assert path.read_bytes() == DATA


# --- failures ------------------------------------------------------------------------------------


def test_checksum_mismatch_leaves_nothing_behind(server, tmp_path):
    server.files[DUMP] = DATA
    server.files[SHA1SUMS] = _sums(hashlib.sha1, {NAME: b"a different file"})

    with pytest.raises(DownloadError) as error:
        fetch(server.url(DUMP), tmp_path)

    message = str(error.value)
    assert server.url(DUMP) in message and "sha1" in message
    assert hashlib.sha1(b"a different file").hexdigest() in message
    assert hashlib.sha1(DATA).hexdigest() in message
    assert "re-run" in message
    assert _listing(tmp_path) == []


def test_404_fails_at_once(server, tmp_path):
    with pytest.raises(DownloadError, match="404") as error:
        fetch(server.url(DUMP), tmp_path, verify=False)

    assert server.url(DUMP) in str(error.value)
    assert len(server.seen(DUMP)) == 1
    assert _listing(tmp_path) == []


def test_unverifiable_download_is_refused_unless_verify_is_off(server, tmp_path):
    server.files[DUMP] = DATA

    with pytest.raises(DownloadError, match="verify_download") as error:
        fetch(server.url(DUMP), tmp_path)
    assert server.url(DUMP) in str(error.value)
    assert server.seen(DUMP) == []  # refused before downloading anything

    assert fetch(server.url(DUMP), tmp_path, verify=False).read_bytes() == DATA
    assert len(server.seen(DUMP)) == 1


def test_existing_final_file_is_verified_not_downloaded(dump_server, tmp_path):
    (tmp_path / NAME).write_bytes(DATA)

    assert fetch(dump_server.url(DUMP), tmp_path) == tmp_path / NAME
    assert dump_server.seen(DUMP) == []
    assert len(dump_server.seen(SHA1SUMS)) == 1

    dump_server.log.clear()
    assert fetch(dump_server.url(DUMP), tmp_path, verify=False) == tmp_path / NAME
    assert dump_server.log == []


def test_corrupt_existing_final_file_is_reported_not_replaced(dump_server, tmp_path):
    (tmp_path / NAME).write_bytes(b"corrupt")

    with pytest.raises(DownloadError, match="delete") as error:
        fetch(dump_server.url(DUMP), tmp_path)

    assert str(tmp_path / NAME) in str(error.value)
    assert (tmp_path / NAME).read_bytes() == b"corrupt"
    assert dump_server.seen(DUMP) == []


@pytest.mark.parametrize("url", [
    "ftp://dumps.wikimedia.org/bgwiki/latest/bgwiki-latest-pages-articles.xml.bz2",
    "file:///etc/passwd",
    "dumps.wikimedia.org/bgwiki/latest/bgwiki-latest-pages-articles.xml.bz2",
    "https://dumps.wikimedia.org/bgwiki/latest/",
])
def test_unusable_urls_are_rejected(url, tmp_path):
    with pytest.raises(DownloadError):
        fetch(url, tmp_path, verify=False)
    assert list(tmp_path.iterdir()) == []


def test_concurrent_fetches_of_one_file_download_it_once(dump_server, tmp_path):
    dump_server.stall(DUMP, 0.3, times=1)  # keep the first download running while the second arrives
    results, errors = [], []

    def run():
        try:
            results.append(fetch(dump_server.url(DUMP), tmp_path))
        except Exception as e:  # reported below, not swallowed
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    assert results == [tmp_path / NAME] * 2
    assert len(dump_server.seen(DUMP)) == 1
    assert (tmp_path / NAME).read_bytes() == DATA
