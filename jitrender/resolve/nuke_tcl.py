"""Evaluating the TCL and expressions people actually write in Nuke knobs, without Nuke.

Understood: ``[value X]``/``[knob X]`` (``root.name``, ``root.project_directory``,
``Node.knob``, ``parent.knob``, ``this.knob``), ``[file dirname|tail|rootname|extension|join
...]``, ``[getenv X]``, ``$env(X)``, ``[python nuke.script_directory()]`` (also braced, and
``nuke.root().name()``, ``nuke.toNode("N").knob("k").value()``, ``os.environ[...]``/
``os.getenv(...)``), ``[split]``/``[join]``/``[lindex]``/``[lrange]``/``[llength]`` and
``[file split]`` as the TCL manual defines them, ``[expr ...]`` of plain
arithmetic, and numeric expressions (``frame+499``, ``{parent.first}``). Everything else
raises :class:`NotEvaluable` with the reason, so the resolver can report it instead of
guessing. Other ``$name`` words are left as written (``$F4`` is a frame token, not TCL).
"""

from __future__ import annotations

import ast
import math
import posixpath
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from jitrender.errors import SceneParseError
from jitrender.resolve.nuke_script import Scanner, tcl_list, unescape_braced

# Expression loops (a knob whose value asks for itself) stop here.
MAX_DEPTH = 32
# Longer expressions are not what people type into a knob; refusing them bounds the work.
MAX_EXPRESSION = 400

_ENV_REF = re.compile(r"env\(([^()]*)\)")
_FRAME_NAMES = frozenset({"frame", "t", "x"})


