"""Reading Nuke ``.nk`` scripts without Nuke: the TCL word syntax, node blocks, groups, clones.

A script is a sequence of TCL commands. The ones that matter here are node blocks
(``Read { file ... first 1001 }``), ``end_group`` (closing the ``Group``/``LiveGroup``/``Gizmo``
opened before), ``clone``, ``set``/``push`` and ``version``. Together they run Nuke's node
stack, which is how a script writes its node graph: a node takes its ``inputs`` (1 unless the
block says otherwise; ``2+1`` counts a mask input too) off the top of the stack, input 0 first,
and is pushed itself; ``push 0`` pushes an empty input, ``set N [stack 0]`` names the top and
``push $N`` pushes it again. A group's members run on a stack of their own; ``end_group`` pushes
the group onto the stack outside. Words are bare, ``"quoted"`` (backslash escapes) or
``{braced}`` (nested braces, literal except ``\\{``, ``\\}``, ``\\[``, ``\\]``), exactly as TCL
reads them.

Every problem raises :class:`SceneParseError` with ``"<scene url>:<line>:<col>: <what>"``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from jitrender.errors import SceneParseError

# Node classes whose block is followed by their member nodes and an ``end_group``.
GROUP_CLASSES = frozenset({"Group", "LiveGroup", "Gizmo"})

# addUserKnob types whose value is a number: Int, Enumeration, Boolean, Double, Array.
_NUMERIC_KNOB_TYPES = frozenset({"3", "4", "6", "7", "8"})
# TCL's own white space; Python's \s also matches \x1c-\x1f and Unicode spaces.
_WS = " \t\n\r\f\v"
# Most knob lines are two plain words ("first 1001"): read those in one match.
_SIMPLE_LINE = re.compile(
    rf'[ \t]*+([^{_WS}{{}}"\[\]\\;#][^{_WS}{{}}"\[\]\\;]*+)[ \t]++'
    rf'([^{_WS}{{}}"\[\]\\;]++)[ \t]*+(?=[\n;]|\Z)'
)
_SPACE = re.compile(r"[ \t\r\f\v]+")
# Possessive quantifiers: an unterminated quote must fail in linear time, not backtrack.
_BARE_CHUNK = re.compile(rf"(?:[^{_WS};\[\\]++|\\.)++", re.S)
_QUOTED = re.compile(r'"((?:[^"\\]++|\\.)*+)"', re.S)
_BRACES = re.compile(r"\\.|[{}]", re.S)
_BRACKETS = re.compile(r"\\.|[\[\]]", re.S)
_LINE_END = re.compile(r"\n")
_BACKSLASH = re.compile(r"\\(.)", re.S)
_BRACED_ESCAPE = re.compile(r"\\([{}\[\]])")
_TCL_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v"}


def _unescape(match: re.Match[str]) -> str:
    char = match.group(1)
    return _TCL_ESCAPES.get(char, char)


def unescape(text: str) -> str:
    """TCL backslash substitution as in a quoted or bare word (``\\n``, ``\\[``, ``\\\\``)."""
    return _BACKSLASH.sub(_unescape, text) if "\\" in text else text


def unescape_braced(text: str) -> str:
    """A braced word's text: literal, except the brace and bracket escapes Nuke writes."""
    return _BRACED_ESCAPE.sub(r"\1", text) if "\\" in text else text


@dataclass(frozen=True)
class Word:
    """One TCL word: its text (escapes already applied), whether it was braced, and where
    it starts and ends (offsets into the scanned text)."""

    text: str
    braced: bool
    pos: int
    end: int  # offset just after the word (after the closing brace or quote)


class Scanner:
    """Splits (part of) a script's text into commands of words. Offsets are into the whole
    script, so errors name the right line and column."""

    def __init__(self, text: str, url: str) -> None:
        self.text = text
        self.url = url
        self._counted = (0, 1)  # (offset, line there): lines are counted forward, once

    def error(self, pos: int, what: str) -> SceneParseError:
        line = self.text.count("\n", 0, pos) + 1
        col = pos - (self.text.rfind("\n", 0, pos) + 1) + 1
        return SceneParseError(f"{self.url}:{line}:{col}: {what}")

    def line_of(self, pos: int) -> int:
        offset, line = self._counted
        if pos < offset:
            offset, line = 0, 1
        line += self.text.count("\n", offset, pos)
        self._counted = (pos, line)
        return line

    def brace_end(self, pos: int, end: int) -> int:
        """Offset just after the ``}`` that closes the ``{`` at ``pos``."""
        unmatched = "unmatched '{': the script ends before its closing '}'"
        return self._closing_end(_BRACES, "{", "}", pos, end, unmatched)

    def bracket_end(self, pos: int, end: int) -> int:
        """Offset just after the ``]`` that closes the ``[`` at ``pos``."""
        unmatched = "unmatched '[': the command substitution is never closed"
        return self._closing_end(_BRACKETS, "[", "]", pos, end, unmatched)

    def _closing_end(
        self, pairs: re.Pattern[str], opening: str, closing: str, pos: int, end: int, why: str
    ) -> int:
        """Offset just after the ``closing`` that balances the ``opening`` at ``pos``
        (``pairs`` also matches backslash escapes, which count for neither); a
        :class:`SceneParseError` saying ``why`` when the text ends first."""
        depth = 0
        for match in pairs.finditer(self.text, pos, end):
            char = match.group()
            if char == opening:
                depth += 1
            elif char == closing:
                depth -= 1
                if depth == 0:
                    return match.end()
        raise self.error(pos, why)

    def _word_ends(self, pos: int, end: int, after: str) -> None:
        if pos < end and self.text[pos] not in " \t\r\f\v\n;":
            raise self.error(pos, f"extra characters after {after}")

    def commands(self, start: int, end: int) -> Iterator[list[Word]]:
        """The commands between ``start`` and ``end``: lists of words, comments skipped."""
        text = self.text
        space_match = _SPACE.match
        bare_match = _BARE_CHUNK.match
        quoted_match = _QUOTED.match
        simple_match = _SIMPLE_LINE.match
        words: list[Word] = []
        pos = start
        while pos < end:
            if not words:
                simple = simple_match(text, pos, end)
                if simple is not None:
                    yield [
                        Word(simple.group(1), False, simple.start(1), simple.end(1)),
                        Word(simple.group(2), False, simple.start(2), simple.end(2)),
                    ]
                    pos = simple.end()
                    continue
            char = text[pos]
            if char in " \t\r\f\v":
                found = space_match(text, pos, end)
                pos = found.end() if found else pos + 1
            elif char == "\n" or char == ";":
                if words:
                    yield words
                    words = []
                pos += 1
            elif char == "#" and not words:
                found = _LINE_END.search(text, pos, end)
                pos = found.start() if found else end
            elif char == "{":
                close = self.brace_end(pos, end)
                inner = text[pos + 1 : close - 1]
                words.append(Word(unescape_braced(inner), True, pos, close))
                self._word_ends(close, end, "close-brace")
                pos = close
            elif char == '"':
                found = quoted_match(text, pos, end)
                if found is None:
                    raise self.error(pos, "unterminated quoted string")
                words.append(Word(unescape(found.group(1)), False, pos, found.end()))
                self._word_ends(found.end(), end, "close-quote")
                pos = found.end()
            elif char == "}":
                raise self.error(pos, "unexpected '}' with no '{' open")
            else:
                word_start = pos
                while pos < end:
                    found = bare_match(text, pos, end)
                    if found is not None:
                        pos = found.end()
                        continue
                    char = text[pos]
                    if char == "[":
                        pos = self.bracket_end(pos, end)
                    elif char == "\\":
                        pos += 1  # a lone backslash at the very end
                    else:
                        break
                if pos == word_start:
                    raise self.error(pos, f"unexpected character {text[pos]!r}")
                words.append(Word(unescape(text[word_start:pos]), False, word_start, pos))
        if words:
            yield words


@dataclass(eq=False)
class Node:
    """One node as the script writes it. ``knobs`` holds only the knobs the script sets
    (Nuke omits knobs at their defaults); values are TCL words with escapes applied, braced
    values keep their inner text (so ``{{curve ...}}`` arrives as ``{curve ...}``)."""

    cls: str
    knobs: dict[str, str]
    group: Node | None
    line: int
    braced: frozenset[str] = frozenset()
    members: dict[str, Node] = field(default_factory=dict)
    # Knobs the script adds to the node (``addUserKnob {2 lut l "LUT"}`` adds ``lut``).
    user_knobs: frozenset[str] = frozenset()
    # Link knobs among them -> the member knob they show (``{41 lut T Read1.file}``).
    links: dict[str, str] = field(default_factory=dict)
    # How many inputs the block takes off the stack, and what it took (None: not connected).
    input_count: int = 1
    inputs: list[Node | None] = field(default_factory=list)
    # User knobs holding a number (int, enumeration, boolean, double): unset, they are 0.
    numeric_knobs: frozenset[str] = frozenset()

    @property
    def name(self) -> str:
        return self.knobs.get("name") or f"{self.cls}@line{self.line}"

    @property
    def path(self) -> str:
        """The full name within groups, e.g. ``Group1.Read3``."""
        if self.group is None:
            return self.name
        return f"{self.group.path}.{self.name}"

    def is_group(self) -> bool:
        """Whether the script holds the node's members (and an ``end_group``) after its block.
        A published LiveGroup does not: Foundry's LiveGroup reference says publishing "does not
        add the contents of the LiveGroup to the current script", they are read from its
        ``file``; only an editable one is saved with its nodes."""
        if self.cls == "LiveGroup" and self.flag("published"):
            return False
        return self.cls in GROUP_CLASSES

    def flag(self, knob: str) -> bool:
        """A boolean knob as written (``true``/``1``); an expression counts as off."""
        return self.knobs.get(knob, "").strip().lower() in ("true", "1", "yes", "on")

    def disabled(self) -> bool:
        """Disabled itself, or inside a disabled group (whose members then never evaluate)."""
        node: Node | None = self
        while node is not None:
            if node.flag("disable"):
                return True
            node = node.group
        return False


@dataclass
class NukeScript:
    """A parsed script: its Root (``None`` when the script has none), every other node in
    script order, and the top-level nodes by name."""

    url: str
    root: Node | None
    nodes: list[Node]
    top: dict[str, Node]
    version: str = ""


def _node_from_block(
    scanner: Scanner,
    cls: str,
    body: Word,
    group: Node | None,
    inherited: Node | None = None,
) -> Node:
    knobs = dict(inherited.knobs) if inherited is not None else {}
    braced: set[str] = set(inherited.braced) if inherited is not None else set()
    user: set[str] = set(inherited.user_knobs) if inherited is not None else set()
    links = dict(inherited.links) if inherited is not None else {}
    numeric: set[str] = set(inherited.numeric_knobs) if inherited is not None else set()
    input_count = 1
    for words in scanner.commands(body.pos + 1, body.end - 1):
        name = words[0].text
        if name == "inputs" and len(words) == 2:
            input_count = _input_count(words[1].text)
        if len(words) == 1:
            knobs[name] = ""
        elif len(words) == 2:
            knobs[name] = words[1].text
            if words[1].braced:
                braced.add(name)
                if name == "addUserKnob":
                    # {type name [label] ...}: the second element names the knob.
                    spec = words[1].text.split(None, 2)
                    if len(spec) >= 2:
                        user.add(spec[1])
                        if spec[0] in _NUMERIC_KNOB_TYPES:
                            numeric.add(spec[1])
                        target = _link_target(words[1].text) if spec[0] == "41" else None
                        if target:
                            links[spec[1]] = target
            elif inherited is not None:
                braced.discard(name)  # a clone's own value replaces the original's
        else:
            knobs[name] = " ".join(w.text for w in words[1:])
            braced.discard(name)
    return Node(
        cls,
        knobs,
        group,
        scanner.line_of(body.pos),
        frozenset(braced),
        user_knobs=frozenset(user),
        links=links,
        input_count=input_count,
        numeric_knobs=frozenset(numeric),
    )


def _input_count(text: str) -> int:
    """``inputs 2`` or ``inputs 2+1`` (inputs and a mask input); garbage counts as none."""
    try:
        return max(0, min(sum(int(part) for part in text.split("+")), 10000))
    except ValueError:
        return 0


def _link_target(spec: str) -> str | None:
    """The ``T`` target of a Link_Knob's ``addUserKnob {41 name [l label] ... T Node.knob}``."""
    try:
        items = tcl_list(spec)
    except SceneParseError:
        return None
    index = 2
    while index < len(items) - 1:
        if items[index] == "T":
            return items[index + 1]
        index += 2 if items[index] in ("l", "t") else 1
    return None


def parse_script(text: str, url: str) -> NukeScript:
    """Parse a script's text. Raises :class:`SceneParseError` for anything malformed."""
    scanner = Scanner(text, url)
    nul = text.find("\x00")
    if nul >= 0:
        raise scanner.error(nul, "binary data (a NUL byte): not a Nuke script")
    root: Node | None = None
    nodes: list[Node] = []
    top: dict[str, Node] = {}
    # Open groups: the group, where it starts, and the stack outside it.
    groups: list[tuple[Node, int, list[Node | None]]] = []
    variables: dict[str, Node | None] = {}
    stack: list[Node | None] = []
    version = ""

    def add(node: Node, pos: int) -> None:
        nonlocal stack
        group = groups[-1][0] if groups else None
        (group.members if group is not None else top)[node.name] = node
        nodes.append(node)
        taken = [stack.pop() if stack else None for _ in range(node.input_count)]
        node.inputs = taken
        if node.is_group():
            groups.append((node, pos, stack))
            stack = []
        else:
            stack.append(node)

    for words in scanner.commands(0, len(text)):
        head = words[0].text
        if head == "version":
            version = " ".join(w.text for w in words[1:])
        elif head == "end_group":
            if not groups:
                raise scanner.error(words[0].pos, "end_group with no group open")
            group_node, _, stack = groups.pop()
            stack.append(group_node)
        elif head == "set" and len(words) == 3:
            value = words[2].text.strip()
            variables[words[1].text] = _stack_item(stack, value)
        elif head == "push" and len(words) == 2:
            ref = words[1].text
            stack.append(variables.get(ref[1:]) if ref.startswith("$") else None)
        elif head == "clone" and len(words) in (3, 4) and words[-1].braced:
            if len(words) == 4:
                node = _node_from_block(
                    scanner, words[2].text, words[3], groups[-1][0] if groups else None
                )
            else:
                ref = words[1].text
                original = variables.get(ref[1:]) if ref.startswith("$") else None
                if original is None:
                    raise scanner.error(words[1].pos, f"clone of {ref}, which names no node")
                # Clones share every knob with their original; the block adds position knobs.
                node = _node_from_block(
                    scanner,
                    original.cls,
                    words[2],
                    groups[-1][0] if groups else None,
                    original,
                )
            add(node, words[0].pos)
        elif len(words) == 2 and words[1].braced and not words[0].braced:
            if head == "Root" and not groups:
                root = _node_from_block(scanner, head, words[1], None)
                continue
            if head in ("define_window_layout_xml", "add_layer"):
                continue
            group = groups[-1][0] if groups else None
            add(_node_from_block(scanner, head, words[1], group), words[0].pos)
    if groups:
        group, pos, _ = groups[-1]
        raise scanner.error(
            pos, f"{group.cls} {group.name} is never closed: the script ends before end_group"
        )
    return NukeScript(url, root, nodes, top, version)


def _stack_item(stack: list[Node | None], value: str) -> Node | None:
    """What ``[stack N]`` names: the N-th item from the top (0 is the top)."""
    if not value.startswith("[stack"):
        return None
    try:
        depth = int(value[len("[stack") :].strip(" ]") or "0")
    except ValueError:
        return None
    return stack[-1 - depth] if 0 <= depth < len(stack) else None


def tcl_list(text: str, url: str = "<list>") -> list[str]:
    """The elements of a TCL list (``{a b} c "d e"``). Raises SceneParseError if malformed."""
    scanner = Scanner(text, url)
    return [word.text for words in scanner.commands(0, len(text)) for word in words]


def decode_script(data: bytes, url: str) -> str:
    """A script's bytes as text: UTF-8, or Latin-1 for scripts saved by older Nukes."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")
