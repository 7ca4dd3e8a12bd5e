"""A running agent over a local folder acting as a bucket, for the agent and plugin tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

import pytest

from jitrender.agent import Agent
from jitrender.cache import Cache
from jitrender.deps import Dependency
from jitrender.inputs import Inputs
from jitrender.paths import PathMap, rule_from
from jitrender.storage import LocalStore, ObjectInfo, Store, Stores

HOOKS = Path(__file__).resolve().parents[2] / "hooks"
T = TypeVar("T")
# How a stage script that asks the run's agent for files starts (argv[1]: the hooks folder).
CLIENT_STAGE = "import os, sys\nsys.path.insert(0, sys.argv[1])\nimport jitrender_client\n"


def at_once(count: int, call: Callable[[int], T]) -> list[T]:
    """``call(0)`` .. ``call(count - 1)``, each in its own thread, released together; their
    results in index order. The first exception a thread raised is raised here."""
    results: dict[int, T] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(count)

    def worker(index: int) -> None:
        barrier.wait()
        try:
            results[index] = call(index)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return [results[i] for i in range(count)]


class CountingStore(LocalStore):
    """A local bucket that counts downloads per URL and can be made slow."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.downloads: dict[str, int] = {}
        self._lock = threading.Lock()

    def download(
        self, info: ObjectInfo, sink: IO[bytes], start: int = 0, end: int | None = None
    ) -> None:
        with self._lock:
            self.downloads[info.url] = self.downloads.get(info.url, 0) + 1
        time.sleep(self.delay)
        super().download(info, sink, start, end)


class OneStore(Stores):
    def __init__(self, store: Store) -> None:
        super().__init__()
        self.store = store

    def for_url(self, url: str) -> Store:
        return self.store


@dataclass
class RunningAgent:
    agent: Agent
    store: CountingStore
    bucket: Path  # the folder behind file://<bucket>, mapped from /mnt/show
    inputs: Path

    @property
    def fetched(self) -> list[str]:
        """URLs the agent's inputs linked into the workspace (cache hits included)."""
        inputs = self.agent.inputs
        return [i.url for i in [*inputs.fetched, *inputs.hits]]

    @property
    def socket(self) -> str:
        assert self.agent.socket_path is not None
        return str(self.agent.socket_path)


def make_bucket(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def start_test_agent(
    tmp_path: Path,
    files: dict[str, bytes],
    deps: list[Dependency] | None = None,
    delay: float = 0.0,
) -> RunningAgent:
    bucket = make_bucket(tmp_path / "bucket", files)
    store = CountingStore(delay)
    inputs = tmp_path / "ws" / "inputs"
    inputs.mkdir(parents=True)
    agent = Agent(
        Inputs(Cache(tmp_path / "cache"), inputs, stores=OneStore(store), workers=4),
        PathMap([rule_from("/mnt/show", f"file://{bucket}")]),
        deps=deps or [],
        log_path=tmp_path / "ws" / "logs" / "agent.log",
    ).start()
    return RunningAgent(agent, store, bucket, inputs)


@pytest.fixture
def show_agent(tmp_path: Path) -> Iterator[RunningAgent]:
    """An agent mapping /mnt/show to a local bucket holding a texture and a 5-file sequence."""
    files = {"tex/wood.png": b"wood-bytes", "tex/metal.png": b"metal"}
    files.update({f"seq/plate.{n:04d}.exr": f"plate {n}".encode() for n in range(1, 6)})
    running = start_test_agent(tmp_path, files, delay=0.05)
    yield running
    running.agent.stop()
    running.agent.inputs.close()