class NotEvaluable(Exception):
    """A knob value that cannot be evaluated without Nuke; ``why`` says what stopped it."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


# A knob reference (``Read1.first``) -> its value as a string, evaluated.
KnobLookup = Callable[[str], str]


@dataclass(frozen=True)
class TclContext:
    """What evaluation may see: the script's path as Nuke would name it (``root.name``),
    a knob lookup for ``[value ...]`` (already bound to the node being evaluated), and the
    environment."""

    root_name: str
    lookup: KnobLookup
    environ: Mapping[str, str]


def substitute(text: str, ctx: TclContext, depth: int = 0) -> str:
    """``text`` with its command, ``$env()`` and backslash substitutions done."""
    if depth > MAX_DEPTH:
        raise NotEvaluable("expressions refer to each other in a loop")
    if "[" not in text and "$" not in text and "\\" not in text:
        return text
    out: list[str] = []
    pos = 0
    length = len(text)
    while pos < length:
        char = text[pos]
        if char == "\\" and pos + 1 < length and text[pos + 1] in "[]$\\":
            out.append(text[pos + 1])
            pos += 2
        elif char == "[":
            close = _bracket_end(text, pos)
            out.append(_command(text[pos + 1 : close - 1], ctx, depth + 1))
            pos = close
        elif char == "$":
            env = _ENV_REF.match(text, pos + 1)
            if env is not None:
                out.append(_getenv(env.group(1), ctx))
                pos = env.end()
            else:
                out.append(char)
                pos += 1
        else:
            out.append(char)
            pos += 1
    return "".join(out)


def _bracket_end(text: str, pos: int) -> int:
    depth = 0
    index = pos
    while index < len(text):
        char = text[index]
        if char == "\\":
            index += 2
            continue
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth == 0:
                return index + 1
        index += 1
    raise NotEvaluable(f"unmatched '[' in {text!r}")


def _getenv(name: str, ctx: TclContext) -> str:
    value = ctx.environ.get(name)
    if value is None:
        raise NotEvaluable(f"environment variable {name} is not set")
    return value


def _words(command: str, ctx: TclContext, depth: int) -> list[str]:
    scanner = Scanner(command, "<expression>")
    try:
        commands = list(scanner.commands(0, len(command)))
    except SceneParseError as exc:
        raise NotEvaluable(f"malformed TCL: {exc.message}") from None
    if len(commands) != 1:
        raise NotEvaluable(f"[{command}] is not a single TCL command")
    words = []
    for word in commands[0]:
        raw = command[word.pos : word.end]
        if word.braced:
            words.append(unescape_braced(raw[1:-1]))
        elif raw.startswith('"'):
            words.append(substitute(raw[1:-1], ctx, depth))
        else:
            words.append(substitute(raw, ctx, depth))
    return words


def _command(command: str, ctx: TclContext, depth: int) -> str:
    words = _words(command, ctx, depth)
    name, args = words[0], words[1:]
    if name in ("value", "knob"):
        args = [a for a in args if a not in ("-l", "-r", "-a")]
        if len(args) != 1:
            raise NotEvaluable(f"[{command}] sets or queries more than one knob value")
        return ctx.lookup(args[0])
    if name == "getenv" and len(args) in (1, 2):
        value = ctx.environ.get(args[0])
        if value is None:
            if len(args) == 2:
                return args[1]
            raise NotEvaluable(f"environment variable {args[0]} is not set")
        return value
    if name == "file" and args:
        return _file_command(args[0], args[1:], command)
    if name in _LIST_COMMANDS:
        return _LIST_COMMANDS[name](args, command)
    if name == "python":
        code = " ".join(a for a in args if a != "-exec")
        return _python(code, ctx)
    if name == "expr":
        return format_number(evaluate_number(" ".join(args), ctx.lookup, None))
    if name == "frame":
        raise NotEvaluable("the value depends on the frame being rendered ([frame])")
    raise NotEvaluable(f"TCL command '{name}' needs Nuke to evaluate")


def _file_command(sub: str, args: list[str], command: str) -> str:
    if sub == "join" and args:
        return posixpath.join(*args)
    if sub == "split" and len(args) == 1:
        return _list_text(_file_split(args[0]))
    if len(args) != 1:
        raise NotEvaluable(f"[{command}]: 'file {sub}' takes one path")
    path = args[0]
    if sub == "dirname":
        folder = posixpath.dirname(path.rstrip("/")) if path.rstrip("/") else path
        return folder or "."
    if sub == "tail":
        return posixpath.basename(path.rstrip("/"))
    if sub == "rootname":
        return _split_extension(path)[0]
    if sub == "extension":
        return _split_extension(path)[1]
    raise NotEvaluable(f"'file {sub}' needs Nuke to evaluate")


def _file_split(path: str) -> list[str]:
    """TCL's ``file split``: the path's components, an absolute path's root (``/``, ``C:/``)
    first; repeated separators count once."""
    root = ""
    rest = path
    drive = re.match(r"[A-Za-z]:[/\\]", path)
    if drive is not None:
        root, rest = path[:2] + "/", path[3:]
    elif path.startswith("/"):
        root, rest = "/", path.lstrip("/")
    parts = [p for p in re.split(r"[/\\]+", rest) if p]
    return ([root] if root else []) + parts


# -- TCL lists (split, join, lindex, lrange, llength), as the TCL manual defines them --------

_SIMPLE_ELEMENT = re.compile(r'[^\s{}\[\]"\\$;]+')


def _list_text(items: list[str]) -> str:
    """``items`` as a TCL list: elements that need it in braces."""
    out = []
    for item in items:
        if _SIMPLE_ELEMENT.fullmatch(item) and not item.startswith("#"):
            out.append(item)
        elif "{" in item or "}" in item or item.endswith("\\"):
            raise NotEvaluable(f"list element {item!r} needs TCL's own quoting")
        else:
            out.append("{" + item + "}")
    return " ".join(out)


def _list_items(text: str) -> list[str]:
    try:
        return tcl_list(text)
    except SceneParseError as exc:
        raise NotEvaluable(f"{text[:80]!r} is not a TCL list: {exc.message}") from None


def _list_index(text: str, length: int) -> int:
    """A TCL list index: ``N``, ``end``, ``end-N``, ``end+N``, ``N+M``, ``N-M``."""
    found = re.fullmatch(r"\s*(end|[+-]?\d+)(?:([+-])(\d+))?\s*", text)
    if found is None:
        raise NotEvaluable(f"bad list index {text!r}")
    base = length - 1 if found.group(1) == "end" else int(found.group(1))
    if found.group(2):
        base += int(found.group(3)) if found.group(2) == "+" else -int(found.group(3))
    return base


def _tcl_split(args: list[str], command: str) -> str:
    if len(args) not in (1, 2):
        raise NotEvaluable(f"[{command}]: split takes a string and optional split characters")
    text = args[0]
    chars = args[1] if len(args) == 2 else " \t\n\r"
    if chars == "":
        return _list_text(list(text))
    items = re.split("[" + re.escape(chars) + "]", text)
    return _list_text(items)


def _tcl_join(args: list[str], command: str) -> str:
    if len(args) not in (1, 2):
        raise NotEvaluable(f"[{command}]: join takes a list and an optional separator")
    return (args[1] if len(args) == 2 else " ").join(_list_items(args[0]))


def _tcl_lindex(args: list[str], command: str) -> str:
    """``lindex list ?index ...?``: each index (or a list of them) picks an element of the
    element before; out of range gives an empty string."""
    if not args:
        raise NotEvaluable(f"[{command}]: lindex takes a list")
    indices = _list_items(args[1]) if len(args) == 2 else args[1:]
    value = args[0]
    for index in indices:
        items = _list_items(value)
        position = _list_index(index, len(items))
        if not 0 <= position < len(items):
            return ""
        value = items[position]
    return value


def _tcl_lrange(args: list[str], command: str) -> str:
    if len(args) != 3:
        raise NotEvaluable(f"[{command}]: lrange takes a list, a first and a last index")
    items = _list_items(args[0])
    first = max(0, _list_index(args[1], len(items)))
    last = min(len(items) - 1, _list_index(args[2], len(items)))
    return _list_text(items[first : last + 1]) if first <= last else ""


def _tcl_llength(args: list[str], command: str) -> str:
    if len(args) != 1:
        raise NotEvaluable(f"[{command}]: llength takes one list")
    return str(len(_list_items(args[0])))


_LIST_COMMANDS: dict[str, Callable[[list[str], str], str]] = {
    "split": _tcl_split,
    "join": _tcl_join,
    "lindex": _tcl_lindex,
    "lrange": _tcl_lrange,
    "llength": _tcl_llength,
}


def _split_extension(path: str) -> tuple[str, str]:
    """TCL's rule: the extension starts at the last dot of the last path component."""
    tail_start = path.rfind("/") + 1
    dot = path.rfind(".")
    if dot < tail_start:
        return path, ""
    return path[:dot], path[dot:]


