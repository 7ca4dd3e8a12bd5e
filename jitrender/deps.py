"""The data that crosses the resolver boundary: what a scene's frames need."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True, slots=True)
class Dependency:
    """One file a scene needs.

    ``path`` is as written in the scene, ``url`` is after path mapping. ``frames`` lists the
    frames that need it, or is ``None`` when every frame does. ``size`` and ``exists`` are
    filled in by a stat against storage (``None`` until then).
    """

    path: str
    url: str
    frames: tuple[int, ...] | None = None
    source: str = ""
    size: int | None = None
    exists: bool | None = None

    def needed_by(self, frame: int) -> bool:
        return self.frames is None or frame in self.frames

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "url": self.url,
            "frames": list(self.frames) if self.frames is not None else None,
            "size": self.size,
            "exists": self.exists,
            "source": self.source,
        }


@dataclass(frozen=True, slots=True)
class Unresolved:
    """Something in a scene that cannot be evaluated without the DCC; reported, never guessed."""

    source: str
    value: str
    why: str

    def to_json(self) -> dict[str, str]:
        return {"source": self.source, "value": self.value, "why": self.why}


@dataclass
class Dependencies:
    """A resolver's answer: the dependencies and what it could not evaluate."""

    deps: list[Dependency] = field(default_factory=list)
    unresolved: list[Unresolved] = field(default_factory=list)

    def extend(self, other: Dependencies) -> None:
        self.deps.extend(other.deps)
        self.unresolved.extend(other.unresolved)

    def merged(self) -> Dependencies:
        """One entry per URL; frame lists are unioned (``None`` = every frame wins)."""
        by_url: dict[str, Dependency] = {}
        for dep in self.deps:
            seen = by_url.get(dep.url)
            if seen is None:
                by_url[dep.url] = dep
                continue
            if seen.frames is None or dep.frames is None:
                frames: tuple[int, ...] | None = None
            else:
                frames = tuple(sorted(set(seen.frames) | set(dep.frames)))
            by_url[dep.url] = replace(seen, frames=frames)
        unresolved = list(dict.fromkeys(self.unresolved))
        return Dependencies(sorted(by_url.values(), key=lambda d: d.url), unresolved)

    @property
    def missing(self) -> list[Dependency]:
        return [d for d in self.deps if d.exists is False]

    def to_json(self, scene: str, frames: list[int]) -> dict[str, Any]:
        return {
            "scene": scene,
            "frames": frames,
            "deps": [d.to_json() for d in self.deps],
            "missing": [d.to_json() for d in self.missing],
            "unresolved": [u.to_json() for u in self.unresolved],
        }