_PY_SCRIPT_DIRECTORY = re.compile(r"nuke\.script_directory\(\)")
_PY_ROOT_NAME = re.compile(
    r"nuke\.root\(\)\.name\(\)|nuke\.root\(\)\[(['\"])name\1\]\.(?:value|getValue|evaluate)\(\)"
)
_PY_ENV = re.compile(
    r"os\.environ\[(['\"])(?P<a>\w+)\1\]"
    r"|os\.(?:getenv|environ\.get)\((['\"])(?P<b>\w+)\3\)"
)


# nuke.toNode("Node").knob("k").value() / nuke.toNode('Node')['k'].getValue(): the knob's value,
# as [value Node.k] gives it (Python's Node.knob(name) and node[name] are the same knob).
_PY_KNOB = re.compile(
    r"nuke\.toNode\((['\"])(?P<node>[\w.]+)\1\)"
    r"(?:\.knob\((['\"])(?P<a>\w+)\3\)|\[(['\"])(?P<b>\w+)\5\])"
    r"\.(?:value|getValue|evaluate)\(\)"
)


def _python(code: str, ctx: TclContext) -> str:
    code = code.strip()
    if _PY_SCRIPT_DIRECTORY.fullmatch(code):
        return posixpath.dirname(ctx.root_name)
    if _PY_ROOT_NAME.fullmatch(code):
        return ctx.root_name
    knob = _PY_KNOB.fullmatch(code)
    if knob is not None:
        return ctx.lookup(f"{knob.group('node')}.{knob.group('a') or knob.group('b')}")
    env = _PY_ENV.fullmatch(code)
    if env is not None:
        return _getenv(env.group("a") or env.group("b"), ctx)
    raise NotEvaluable(f"Python needs Nuke to evaluate: {code[:120]}")


# -- numeric expressions ---------------------------------------------------------------------

_FUNCTIONS: dict[str, Callable[..., float]] = {
    "int": lambda v: float(math.trunc(v)),
    "floor": lambda v: float(math.floor(v)),
    "ceil": lambda v: float(math.ceil(v)),
    "rint": lambda v: float(round(v)),
    "abs": abs,
    "min": min,
    "max": max,
}
_BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.FloorDiv: lambda a, b: float(a // b),
    ast.Mod: lambda a, b: a % b,
}


_COMPARE: dict[type[ast.cmpop], Callable[[float, float], bool]] = {
    ast.Eq: lambda a, b: a == b,
    ast.NotEq: lambda a, b: a != b,
    ast.Lt: lambda a, b: a < b,
    ast.LtE: lambda a, b: a <= b,
    ast.Gt: lambda a, b: a > b,
    ast.GtE: lambda a, b: a >= b,
}


@dataclass(frozen=True)
class Expression:
    """A parsed numeric knob expression, evaluated per frame without parsing again."""

    text: str
    tree: ast.expr

    def uses_frame(self) -> bool:
        return any(
            isinstance(node, ast.Name) and node.id in _FRAME_NAMES for node in ast.walk(self.tree)
        )

    def evaluate(self, lookup: KnobLookup, frame: int | None) -> float:
        try:
            return _eval(self.tree, lookup, frame)
        except (ArithmeticError, ValueError, TypeError) as exc:
            raise NotEvaluable(f"expression {self.text!r} fails: {exc}") from None


_BOOLEANS = {"true": 1.0, "yes": 1.0, "on": 1.0, "false": 0.0, "no": 0.0, "off": 0.0}
_LOGIC = re.compile(r"&&|\|\||!(?!=)")
_LOGIC_WORDS = {"&&": " and ", "||": " or ", "!": " not "}


def compile_expression(text: str) -> Expression:
    """Parse a Nuke numeric expression (a subset: arithmetic, comparisons, ``!``/``&&``/``||``,
    ``frame``, knob references, a few functions; quoted or not). Raises :class:`NotEvaluable`
    for anything else."""
    source = text.strip()
    if len(source) >= 2 and source[0] == source[-1] == '"':
        source = source[1:-1].strip()  # Nuke writes expressions with spaces in quotes
    if not source:
        raise NotEvaluable("empty expression")
    if len(source) > MAX_EXPRESSION:
        raise NotEvaluable("expression too long to evaluate without Nuke")
    if "[" in source or "$" in source or "curve" in source:
        raise NotEvaluable(f"expression {source!r} is animated or uses TCL; needs Nuke")
    python = _LOGIC.sub(lambda m: _LOGIC_WORDS[m.group()], source).strip()
    try:
        tree = ast.parse(python, mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise NotEvaluable(f"expression {source!r} needs Nuke to evaluate") from None
    _check(tree, source)
    return Expression(source, tree)


_ALLOWED_NODES = (
    ast.Constant,
    ast.Compare,
    ast.cmpop,
    ast.BoolOp,
    ast.boolop,
    ast.Name,
    ast.Attribute,
    ast.BinOp,
    ast.UnaryOp,
    ast.Call,
    ast.operator,
    ast.unaryop,
    ast.expr_context,
)


def _check(tree: ast.expr, source: str) -> None:
    for node in ast.walk(tree):
        allowed = isinstance(node, _ALLOWED_NODES)
        if isinstance(node, ast.Constant) and not isinstance(node.value, int | float):
            allowed = False
        if isinstance(node, ast.BinOp) and type(node.op) not in _BINARY:
            allowed = False
        if isinstance(node, ast.UnaryOp) and not isinstance(node.op, ast.USub | ast.UAdd | ast.Not):
            allowed = False
        if isinstance(node, ast.Compare) and any(type(op) not in _COMPARE for op in node.ops):
            allowed = False
        if isinstance(node, ast.Call) and (
            not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS or node.keywords
        ):
            allowed = False
        if not allowed:
            raise NotEvaluable(f"expression {source!r} needs Nuke to evaluate")


def _reference(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_reference(node.value)}.{node.attr}"
    raise NotEvaluable("only knob names may be followed by '.'")


def _eval(node: ast.expr, lookup: KnobLookup, frame: int | None) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return float(node.value)
    if isinstance(node, ast.Name) and node.id in _FRAME_NAMES:
        if frame is None:
            raise NotEvaluable("the value depends on the frame being rendered")
        return float(frame)
    if isinstance(node, ast.Name | ast.Attribute):
        reference = _reference(node)
        text = lookup(reference)
        if not text.strip():
            raise NotEvaluable(f"{reference} is not set in the script and is not a number knob")
        return parse_number(text, lookup, frame)
    if isinstance(node, ast.BinOp):
        op = _BINARY[type(node.op)]
        left, right = _eval(node.left, lookup, frame), _eval(node.right, lookup, frame)
        if abs(left) > 1e12 or abs(right) > 1e12:
            raise NotEvaluable("expression value out of range for a frame number")
        return op(left, right)
    if isinstance(node, ast.UnaryOp):
        value = _eval(node.operand, lookup, frame)
        if isinstance(node.op, ast.Not):
            return float(not value)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.Compare):
        left = _eval(node.left, lookup, frame)
        for comparison, right_node in zip(node.ops, node.comparators, strict=True):
            right = _eval(right_node, lookup, frame)
            if not _COMPARE[type(comparison)](left, right):
                return 0.0
            left = right
        return 1.0
    if isinstance(node, ast.BoolOp):
        values = (_eval(v, lookup, frame) for v in node.values)
        if isinstance(node.op, ast.And):
            return float(all(values))
        return float(any(values))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        return _FUNCTIONS[node.func.id](*(_eval(a, lookup, frame) for a in node.args))
    raise NotEvaluable("expression needs Nuke to evaluate")


def parse_number(value: str, lookup: KnobLookup, frame: int | None) -> float:
    """A knob value as a number: a literal, or an expression (``{parent.first}``)."""
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        pass
    if text.lower() in _BOOLEANS:
        return _BOOLEANS[text.lower()]  # a boolean knob's value as a number
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1]
    return evaluate_number(text, lookup, frame)


def evaluate_number(text: str, lookup: KnobLookup, frame: int | None) -> float:
    return compile_expression(text).evaluate(lookup, frame)


def format_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)
