"""Nuke ``.nk`` scripts: the files each requested frame reads, worked out without Nuke.

What a caller may rely on:

- The node graph is followed. The render computes the Writes the job's ``nuke`` stage names
  (``args.write``, Nuke's ``-X``; :attr:`ResolveContext.render_nodes`), else every enabled
  Write, DeepWrite and WriteGeo; a precomp script computes its Output node. From those the
  requested frames are carried upstream (inputs from the script's node stack, group Output/Input
  nodes, gizmo members; a published LiveGroup, saved without its members, passes its inputs on
  at the same frames), through TimeOffset (``time_offset``, ``reverse_input``), FrameHold
  (``first_frame``, saved as ``firstFrame`` by Nuke 13, and ``increment``), FrameRange (frames
  pass through), TimeClip (Read's time controls), Retime (``input.*``/``output.*`` ranges,
  ``speed``, ``reverse``, ``before``/``after``; a frame between two input frames reads both),
  AppendClip (``firstFrame``, ``cross_dissolve``), TimeWarp (a static ``lookup``), TimeEcho (the
  ``framesbehind`` frames up to and including the frame), FrameBlend (``numframes`` up to the
  frame, or spread over ``startframe``..``endframe`` with ``userange``), VectorGenerator (the
  frame and its two neighbours), ContactSheet with ``splitinputs`` (``startframe``..
  ``endframe`` of every input, at every frame), Switch (``which``, clamped) and Dissolve (the
  two inputs ``which`` lies between). A disabled node passes its input 0 only. A time knob that
  needs Nuke (an animated curve) is reported and the input's whole frame range is listed; a
  ``which`` that needs Nuke reads every input. Reads that feed only Viewers, disabled Writes or
  nothing are not listed. A script with no Write node at all (a toolset) renders nothing with
  ``nuke -x``: then every enabled file-reading node is listed, as a pre-flight of the whole
  script.
- Frame tokens are Nuke's own: ``#`` (one digit each) and ``%0Nd``; ``@`` is a literal.
- A knob the script does not set takes Nuke's default (an unset file knob is empty, a numeric
  user knob 0); a bare knob name in an expression falls back to the enclosing group's knob.
- A ``disable`` that needs Nuke (``[python …]``) is reported in ``unresolved`` and the node is
  taken as enabled, so its files are listed.
- ``[value root.name]`` is the artist's path for the script with forward slashes, as Nuke
  names it, even when a Windows path-map rule gave it.
- File knobs of Read/DeepRead (``file``; ``proxy`` too when the Root is in proxy mode),
  ReadGeo/ReadGeo2, Camera/Axis/Light (only with ``read_from_file true``),
  OCIOFileTransform, OCIOCDLTransform (with ``read_from_file``), Vectorfield
  (``vfield_file``), AudioRead, Precomp and LiveGroup (the referenced script is resolved
  too), and the Root's custom OCIO config with the LUTs it references. A ParticleCache with
  ``particle_cache_read_from_file`` reads sub-frame cache files whose names need Nuke: it is
  reported in ``unresolved``.
- Read-like nodes map each render frame to the file frame it reads: ``frame_mode``
  ``expression`` (the default; ``frame`` empty means the render frame itself), ``start at``
  (file frame ``first`` shows at render frame ``frame``) or ``offset`` (file frame = render
  frame - ``frame``); then frames outside ``first``..``last`` follow ``before``/``after``:
  ``hold`` (the default), ``loop``, ``bounce`` or ``black`` (no file). Omitted knobs take
  Nuke's defaults: ``first 1``, ``last 1`` (Nuke writes only knobs that differ from their
  default, which is why a 1-100 sequence is saved with ``last 100`` and no ``first``).
  ``origfirst``/``origlast`` only describe the files on disk; Nuke reads inside
  ``first``..``last``, so they change nothing here.
- A Precomp's script is computed at the render frame, like a Group's members: Foundry's
  reference lists no frame-range or offset knobs on Precomp (``file``, ``reading``,
  ``on_error``, ``output``, ``use_output`` and buttons). With ``reading true`` ("read file for
  output") it shows the files its output Write rendered instead, so those are listed and the
  script's own inputs are not (with ``on_error`` ``read input``: only for the frames whose
  rendered file is missing).
- A Write with ``reading true`` ("read file") reads its own output back: its file for each
  frame, numbered by its ``frame_mode`` (``expression`` or ``offset``, which Nuke's Write
  adds). With ``on_error`` other than ``error`` only the rendered files that exist are listed,
  since Nuke then renders without the others.
- A node of a class Nuke does not ship is a gizmo: ``<Class>.gizmo`` is looked for in the
  gizmo path's folders (``NUKE_PATH`` by default), then next to the script. Its member nodes
  are resolved like a Group's, with the instance's values for the gizmo's user knobs. The
  ``.gizmo`` itself is a dependency when it comes from storage (a mapped folder, a URL, or
  the script's folder) and not when it is a local folder of the farm node. A class with no
  ``.gizmo`` found is reported in ``unresolved`` (Nuke's own classes never are).
- Relative paths resolve against the Root's ``project_directory`` when it is set, else the
  script's folder (Nuke itself would use its working directory, which a farm node does not
  share with the artist).
- Disabled nodes, and every node inside a disabled group, read nothing themselves (but a
  disabled gizmo's ``.gizmo``, which Nuke needs to load the script at all).
- What needs Nuke to evaluate (Python, unknown TCL, animated file knobs, frame expressions
  beyond arithmetic) is reported in ``Dependencies.unresolved`` with the node and why.
"""

from __future__ import annotations

import math
import os
import posixpath
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

from jitrender.deps import Dependencies, Dependency, Unresolved
from jitrender.errors import JitrenderError, SceneParseError
from jitrender.paths import is_url, join_url, local_path_of, split_url, url_basename, url_dirname
from jitrender.resolve import register
from jitrender.resolve.base import ResolveContext, file_dependencies
from jitrender.resolve.nuke_ocio import ocio_config_dependencies
from jitrender.resolve.nuke_script import Node, NukeScript, Scanner, decode_script, parse_script
from jitrender.resolve.nuke_tcl import (
    MAX_DEPTH,
    NotEvaluable,
    TclContext,
    compile_expression,
    format_number,
    parse_number,
    substitute,
)
from jitrender.sequences import has_frame_token

# Precomps inside precomps deeper than this are a loop in all but name.
MAX_PRECOMP_DEPTH = 16
# No sequence on a farm is numbered beyond this; larger values are typos or garbage.
MAX_FRAME = 10**9

_ROOT_DEFAULTS = {"first_frame": "1", "last_frame": "100", "project_directory": "", "proxy": ""}
_READ_DEFAULTS = {
    "first": "1",
    "last": "1",
    "origfirst": "1",
    "origlast": "1",
    "before": "hold",
    "after": "hold",
    "frame_mode": "expression",
    "frame": "",
}
_READ_LIKE = frozenset({"Read", "DeepRead"})
# Defaults of the knobs the graph walk reads, per class (Foundry's reference guide); a frame
# range "dependent on the input" is None here and taken from the input's range.
_KNOB_DEFAULTS: dict[str, dict[str, str]] = {
    "Read": _READ_DEFAULTS,
    "DeepRead": _READ_DEFAULTS,
    "TimeOffset": {"time_offset": "0", "reverse_input": "false"},
    "FrameHold": {"first_frame": "0", "increment": "0"},
    "TimeClip": {"before": "hold", "after": "hold", "frame_mode": "expression", "frame": ""},
    "Retime": {"speed": "1", "reverse": "false", "before": "hold", "after": "hold"},
    "AppendClip": {"firstFrame": "1", "fadeIn": "0", "fadeOut": "0", "cross_dissolve": "0"},
    "TimeEcho": {"framesbehind": "1"},
    "ContactSheet": {"startframe": "-1", "endframe": "-1"},
    "FrameBlend": {"numframes": "5", "startframe": "-1", "endframe": "-1", "userange": "false"},
    "Switch": {"which": "0"},
    "Dissolve": {"which": "0"},
    "Input": {"number": "0"},
}
# The nodes ``nuke -x`` executes when the command line names none.
_OUTPUT_CLASSES = frozenset({"Write", "DeepWrite", "WriteGeo"})
_TRUE_WORDS = ("true", "1", "yes", "on")
_FALSE_WORDS = ("false", "0", "no", "off", "")
# A time knob that needs Nuke makes the walk ask for the input's whole range; beyond this
# many frames it passes the frames through instead.
MAX_RANGE_FRAMES = 100_000
# A node that reads many input frames for each frame (TimeEcho, FrameBlend) reading more than
# this many is taken as needing Nuke (its input's whole range is listed, and reported).
MAX_FRAMES_PER_FRAME = 10_000
_HOLD_MODES = ("hold", "loop", "bounce", "black")
_FRAME_MODES = ("expression", "startat", "offset")
# Write's and Precomp's "missing frames" (on_error) when reading their rendered files back.
_MISSING_FRAMES = ("error", "black", "checkerboard", "readinput")

# Node classes that ship with Nuke/NukeX (version suffixes stripped: Merge2 -> Merge), including
# the gizmos in Nuke's own plugin folder. Any other class is a studio gizmo or plug-in: its
# ``<Class>.gizmo`` is looked for, and it is reported when none is found. Classes with no file
# knob of their own need no handler; missing a rare one here costs one ``unresolved`` entry.
_BUILTIN_CLASS_NAMES = """
    Root Group Gizmo LiveGroup LiveInput Precomp Input Output NoOp Dot BackdropNode StickyNote
    PostageStamp Viewer Switch Assert DiskCache BlinkScript Expression MergeExpression
    Read Write DeepRead DeepWrite ReadGeo WriteGeo AudioRead Constant CheckerBoard ColorBars
    ColorWheel Roto RotoPaint Noise Ramp Radial Rectangle Flare Glint Grain ScannedGrain Dither
    Text LightWrap Sparkles MarkerRemoval GridWarp SplineWarp IDistort STMap Position
    AppendClip FrameBlend FrameHold FrameRange NoTimeBlur Retime TimeBlur TimeClip TimeEcho
    TimeOffset TimeWarp TimeDissolve Kronos OFlow MotionBlur VectorGenerator VectorToMotion
    SmartVector VectorDistort VectorCornerPin VectorBlur
    AddChannels ChannelMerge Copy Remove Shuffle ShuffleCopy ShuffleViews
    Add Clamp ColorCorrect ColorLookup ColorMatrix Colorspace CrossTalk Exposure Gamma Grade
    HistEQ Histogram HSVTool HueCorrect HueShift Invert Log PLogLin MinColor Multiply
    Posterize Saturation Sampler SoftClip Toe MatchGrade GenerateLUT ColorTransfer Vectorfield
    OCIOCDLTransform OCIOColorSpace OCIODisplay OCIOFileTransform OCIOLogConvert
    OCIOLookTransform OCIONamedTransform
    Blur Bilateral BumpBoss Convolve Defocus DegrainBlue DegrainSimple Denoise DirBlur
    DropShadow EdgeBlur EdgeDetect EdgeDetectWrapper EdgeExtend Emboss Erode FilterErode Dilate
    Glow GodRays Laplacian Matrix Median MotionBlur2D MotionBlur3D Sharpen Soften Tile
    VolumeRays ZBlur ZDefocus ZSlice Bokeh Inference CopyCat Deblur Upscale Blend
    ChromaKeyer Difference HueKeyer IBKColour IBKColourV IBKGizmo IBKGizmoV Keyer Keylight
    Primatte Ultimatte Cryptomatte Encryptomatte LumaKeyer Despill
    AddMix ContactSheet LayerContactSheet CopyBBox CopyRectangle Dissolve Keymix KeyMix
    Merge Premult Unpremult ZMerge MergeMat
    AdjBBox BlackOutside Card3D CornerPin2D Crop LensDistortion Mirror PlanarTracker
    Reconcile3D Reformat SphericalTransform Stabilize2D Tracker Transform TransformMasked
    CameraShake TVIscale CameraTracker CameraSolver PointCloudGenerator ModelBuilder
    ModelBuilderGeo
    DepthGenerator PoissonMesh
    Axis Camera Light DirectLight Spotlight Environment EnvironmentLight Card Cube Cylinder
    Sphere Scene ScanlineRender RayRender PrmanRender MergeGeo TransformGeo ApplyMaterial
    Project3D BasicMaterial Phong Specular Emission Diffuse Displacement FillMat BlendMat
    Wireframe UVProject Normals Reflection Refraction Transmission LookupGeo LogGeo
    CrosstalkGeo RadialDistort ProceduralNoise Trilinear EditGeo GeoSelect DisplaceGeo
    ParticleEmitter ParticleSettings ParticleBounce ParticleCurve ParticleDrag
    ParticleGravity ParticleMotionAlign ParticleSpawn ParticleSpeedLimit ParticleTurbulence
    ParticleVortex ParticleWind ParticleDirection ParticleExpression ParticleKill
    ParticleLookAt ParticleMerge ParticlePointForce ParticleCylinderFlow ParticleShockWave
    ParticleToImage ParticleToGeo ParticleAttractToSphere ParticleBlinkScript ParticleCache
    GeoScene GeoCard GeoCube GeoCylinder GeoSphere GeoPlane GeoImport GeoExport GeoMerge
    GeoTransform GeoReference GeoBindMaterial GeoCollection GeoDuplicate GeoInstance
    GeoVisibility GeoPrune GeoDrawMode GeoPointsToMesh GeoRadialDistort GeoDisplace
    DeepColorCorrect DeepCrop DeepExpression DeepFromFrames DeepFromImage DeepHoldout
    DeepMerge DeepRecolor DeepReformat DeepSample DeepToImage DeepToPoints DeepTransform
    DeepVolumeMaker
    JoinViews OneView SideBySide Anaglyph MixViews SplitAndJoin ReConverge
    CompareMetaData CopyMetaData ModifyMetaData ViewMetaData AddTimeCode
    Log2Lin DirBlurWrapper EXPTool CurveTool Grid Bezier Paint AmbientOcclusion ReLight Relight
    PositionToPoints DepthToPoints DepthToPosition CMSTestPattern
"""
_BUILTIN_CLASSES = frozenset(_BUILTIN_CLASS_NAMES.split())
_NODE_CLASS = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _knob_default(cls: str, knob: str) -> str | None:
    if knob == "disable":
        return "false"
    defaults = _KNOB_DEFAULTS.get(cls) or _KNOB_DEFAULTS.get(cls.rstrip("0123456789"))
    return defaults.get(knob) if defaults is not None else None


Handler = Callable[["ScriptResolver", Node], Dependencies]
# A node's frame -> the render frames that need it at that frame.
FrameRequests = dict[int, set[int]]
# A time node: the input frames it reads for one of its own frames.
Timing = Callable[["ScriptResolver", Node, int], list[int]]
# Knobs that only place a node in the DAG; left out of what ``unresolved`` quotes.
_LAYOUT_KNOBS = frozenset({"xpos", "ypos", "selected", "tile_color", "gl_color", "note_font"})
_handlers: dict[str, Handler] = {}


def _handles(*classes: str) -> Callable[[Handler], Handler]:
    """Decorator: ``fn`` resolves nodes of these classes."""

    def decorate(fn: Handler) -> Handler:
        for cls in classes:
            _handlers[cls] = fn
        return fn

    return decorate


@dataclass
class ScriptResolver:
    """One parsed script and what evaluating its knobs needs. ``prefix`` names the Precomp or
    LiveGroup that brought the script in (empty for the job's own scene)."""

    ctx: ResolveContext
    script: NukeScript
    environ: Mapping[str, str]
    visited: frozenset[str]
    prefix: str = ""
    gizmos: GizmoLibrary | None = None  # None: NUKE_PATH from ``environ``
    out: Dependencies = field(default_factory=Dependencies)
    _depth: int = 0
    # Nodes standing in for gizmo instances: kept alive, since _values is keyed by id().
    _instances: list[Node] = field(default_factory=list)
    # (node id, knob) -> evaluated value or why not; knobs that refer to each other are
    # evaluated once, so a chain of references cannot blow up exponentially.
    _values: dict[tuple[int, str], str | NotEvaluable] = field(default_factory=dict)
    # Gizmo instances (by id) -> the node standing in for them, whose members the walk enters.
    _gizmo_nodes: dict[int, Node] = field(default_factory=dict)
    _ranges: dict[int, tuple[int, int] | None] = field(default_factory=dict)
    # The walk's request map for "each render frame at itself" (see _walk).
    _identity: FrameRequests = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = self.script.root or Node("Root", {}, None, 0)
        self.root_name = _root_name(self.ctx)
        self.views = self._views()
        self.proxy_mode = self.root.flag("proxy")
        self.project_url = self._project_url()
        self.library = self.gizmos or GizmoLibrary(
            self.ctx, search_path(self.environ.get("NUKE_PATH", ""))
        )

    # -- evaluation ------------------------------------------------------------------------

    def source(self, node: Node, knob: str) -> str:
        # The Root's ``name`` knob is the script's path, not a node name: call it Root.
        return f"{self.prefix}{'Root' if node is self.root else node.path}.{knob}"

    def tcl(self, here: Node) -> TclContext:
        return TclContext(self.root_name, lambda ref: self.lookup(ref, here), self.environ)

    def lookup(self, reference: str, here: Node) -> str:
        """The evaluated value of a knob reference as seen from ``here``."""
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise NotEvaluable("expressions refer to each other in a loop")
            parts = reference.split(".")
            node = self._find(parts[:-1], here) if len(parts) > 1 else self._owner(here, parts[0])
            key = (id(node), parts[-1])
            known = self._values.get(key)
            if known is None:
                try:
                    known = self._knob(node, parts[-1])
                except NotEvaluable as exc:
                    known = exc
                self._values[key] = known
            if isinstance(known, NotEvaluable):
                raise known
            return known
        finally:
            self._depth -= 1

    def _owner(self, here: Node, knob: str) -> Node:
        """The node a bare knob name means: ``here``, or else the nearest enclosing group that
        has it (a group's knobs are visible to its members by name, as in Nuke)."""
        if knob in here.knobs or knob in here.user_knobs or knob in ("name", "disable"):
            return here
        if _knob_default(here.cls, knob) is not None:
            return here
        group = here.group
        while group is not None:
            if knob in group.knobs or knob in group.user_knobs:
                return group
            group = group.group
        return here

    def _find(self, parts: list[str], here: Node) -> Node:
        head = parts[0]
        node: Node | None
        if head == "this":
            node = here
        elif head == "root":
            node = self.root
        elif head == "parent":
            node = here.group or self.root
        else:
            # Names resolve in the group the node sits in first, then at the top level.
            scope = here.group.members if here.group is not None else self.script.top
            node = scope.get(head) or self.script.top.get(head)
        for part in parts[1:]:
            if node is None:
                break
            if part == "parent":
                node = None if node is self.root else (node.group or self.root)
            elif node is self.root:
                node = self.script.top.get(part)
            else:
                node = node.members.get(part)
        if node is None:
            raise NotEvaluable(f"no node {'.'.join(parts)} in the script")
        return node

    def _knob(self, node: Node, knob: str) -> str:
        if node is self.root:
            if knob == "name":
                return self.root_name
            raw = node.knobs.get(knob, _ROOT_DEFAULTS.get(knob))
        elif knob == "name":
            return node.name
        else:
            raw = node.knobs.get(knob)
            if raw is None:
                raw = _knob_default(node.cls, knob)
            if raw is None and knob in node.numeric_knobs:
                raw = "0"
        if raw is None:
            # Nuke saves only knobs that differ from their default; for the string knobs
            # people refer to (file, cache, label, user knobs) that default is empty.
            raw = ""
        if knob in node.braced and raw.lstrip().startswith("{"):
            return format_number(parse_number(raw, lambda ref: self.lookup(ref, node), None))
        return substitute(raw, self.tcl(node), self._depth)

    def frame_number(self, node: Node, knob: str, default: str) -> int:
        """An integer knob (a frame number), literal or expression."""
        raw = node.knobs.get(knob, default)
        return _whole_frame(parse_number(raw or "0", lambda ref: self.lookup(ref, node), None))

    def knob_on(self, node: Node, knob: str, frame: int | None) -> bool:
        """A checkbox knob: as written (``true``/``1``), else its expression's value, non-zero
        meaning on (``userange {{parent.customframerange}}``); unset, the class default (off).
        An expression that needs Nuke raises :class:`NotEvaluable`."""
        raw = node.knobs.get(knob)
        if raw is None:
            raw = _knob_default(node.cls, knob) or "false"
        text = raw.strip()
        if text.lower() in _TRUE_WORDS:
            return True
        if text.lower() in _FALSE_WORDS:
            return False
        if knob in node.braced:
            return parse_number(text, lambda ref: self.lookup(ref, node), frame) != 0
        try:
            return float(text) != 0
        except ValueError:
            return False

    def choice(self, node: Node, knob: str, options: tuple[str, ...]) -> str:
        raw = node.knobs.get(knob, options[0]).strip().lower().replace(" ", "").replace("_", "")
        if raw.isdigit() and int(raw) < len(options):
            return options[int(raw)]
        if raw not in options:
            raise NotEvaluable(f"{node.name}.{knob} is {raw!r}, not one of {', '.join(options)}")
        return raw

    def path(self, node: Node, knob: str) -> str | None:
        """A file knob's evaluated value; None (and an unresolved entry) if it needs Nuke."""
        raw = node.knobs.get(knob, "")
        if not raw.strip():
            return None
        if knob in node.braced and raw.lstrip().startswith("{"):
            why = "the file knob is animated or an expression; its value needs Nuke"
            self.out.unresolved.append(Unresolved(self.source(node, knob), raw, why))
            return None
        try:
            return substitute(raw, self.tcl(node)).strip()
        except NotEvaluable as exc:
            self.out.unresolved.append(Unresolved(self.source(node, knob), raw, exc.why))
            return None

    def files(
        self, node: Node, knob: str, frame_map: Mapping[int, list[int]] | None = None
    ) -> Dependencies:
        """The dependencies behind one file knob (every frame, or as ``frame_map`` says)."""
        written = self.path(node, knob)
        if written is None:
            return Dependencies()
        return file_dependencies(
            self.ctx,
            _tidy(written),
            self.source(node, knob),
            frame_map=frame_map,
            relative_to=self.project_url,
            views=self.views,
            frame_style="nuke",
        )

    def rendered_files(self, node: Node) -> Dependencies:
        """What reading a Write's output back needs: its file (and proxy, in proxy mode) for the
        context's frames, numbered as the Write numbers them."""
        return self.numbered_files(node, write_frame_map, ("frame_mode", "frame"), "reads back")

    def numbered_files(
        self,
        node: Node,
        frame_map_of: Callable[[ScriptResolver, Node], dict[int, list[int]]],
        knobs: Sequence[str],
        verb: str,
    ) -> Dependencies:
        """A Read's or Write's ``file`` (and ``proxy``, in proxy mode) for the file frames
        ``frame_map_of`` maps the context's frames to. When that cannot be evaluated: a path
        without a frame token is one file (a movie), any other is unresolved, quoting
        ``knobs`` and saying which file frames it ``verb`` cannot be worked out."""
        try:
            frame_map = frame_map_of(self, node)
        except NotEvaluable as exc:
            written = self.path(node, "file")
            if written is not None and not has_frame_token(written, "nuke"):
                return self.files(node, "file")  # one file (a movie): the frame is irrelevant
            raw = " ".join(f"{k} {node.knobs[k]}" for k in knobs if k in node.knobs)
            why = f"cannot work out which file frames it {verb}: {exc.why}"
            return Dependencies([], [Unresolved(self.source(node, "file"), raw, why)])
        if not frame_map:
            return Dependencies()
        out = self.files(node, "file", frame_map)
        if self.proxy_mode:
            out.extend(self.files(node, "proxy", frame_map))
        return out

    def referenced(self, node: Node, out: Dependencies) -> ScriptResolver | None:
        """A resolver for the script a Precomp or LiveGroup references, or None (with the reason
        in ``out.unresolved``) when it cannot be read."""
        written = self.path(node, "file")
        if written is None or (node.cls == "LiveGroup" and not written):
            return None
        source = self.source(node, "file")
        ctx = self.ctx
        try:
            url = ctx.map(written, relative_to=self.project_url)
        except ValueError as exc:
            out.unresolved.append(Unresolved(source, written, str(exc)))
            return None
        if url in self.visited or len(self.visited) > MAX_PRECOMP_DEPTH:
            out.unresolved.append(Unresolved(source, written, "the script includes itself"))
            return None
        try:
            local = ctx.fetch(url)
            data = local.read_bytes()
        except (JitrenderError, OSError, ValueError) as exc:
            why = f"cannot read the referenced script: {exc}"
            out.unresolved.append(Unresolved(source, written, why))
            return None
        nested_ctx = ctx.with_scene(url, local)
        script = parse_script(decode_script(data, url), url)
        prefix = f"{self.prefix}{node.path}."
        return ScriptResolver(
            nested_ctx, script, self.environ, self.visited | {url}, prefix, self.library
        )

    # -- the Root --------------------------------------------------------------------------

    def _views(self) -> tuple[str, ...]:
        raw = self.root.knobs.get("views", "")
        if not raw.strip():
            return ("main",)
        scanner = Scanner(raw, self.script.url)
        names: list[str] = []
        try:
            for words in scanner.commands(0, len(raw)):
                if words[0].braced:
                    for word in words:
                        item = Scanner(word.text, self.script.url).commands(0, len(word.text))
                        first = next(item, None)
                        if first:
                            names.append(first[0].text)
                else:
                    names.append(words[0].text)
        except SceneParseError:
            raise SceneParseError(
                f"{self.script.url}:{self.root.line}:1: the Root's views knob is not a TCL list"
            ) from None
        return tuple(dict.fromkeys(n for n in names if n)) or ("main",)

    def _project_url(self) -> str:
        raw = self.root.knobs.get("project_directory", "")
        if not raw.strip():
            return self.ctx.scene_folder_url
        try:
            folder = substitute(raw, self.tcl(self.root)).strip()
            return join_url(self.ctx.map(folder), ".") if folder else self.ctx.scene_folder_url
        except NotEvaluable as exc:
            why = f"{exc.why}; relative paths resolved against the script's folder instead"
        except ValueError as exc:
            why = f"{exc}; relative paths resolved against the script's folder instead"
        self.out.unresolved.append(Unresolved(f"{self.prefix}Root.project_directory", raw, why))
        return self.ctx.scene_folder_url

    def _ocio(self) -> None:
        knobs = self.root.knobs
        config = knobs.get("OCIO_config", "").strip()
        if config == "custom":
            knob = "customOCIOConfigPath"
        elif "/" in config or "\\" in config or config.lower().endswith(".ocio"):
            knob = "OCIO_config"
        else:
            return
        written = self.path(self.root, knob)
        if written:
            self.out.extend(
                ocio_config_dependencies(
                    self.ctx,
                    written,
                    self.source(self.root, knob),
                    self.environ,
                    relative_to=self.project_url,
                )
            )

    # -- the whole script ------------------------------------------------------------------

    def resolve(self) -> Dependencies:
        """What the script's renders read: walked upstream from the nodes that render (see
        :meth:`targets`); a script with no Write at all (a toolset, a template) renders
        nothing with ``nuke -x``, so every enabled file-reading node is listed instead."""
        self._ocio()
        targets = self.targets()
        if targets is None:
            self._resolve_nodes(self.script.nodes, ())
        else:
            self._expand_gizmos(self.script.nodes, ())
            self._walk(targets)
        return self.out

    def targets(self) -> list[Node] | None:
        """The nodes whose output the render computes: the job's named Writes (``-X``), else a
        precomp script's Output node, else every enabled Write/DeepWrite/WriteGeo. None when
        the script has no such node at all."""
        named = () if self.prefix else self.ctx.render_nodes
        if named:
            found: list[Node] = []
            for name in named:
                node = self._node_at(name)
                if node is None:
                    why = "the job's nuke stage names this node, which the script does not have"
                    self.out.unresolved.append(Unresolved(f"{self.prefix}{name}", name, why))
                elif not self.is_disabled(node):
                    found.append(node)
            return found
        if self.prefix:
            outputs = [n for n in self.script.top.values() if n.cls == "Output"]
            if outputs:
                return outputs
        writes = [n for n in self.script.nodes if n.cls in _OUTPUT_CLASSES]
        if not writes:
            return None
        return [n for n in writes if not self.is_disabled(n)]

    def _node_at(self, path: str) -> Node | None:
        node: Node | None = None
        scope = self.script.top
        for part in path.split("."):
            node = scope.get(part)
            if node is None:
                return None
            scope = node.members
        return node

    def is_disabled(self, node: Node) -> bool:
        """Disabled itself or inside a disabled group. A ``disable`` knob that needs Nuke
        (``[python …]``) is reported and taken as enabled, so its files are listed."""
        current: Node | None = node
        while current is not None:
            if self._disable_knob(current):
                return True
            current = current.group
        return False

    def _disable_knob(self, node: Node) -> bool:
        raw = node.knobs.get("disable")
        if raw is None:
            return False
        text = raw.strip()
        if text.lower() in _TRUE_WORDS:
            return True
        if text.lower() in _FALSE_WORDS:
            return False
        try:
            if "disable" in node.braced:
                return parse_number(text, lambda ref: self.lookup(ref, node), None) != 0
            value = substitute(text, self.tcl(node)).strip().lower()
        except NotEvaluable as exc:
            why = f"{exc.why}; taken as enabled, so the files it reads are listed"
            self.out.unresolved.append(Unresolved(self.source(node, "disable"), raw, why))
            return False
        try:
            return value in _TRUE_WORDS or float(value) != 0
        except ValueError:
            return False

    def _resolve_nodes(self, nodes: Iterable[Node], inside: tuple[str, ...]) -> None:
        """Every enabled node's files, graph or not. ``inside``: the gizmo classes these nodes
        are members of, outermost first."""
        for node in nodes:
            handler = _handlers.get(node.cls)
            if handler is not None:
                if not self.is_disabled(node):
                    self.out.extend(handler(self, node))
            elif _may_be_gizmo(node.cls):
                expanded = self._gizmo(node, inside)
                if expanded is not None:
                    self._resolve_nodes(expanded[1], (*inside, node.cls))

    def _expand_gizmos(self, nodes: Iterable[Node], inside: tuple[str, ...]) -> None:
        """Load every gizmo instance's definition (its ``.gizmo`` is needed to load the script
        at all), so the walk can go through the gizmo's members."""
        for node in nodes:
            if node.cls in _handlers or not _may_be_gizmo(node.cls):
                continue
            expanded = self._gizmo(node, inside)
            if expanded is not None:
                self._gizmo_nodes[id(node)] = expanded[0]
                self._expand_gizmos(expanded[1], (*inside, node.cls))

    def _gizmo(self, node: Node, inside: tuple[str, ...]) -> tuple[Node, list[Node]] | None:
        """A node of a class Nuke does not ship: its ``.gizmo`` (needed to load the script at
        all, so even when the node is disabled) and, when enabled, its members."""
        source = f"{self.prefix}{node.path}"
        if node.cls in inside or len(inside) > MAX_PRECOMP_DEPTH:
            self.out.unresolved.append(Unresolved(source, node.cls, "the gizmo contains itself"))
            return None
        found = self.library.find(node.cls, self.ctx.scene_folder_url)
        if isinstance(found, str):
            self.out.unresolved.append(Unresolved(source, node.cls, found))
            return None
        if found.listed:
            self.out.deps.append(Dependency(found.path, found.url, None, source))
        if node.disabled():
            return None
        try:
            stand_in, members = instantiate_gizmo(found.script, node)
        except NotEvaluable as exc:
            self.out.unresolved.append(Unresolved(source, found.path, exc.why))
            return None
        self._instances.append(stand_in)
        self._instances.extend(members)
        return stand_in, members

    # -- the node graph ----------------------------------------------------------------------

    def _walk(self, targets: Sequence[Node]) -> None:
        """Carry the requested frames upstream from ``targets``, node by node (each node after
        every node downstream of it), listing the files of every enabled node reached."""
        # Request maps are shared between nodes and never changed in place (a merge makes a
        # new one), so a chain of pass-through nodes costs no copies.
        identity: FrameRequests = {f: {f} for f in self.ctx.frames}
        self._identity = identity
        requests: dict[int, FrameRequests] = {id(target): identity for target in targets}
        target_ids = {id(t) for t in targets}
        read_from_downstream: set[int] = set()
        for node in _downstream_first(targets, self._graph_upstream):
            wanted = requests.pop(id(node), None)
            if not wanted:
                continue
            disabled = self.is_disabled(node)
            passes_input = True
            if not disabled and node.cls in _handlers:
                if node.cls != "Write":
                    self.out.extend(self._node_files(node, wanted))
                elif node.flag("reading") and id(node) in read_from_downstream:
                    # A Write reading its file back shows that file downstream, not its input;
                    # it still computes its input when it renders itself.
                    self.out.extend(self._node_files(node, wanted))
                    passes_input = id(node) in target_ids
            if not passes_input:
                continue
            for upstream, asked in self._upstream(node, wanted, disabled):
                key = id(upstream)
                read_from_downstream.add(key)
                known = requests.get(key)
                requests[key] = asked if known is None or known is asked else _merged(known, asked)

    def _node_files(self, node: Node, wanted: FrameRequests) -> Dependencies:
        """The node's own files for the node frames in ``wanted``, with each dependency's
        frames put back in render frames."""
        handler = _handlers[node.cls]
        if wanted is self._identity:
            return handler(self, node)
        frames = tuple(sorted(wanted))
        if frames == self.ctx.frames and all(wanted[f] == {f} for f in frames):
            return handler(self, node)
        saved = self.ctx
        self.ctx = replace(saved, frames=frames)
        try:
            found = handler(self, node)
        finally:
            self.ctx = saved
        deps = []
        for dep in found.deps:
            if dep.frames is not None:
                renders = sorted(set().union(*(wanted.get(f, set()) for f in dep.frames)))
                dep = replace(dep, frames=tuple(renders))
            deps.append(dep)
        return Dependencies(deps, found.unresolved)

    def _graph_upstream(self, node: Node) -> list[Node]:
        """Every node ``node`` may pull from: its inputs, a group's Output nodes, a group
        Input's group input."""
        found = [n for n in node.inputs if n is not None]
        found.extend(self._outputs_inside(node))
        if node.cls == "Input":
            outside = self._group_input(node)
            if outside is not None:
                found.append(outside)
        return found

    def _outputs_inside(self, node: Node) -> list[Node]:
        group = self._gizmo_nodes.get(id(node), node)
        if not group.is_group() and group is node:
            return []
        return [m for m in group.members.values() if m.cls == "Output"]

    def _group_input(self, node: Node) -> Node | None:
        group = node.group
        if group is None:
            return None
        try:
            number = _whole_frame(parse_number(node.knobs.get("number", "0"), str, None))
        except NotEvaluable:
            return None
        return group.inputs[number] if 0 <= number < len(group.inputs) else None

    def _upstream(
        self, node: Node, wanted: FrameRequests, disabled: bool
    ) -> list[tuple[Node, FrameRequests]]:
        """Which nodes ``node`` reads, and at which of their frames, for its own frames in
        ``wanted`` (each with the render frames that need it)."""
        inputs = node.inputs
        if disabled:
            first = inputs[0] if inputs else None
            return [(first, wanted)] if first is not None else []
        if node.cls == "Input":
            outside = self._group_input(node)
            return [(outside, wanted)] if outside is not None else []
        inside = self._outputs_inside(node)
        if inside or node.is_group() or id(node) in self._gizmo_nodes:
            return [(output, wanted) for output in inside]
        if node.cls == "Precomp":
            return []
        base = node.cls.rstrip("0123456789")
        timing = _TIMING.get(base)
        if timing is not None:
            first = inputs[0] if inputs else None
            if first is None:
                return []
            retimed = self._retimed(node, wanted, timing, first)
            found = [(first, retimed)]
            # FrameBlend's mask applies at the frame itself; VectorGenerator's matte helps the
            # motion estimation between the same frames as its source.
            extra = retimed if base == "VectorGenerator" else wanted
            found.extend((n, extra) for n in inputs[1:] if n is not None)
            return found
        if base == "AppendClip":
            return self._append_clip(node, wanted)
        if base == "ContactSheet" and node.flag("splitinputs"):
            return self._contact_sheet_frames(node, wanted)
        if base in ("Switch", "Dissolve"):
            return self._switch(node, wanted, base == "Dissolve")
        return [(n, wanted) for n in inputs if n is not None]

    def value_at(self, node: Node, knob: str, frame: int) -> float:
        """A numeric knob at a frame: literal, expression or its default."""
        raw = node.knobs.get(knob)
        if raw is None:
            raw = _knob_default(node.cls, knob) or ""
        return parse_number(raw, lambda ref: self.lookup(ref, node), frame)

    def _retimed(
        self, node: Node, wanted: FrameRequests, timing: Timing, upstream: Node
    ) -> FrameRequests:
        asked: FrameRequests = {}
        try:
            for frame, renders in wanted.items():
                for input_frame in timing(self, node, frame):
                    asked.setdefault(input_frame, set()).update(renders)
        except NotEvaluable as exc:
            return self._whole_range(node, wanted, upstream, exc.why)
        return asked

    def _whole_range(
        self, node: Node, wanted: FrameRequests, upstream: Node, why: str
    ) -> FrameRequests:
        """What a time node whose values need Nuke may read: its input's whole frame range
        (reported in ``unresolved``)."""
        renders = set().union(*wanted.values())
        found = self.frame_range(upstream)
        knobs = " ".join(f"{k} {v}" for k, v in node.knobs.items() if k not in _LAYOUT_KNOBS)
        if found is not None and found[1] - found[0] < MAX_RANGE_FRAMES:
            why = f"{why}; every frame of its input ({found[0]}-{found[1]}) is listed"
            asked = {f: set(renders) for f in range(found[0], found[1] + 1)}
        else:
            why = f"{why}; the frames are passed through unchanged"
            asked = {f: set(r) for f, r in wanted.items()}
        self.out.unresolved.append(Unresolved(f"{self.prefix}{node.path}", knobs[:200], why))
        return asked

    def _append_clip(self, node: Node, wanted: FrameRequests) -> list[tuple[Node, FrameRequests]]:
        """AppendClip: its inputs one after another from ``firstFrame``, the last
        ``cross_dissolve`` frames of each overlapping the next; outside, the ends hold."""
        clips = [n for n in node.inputs if n is not None]
        if not clips:
            return []
        asked: list[FrameRequests] = [{} for _ in clips]
        try:
            start = _whole_frame(self.value_at(node, "firstFrame", self.ctx.frames[0]))
            overlap = max(0, _whole_frame(self.value_at(node, "cross_dissolve", 0)))
            spans: list[tuple[int, int, int]] = []  # (output start, input first, length)
            for clip in clips:
                first, last = self.frame_range(clip) or self.root_range()
                spans.append((start, first, last - first + 1))
                start += max(1, last - first + 1 - overlap)
        except NotEvaluable as exc:
            return [(c, self._whole_range(node, wanted, c, exc.why)) for c in clips]
        for frame, renders in wanted.items():
            hits = [
                (index, first + frame - begin)
                for index, (begin, first, length) in enumerate(spans)
                if begin <= frame < begin + length
            ]
            if not hits:
                if frame < spans[0][0]:
                    hits = [(0, spans[0][1])]
                else:
                    _, first, length = spans[-1]
                    hits = [(len(spans) - 1, first + length - 1)]
            for index, input_frame in hits:
                asked[index].setdefault(input_frame, set()).update(renders)
        return [(clip, a) for clip, a in zip(clips, asked, strict=True) if a]

    def _contact_sheet_frames(
        self, node: Node, wanted: FrameRequests
    ) -> list[tuple[Node, FrameRequests]]:
        """ContactSheet with "Use frames instead of inputs" (``splitinputs``): "the FrameRange
        specified is read from each input" (``startframe``..``endframe``), whatever the frame
        (Foundry's ContactSheet reference)."""
        inputs = [n for n in node.inputs if n is not None]
        renders = set().union(*wanted.values())
        try:
            first = _whole_frame(self.value_at(node, "startframe", self.ctx.frames[0]))
            last = _whole_frame(self.value_at(node, "endframe", self.ctx.frames[0]))
            if abs(last - first) >= MAX_RANGE_FRAMES:
                raise NotEvaluable(f"frame range {first}-{last} is too long to list")
        except NotEvaluable as exc:
            return [(n, self._whole_range(node, wanted, n, exc.why)) for n in inputs]
        asked: FrameRequests = {f: renders for f in range(min(first, last), max(first, last) + 1)}
        return [(n, asked) for n in inputs]

    def _switch(
        self, node: Node, wanted: FrameRequests, dissolve: bool
    ) -> list[tuple[Node, FrameRequests]]:
        """Switch: the input ``which`` names (clamped to the inputs there are); Dissolve: the
        two inputs ``which`` lies between (its mask input, input 2, always). A ``which`` that
        needs Nuke reads every input."""
        inputs = list(node.inputs)
        mask = inputs[2] if dissolve and len(inputs) > 2 else None
        choices = [n for i, n in enumerate(inputs) if not (dissolve and i == 2)]
        if not choices:
            return []
        asked: list[FrameRequests] = [{} for _ in choices]
        try:
            for frame, renders in wanted.items():
                which = self.value_at(node, "which", frame)
                if not math.isfinite(which):
                    raise NotEvaluable(f"which is {which}")
                low = min(max(math.floor(which), 0), len(choices) - 1)
                high = min(max(math.ceil(which), 0), len(choices) - 1)
                picked = {low, high} if dissolve else {min(max(round(which), 0), len(choices) - 1)}
                for index in picked:
                    asked[index].setdefault(frame, set()).update(renders)
        except NotEvaluable as exc:
            raw = node.knobs.get("which", "")
            if "python" in raw:
                why = f"{exc.why}; every input is listed"
                self.out.unresolved.append(Unresolved(self.source(node, "which"), raw, why))
            asked = [dict(wanted) for _ in choices]
        found = [(n, a) for n, a in zip(choices, asked, strict=True) if n is not None and a]
        if mask is not None:
            found.append((mask, wanted))
        return found

    def root_range(self) -> tuple[int, int]:
        try:
            first = _whole_frame(parse_number(self._knob(self.root, "first_frame"), str, None))
            last = _whole_frame(parse_number(self._knob(self.root, "last_frame"), str, None))
        except NotEvaluable:
            return 1, 100
        return min(first, last), max(first, last)

    def frame_range(self, node: Node) -> tuple[int, int] | None:
        """The frame range a node's output has (Nuke's info range), as far as static values
        tell; None when it needs Nuke. Worked out upstream first, so a long chain of nodes
        costs no deep recursion."""
        key = id(node)
        if key in self._ranges:
            return self._ranges[key]
        pending = _downstream_first(
            [node], lambda n: [] if id(n) in self._ranges else self._graph_upstream(n)
        )
        for upstream in reversed(pending):
            if id(upstream) in self._ranges:
                continue
            self._ranges[id(upstream)] = None  # a loop in the graph has no range
            try:
                found = self._frame_range(upstream)
            except NotEvaluable:
                found = None
            self._ranges[id(upstream)] = found
        return self._ranges[key]

    def _frame_range(self, node: Node) -> tuple[int, int] | None:
        base = node.cls.rstrip("0123456789")
        inputs = [n for n in node.inputs if n is not None]
        upstream = self.frame_range(inputs[0]) if inputs else None
        if self._disable_knob(node):
            return upstream
        if node.cls in _READ_LIKE:
            first = self.frame_number(node, "first", "1")
            last = self.frame_number(node, "last", "1")
            mode = self.choice(node, "frame_mode", _FRAME_MODES)
            if mode == "startat":
                start = self.frame_number(node, "frame", "0")
                return start, start + last - first
            if mode == "offset":
                shift = self.frame_number(node, "frame", "0")
                return first + shift, last + shift
            return first, last
        if base == "TimeOffset" and upstream is not None:
            shift = _whole_frame(self.value_at(node, "time_offset", 0))
            return upstream[0] + shift, upstream[1] + shift
        if base == "FrameRange" and "first_frame" in node.knobs and "last_frame" in node.knobs:
            return (
                self.frame_number(node, "first_frame", "1"),
                self.frame_number(node, "last_frame", "1"),
            )
        if base == "TimeClip":
            return self._clip_range(node)
        if base == "Retime":
            return _retime_ranges(self, node)[1]
        if node.cls == "Input":
            outside = self._group_input(node)
            return self.frame_range(outside) if outside is not None else None
        inside = self._outputs_inside(node)
        if inside:
            return self.frame_range(inside[0])
        if base == "AppendClip" and inputs:
            start = _whole_frame(self.value_at(node, "firstFrame", 0))
            overlap = max(0, _whole_frame(self.value_at(node, "cross_dissolve", 0)))
            total = 0
            for clip in inputs:
                first, last = self.frame_range(clip) or self.root_range()
                total += max(1, last - first + 1 - overlap)
            return start, start + total + overlap - 1
        if not inputs:
            return self.root_range()
        ranges = [r for r in (self.frame_range(n) for n in inputs) if r is not None]
        if not ranges:
            return None
        return min(r[0] for r in ranges), max(r[1] for r in ranges)

    def _clip_range(self, node: Node) -> tuple[int, int]:
        default_first, default_last = self.root_range()
        first = self.frame_number(node, "first", str(default_first))
        last = self.frame_number(node, "last", str(default_last))
        return min(first, last), max(first, last)


def _tidy(path: str) -> str:
    """``a/b/../c`` -> ``a/c`` in absolute paths and URLs: TCL-built paths are often written
    that way, and object keys have no ``..``."""
    if "/." not in path:
        return path
    if is_url(path):
        return join_url(path, ".")
    if path.startswith("/") and not path.startswith("//"):
        return posixpath.normpath(path)
    return path


def _root_name(ctx: ResolveContext) -> str:
    """What ``[value root.name]`` gives on the farm: the script's path as the artist wrote it
    when the path map knows it, else the local path (``file://``) or the URL itself."""
    mapped = ctx.path_map.to_scene_path(ctx.scene_url)
    if mapped is not None:
        return mapped.replace("\\", "/")  # Nuke names scripts with forward slashes, even on Windows
    if split_url(ctx.scene_url)[0] == "file":
        return local_path_of(ctx.scene_url).as_posix()
    return ctx.scene_url


# -- frame mapping ---------------------------------------------------------------------------


def _whole_frame(value: float) -> int:
    """A frame number as Nuke's Read uses it: rounded down; absurd values are refused."""
    if not math.isfinite(value) or abs(value) > MAX_FRAME:
        raise NotEvaluable(f"{value} is not a usable frame number")
    return math.floor(value)


def held_frame(raw: int, first: int, last: int, before: str, after: str) -> int | None:
    """The file frame Nuke reads for ``raw`` given the node's range and before/after modes;
    None when the mode is ``black``."""
    if first <= raw <= last:
        return raw
    mode = before if raw < first else after
    length = last - first + 1
    if mode == "hold":
        return first if raw < first else last
    if mode == "loop":
        return first + (raw - first) % length
    if mode == "bounce":
        if length == 1:
            return first
        period = 2 * (length - 1)
        step = (raw - first) % period
        return first + (step if step < length else period - step)
    return None


def read_frame_map(resolver: ScriptResolver, node: Node) -> dict[int, list[int]]:
    """Render frame -> file frame for a Read-like node, inverted: {file frame: [render frames]}.
    Raises NotEvaluable when a knob it needs cannot be evaluated."""

    def lookup(ref: str) -> str:
        return resolver.lookup(ref, node)

    first = resolver.frame_number(node, "first", "1")
    last = resolver.frame_number(node, "last", "1")
    first, last = min(first, last), max(first, last)
    before = resolver.choice(node, "before", _HOLD_MODES)
    after = resolver.choice(node, "after", _HOLD_MODES)
    mode = resolver.choice(node, "frame_mode", _FRAME_MODES)
    frame_text = node.knobs.get("frame", "").strip()
    if frame_text.startswith("{") and frame_text.endswith("}"):
        frame_text = frame_text[1:-1].strip()
    mapping: dict[int, list[int]] = {}
    expression = compile_expression(frame_text) if mode == "expression" and frame_text else None
    shift = 0 if mode == "expression" else resolver.frame_number(node, "frame", "0")
    for frame in resolver.ctx.frames:
        if expression is not None:
            raw = _whole_frame(expression.evaluate(lookup, frame))
        elif mode == "startat":
            raw = frame - shift + first
        elif mode == "offset":
            raw = frame - shift
        else:
            raw = frame
        file_frame = held_frame(raw, first, last, before, after)
        if file_frame is not None:
            mapping.setdefault(file_frame, []).append(frame)
    return mapping


def write_frame_map(resolver: ScriptResolver, node: Node) -> dict[int, list[int]]:
    """Render frame -> the file frame a Write writes (and, reading, reads back), inverted:
    ``expression`` (``frame`` empty: the render frame) or ``offset`` (file frame = render
    frame + ``frame``, as Nuke's Write adds it). ``start at`` counts from the first frame of the
    Write's input, which needs Nuke: it raises NotEvaluable, as do knobs that cannot be
    evaluated."""
    mode = resolver.choice(node, "frame_mode", _FRAME_MODES)
    if mode == "startat":
        raise NotEvaluable("frame_mode 'start at' numbers files from the first frame of the input")
    frame_text = node.knobs.get("frame", "").strip()
    if frame_text.startswith("{") and frame_text.endswith("}"):
        frame_text = frame_text[1:-1].strip()
    expression = compile_expression(frame_text) if mode == "expression" and frame_text else None
    shift = resolver.frame_number(node, "frame", "0") if mode == "offset" else 0
    mapping: dict[int, list[int]] = {}

    def lookup(ref: str) -> str:
        return resolver.lookup(ref, node)

    for frame in resolver.ctx.frames:
        if expression is not None:
            file_frame = _whole_frame(expression.evaluate(lookup, frame))
        else:
            file_frame = _whole_frame(frame + shift)
        mapping.setdefault(file_frame, []).append(frame)
    return mapping


# -- the node graph --------------------------------------------------------------------------


def _merged(first: FrameRequests, second: FrameRequests) -> FrameRequests:
    """Both request maps in one new map (neither is changed)."""
    merged = dict(first)
    for frame, renders in second.items():
        known = merged.get(frame)
        merged[frame] = renders if known is None or known == renders else known | renders
    return merged


def _downstream_first(
    targets: Sequence[Node], upstream: Callable[[Node], list[Node]]
) -> list[Node]:
    """Every node reachable upstream of ``targets``, each after all the reached nodes that read
    from it (a reversed post-order; iterative, so deep graphs cannot exhaust the stack)."""
    order: list[Node] = []
    seen: set[int] = set()
    for target in targets:
        if id(target) in seen:
            continue
        seen.add(id(target))
        stack: list[tuple[Node, Iterator[Node]]] = [(target, iter(upstream(target)))]
        while stack:
            node, pending = stack[-1]
            for child in pending:
                if id(child) not in seen:
                    seen.add(id(child))
                    stack.append((child, iter(upstream(child))))
                    break
            else:
                stack.pop()
                order.append(node)
    order.reverse()
    return order


def _clip_frame(
    resolver: ScriptResolver, node: Node, frame: int, first: int, last: int
) -> int | None:
    """The input frame a Read-style clip (Read, TimeClip) shows at ``frame``: ``frame_mode``
    (expression, start at, offset), then ``before``/``after`` outside ``first``..``last``;
    None for ``black``."""
    mode = resolver.choice(node, "frame_mode", _FRAME_MODES)
    if mode == "expression":
        text = node.knobs.get("frame", "").strip()
        if text.startswith("{") and text.endswith("}"):
            text = text[1:-1].strip()
        raw = frame
        if text:
            expression = compile_expression(text)
            raw = _whole_frame(expression.evaluate(lambda ref: resolver.lookup(ref, node), frame))
    elif mode == "startat":
        raw = frame - resolver.frame_number(node, "frame", "0") + first
    else:
        raw = frame - resolver.frame_number(node, "frame", "0")
    before = resolver.choice(node, "before", _HOLD_MODES)
    after = resolver.choice(node, "after", _HOLD_MODES)
    return held_frame(raw, first, last, before, after)


def _time_offset(resolver: ScriptResolver, node: Node, frame: int) -> list[int]:
    """TimeOffset: input frame = frame - ``time_offset``; ``reverse_input`` plays the input's
    range backwards first."""
    shifted = _whole_frame(frame - resolver.value_at(node, "time_offset", frame))
    if resolver.knob_on(node, "reverse_input", frame):
        found = resolver.frame_range(node.inputs[0]) if node.inputs[0] is not None else None
        if found is None:
            raise NotEvaluable("reverse_input needs the input's frame range")
        shifted = found[0] + found[1] - shifted
    return [shifted]


def _frame_hold(resolver: ScriptResolver, node: Node, frame: int) -> list[int]:
    """FrameHold: ``first_frame`` at every frame, or with ``increment`` N every Nth frame
    from it (1, 6, 11 … for first_frame 1, increment 5)."""
    # Nuke 13 saves the "first frame" control as ``firstFrame``; older versions (and Foundry's
    # reference) call it ``first_frame``.
    saved_as_13 = "firstFrame" in node.knobs and "first_frame" not in node.knobs
    first = resolver.value_at(node, "firstFrame" if saved_as_13 else "first_frame", frame)
    step = _whole_frame(resolver.value_at(node, "increment", frame))
    if step <= 0:
        return [_whole_frame(first)]
    start = _whole_frame(first)
    return [start + math.floor((frame - start) / step) * step]


def _pass_through(resolver: ScriptResolver, node: Node, frame: int) -> list[int]:
    """FrameRange sets the range the clip reports; every frame still reads the same frame."""
    return [frame]


def _time_clip(resolver: ScriptResolver, node: Node, frame: int) -> list[int]:
    """TimeClip: Read's time controls on any input: ``frame_mode``/``frame``, ``first``/``last``
    (default: the project's range) with ``before``/``after``, and ``reverse``."""
    first, last = resolver._clip_range(node)
    found = _clip_frame(resolver, node, frame, first, last)
    if found is None:
        return []
    return [first + last - found if resolver.knob_on(node, "reverse", frame) else found]


def _retime_ranges(resolver: ScriptResolver, node: Node) -> tuple[tuple[int, int], tuple[int, int]]:
    """Retime's input range and output range: ``input.first``/``input.last`` (default: the
    input's range), ``output.first`` (default: input.first) and ``output.last`` (default: as
    long as ``speed`` makes it)."""
    upstream = node.inputs[0] if node.inputs else None
    found = resolver.frame_range(upstream) if upstream is not None else None
    in_first_default, in_last_default = found or resolver.root_range()
    in_first = resolver.frame_number(node, "input.first", str(in_first_default))
    in_last = resolver.frame_number(node, "input.last", str(in_last_default))
    out_first = resolver.frame_number(node, "output.first", str(in_first))
    if "output.last" in node.knobs:
        out_last = resolver.frame_number(node, "output.last", "1")
    else:
        speed = resolver.value_at(node, "speed", in_first)
        if speed <= 0:
            raise NotEvaluable(f"speed {speed} is not a forward speed")
        out_last = out_first + _whole_frame((in_last - in_first) / speed)
    return (in_first, in_last), (out_first, out_last)


def _retime(resolver: ScriptResolver, node: Node, frame: int) -> list[int]:
    """Retime: output.first..output.last shows input.first..input.last (both output ends
    locked: the ranges are matched; else at ``speed``), ``reverse`` runs it backwards,
    ``before``/``after`` hold, loop, bounce or go black outside; a frame between two input
    frames reads both (the default ``box`` filter blends them)."""
    (in_first, in_last), (out_first, out_last) = _retime_ranges(resolver, node)
    locked = node.flag("output.first_lock") and node.flag("output.last_lock")
    if locked and out_last != out_first:
        speed = (in_last - in_first) / (out_last - out_first)
    else:
        speed = resolver.value_at(node, "speed", frame)
    position = frame
    if frame < out_first or frame > out_last:
        mode = resolver.choice(node, "before" if frame < out_first else "after", _RETIME_MODES)
        if mode == "black":
            return []
        if mode != "continue":
            held = held_frame(frame, out_first, out_last, mode, mode)
            position = held if held is not None else frame
    if resolver.knob_on(node, "reverse", frame):
        source = in_last - (position - out_first) * speed
    else:
        source = in_first + (position - out_first) * speed
    if not math.isfinite(source) or abs(source) > MAX_FRAME:
        raise NotEvaluable(f"Retime reads frame {source}")
    filtered = node.knobs.get("filter", "box").strip().lower()
    if filtered in ("none", "nearest"):
        return [_whole_frame(round(source))]
    return sorted({math.floor(source), math.ceil(source)})


def _time_warp(resolver: ScriptResolver, node: Node, frame: int) -> list[int]:
    """TimeWarp: the input frame is its ``lookup`` value (unset: the frame itself); an
    animated lookup curve needs Nuke."""
    if "lookup" not in node.knobs:
        return [frame]
    source = resolver.value_at(node, "lookup", frame)
    return sorted({_whole_frame(math.floor(source)), _whole_frame(math.ceil(source))})


def _time_echo(resolver: ScriptResolver, node: Node, frame: int) -> list[int]:
    """TimeEcho merges ``framesbehind`` frames (default 1) "counting backwards from the
    current frame (and including the current frame)": 4 at frame 10 reads 7-10 (Foundry's
    TimeEcho reference)."""
    count = max(1, _whole_frame(resolver.value_at(node, "framesbehind", frame)))
    if count > MAX_FRAMES_PER_FRAME:
        raise NotEvaluable(f"framesbehind {count} is more frames than can be listed")
    return list(range(frame - count + 1, frame + 1))


def _frame_blend(resolver: ScriptResolver, node: Node, frame: int) -> list[int]:
    """FrameBlend (Foundry's reference): without Custom (``userange``) it blends "Number of
    frames-1 previous frames and the current frame" (``numframes``, default 5); with it, the
    ``numframes`` frames "evenly distributed across" ``startframe``..``endframe``, the same for
    every output frame (a position between two frames reads both)."""
    count = max(1, _whole_frame(resolver.value_at(node, "numframes", frame)))
    if count > MAX_FRAMES_PER_FRAME:
        raise NotEvaluable(f"numframes {count} is more frames than can be listed")
    if not resolver.knob_on(node, "userange", frame):
        return list(range(frame - count + 1, frame + 1))
    start = resolver.value_at(node, "startframe", frame)
    end = resolver.value_at(node, "endframe", frame)
    if not (math.isfinite(start) and math.isfinite(end)) or abs(end - start) > MAX_RANGE_FRAMES:
        raise NotEvaluable(f"FrameBlend range {start}-{end} cannot be listed")
    if count == 1:
        positions = [start]
    else:
        positions = [start + (end - start) * i / (count - 1) for i in range(count)]
    found: set[int] = set()
    for position in positions:
        found.update((_whole_frame(math.floor(position)), _whole_frame(math.ceil(position))))
    return sorted(found)


def _vector_generator(resolver: ScriptResolver, node: Node, frame: int) -> list[int]:
    """VectorGenerator outputs, for each frame, forward vectors (the next frame warped onto it)
    and backward vectors (the previous frame warped onto it) (Foundry's VectorGenerator
    reference): it reads the frames either side as well as the frame itself."""
    return [frame - 1, frame, frame + 1]


_TIMING: dict[str, Timing] = {
    "TimeEcho": _time_echo,
    "FrameBlend": _frame_blend,
    "VectorGenerator": _vector_generator,
    "TimeOffset": _time_offset,
    "FrameHold": _frame_hold,
    "FrameRange": _pass_through,
    "TimeClip": _time_clip,
    "Retime": _retime,
    "TimeWarp": _time_warp,
}
_RETIME_MODES = ("hold", "continue", "loop", "bounce", "black")


# -- one function per node class -------------------------------------------------------------


@_handles("Read", "DeepRead")
def _read(resolver: ScriptResolver, node: Node) -> Dependencies:
    return resolver.numbered_files(node, read_frame_map, tuple(_READ_DEFAULTS), "reads")


@_handles("ReadGeo", "ReadGeo2", "OCIOFileTransform", "AudioRead")
def _plain_file(resolver: ScriptResolver, node: Node) -> Dependencies:
    return resolver.files(node, "file")


@_handles(
    "Camera", "Camera2", "Camera3", "Camera4",
    "Axis", "Axis2", "Axis3", "Axis4",
    "Light", "Light2", "Light3", "Light4",
    "OCIOCDLTransform",
)  # fmt: skip
def _read_from_file(resolver: ScriptResolver, node: Node) -> Dependencies:
    """The ``file`` with ``read_from_file`` on, set or by expression (a gizmo's ReadGeo or
    Camera linked to its parent's checkbox); one that needs Nuke is reported and taken as on,
    so the file is listed."""
    try:
        reading = resolver.knob_on(node, "read_from_file", None)
    except NotEvaluable as exc:
        why = f"{exc.why}; taken as on, so the file is listed"
        raw = node.knobs.get("read_from_file", "")
        found = resolver.files(node, "file")
        found.unresolved.append(Unresolved(resolver.source(node, "read_from_file"), raw, why))
        return found
    if not reading:
        return Dependencies()
    return resolver.files(node, "file")


@_handles("ParticleCache")
def _particle_cache(resolver: ScriptResolver, node: Node) -> Dependencies:
    """ParticleCache reads its ``file`` (``.nkpc``) only with ``particle_cache_read_from_file``
    (default off; Foundry's ParticleCache reference), and then the sub-frame files Nuke wrote
    beside each frame (``particle_cache.0001.01.nkpc``...), whose names depend on what it
    rendered: reported, not listed. Its particle inputs are still computed either way."""
    if not node.flag("particle_cache_read_from_file"):
        return Dependencies()
    raw = node.knobs.get("file", "")
    if not raw.strip():
        return Dependencies()
    why = (
        "ParticleCache reads the cache files it rendered, sub-frames included "
        "(particle_cache.0001.01.nkpc), whose names need Nuke: they are not listed"
    )
    return Dependencies([], [Unresolved(resolver.source(node, "file"), raw, why)])


@_handles("Vectorfield")
def _vectorfield(resolver: ScriptResolver, node: Node) -> Dependencies:
    return resolver.files(node, "vfield_file")


@_handles("Write")
def _write(resolver: ScriptResolver, node: Node) -> Dependencies:
    """``reading true`` ("read file"): the Write's output is its rendered file, read back."""
    if not node.flag("reading"):
        return Dependencies()
    rendered = resolver.rendered_files(node)
    if _missing_frames(resolver, node, rendered) == "error":
        return rendered
    return _split_existing(resolver.ctx, rendered)[0]


@_handles("Precomp", "LiveGroup")
def _referenced_script(resolver: ScriptResolver, node: Node) -> Dependencies:
    out = resolver.files(node, "file")
    child = resolver.referenced(node, out)
    if child is None:
        return out
    if node.cls == "Precomp" and node.flag("reading"):
        out.extend(_precomp_read_back(node, child))
    else:
        out.extend(child.resolve())
    return out


def _precomp_read_back(precomp: Node, child: ScriptResolver) -> Dependencies:
    """A Precomp with ``reading true`` ("read file for output") reads the files its output
    Write rendered instead of computing the precomp script; with ``on_error`` ``read input``
    the script is still computed for the frames whose file is missing."""
    out = Dependencies()
    reading = f"{child.prefix}reading"
    try:
        write = precomp_output(precomp, child.script)
    except NotEvaluable as exc:
        why = f"{exc.why}; listing what the precomp script reads instead"
        out.extend(child.resolve())
        out.unresolved.append(Unresolved(reading, "true", why))
        return out
    rendered = child.rendered_files(write)
    try:
        mode = child.choice(precomp, "on_error", _MISSING_FRAMES)
    except NotEvaluable as exc:
        why = f"{exc.why}; treated as 'read input'"
        raw = precomp.knobs.get("on_error", "")
        out.unresolved.append(Unresolved(f"{child.prefix}on_error", raw, why))
        mode = "readinput"
    if mode == "error":
        out.extend(rendered)
    else:
        existing, missing = _split_existing(child.ctx, rendered)
        out.extend(existing)
        if mode == "readinput" and missing:
            ctx = replace(child.ctx, frames=tuple(sorted(missing)))
            computed = ScriptResolver(
                ctx, child.script, child.environ, child.visited, child.prefix, child.library
            )
            out.extend(computed.resolve())
    out.unresolved.extend(child.out.unresolved)  # what evaluating the Write's knobs reported
    return out


def precomp_output(precomp: Node, script: NukeScript) -> Node:
    """The Write whose files a reading Precomp shows: the one its ``output`` knob names (when
    ``use_output`` is on, or when the script has no Output node, which is when Nuke fills the
    knob in itself), else the script's only enabled Write. Raises NotEvaluable otherwise: which
    Write feeds the Output node needs the node graph."""
    named = precomp.knobs.get("output", "").strip()
    has_output = any(n.cls == "Output" and n.group is None for n in script.nodes)
    if named and (precomp.flag("use_output") or not has_output):
        node = script.top.get(named)
        if node is None or node.cls != "Write":
            raise NotEvaluable(f"the output node {named} is not a Write in the precomp script")
        return node
    writes = [n for n in script.nodes if n.cls == "Write" and not n.disabled()]
    if len(writes) != 1:
        raise NotEvaluable(
            f"the precomp script has {len(writes)} enabled Write nodes; which one it reads back "
            "needs the node graph"
        )
    return writes[0]


def _missing_frames(resolver: ScriptResolver, node: Node, out: Dependencies) -> str:
    """A Write's ``on_error`` (error, black, checkerboard, read input). One that cannot be
    evaluated is reported and treated as tolerating missing files."""
    try:
        return resolver.choice(node, "on_error", _MISSING_FRAMES)
    except NotEvaluable as exc:
        why = f"{exc.why}; only the rendered files that exist are listed"
        raw = node.knobs.get("on_error", "")
        out.unresolved.append(Unresolved(resolver.source(node, "on_error"), raw, why))
        return "black"


def _split_existing(ctx: ResolveContext, found: Dependencies) -> tuple[Dependencies, set[int]]:
    """The dependencies whose object exists (one listing per folder), and the frames that
    needed one that does not."""
    existing = Dependencies([], list(found.unresolved))
    missing: set[int] = set()
    for dep in found.deps:
        try:
            exists = url_basename(dep.url) in ctx.names_in_folder(url_dirname(dep.url))
        except (OSError, ValueError):
            exists = False
        if exists:
            existing.deps.append(dep)
        else:
            missing.update(dep.frames if dep.frames is not None else ctx.frames)
    return existing, missing


# -- gizmos ----------------------------------------------------------------------------------


def _may_be_gizmo(cls: str) -> bool:
    """Whether ``cls`` is not one of Nuke's own classes (nor an OFX plug-in) and so may be
    defined by a ``.gizmo`` on the plugin path."""
    if cls in _BUILTIN_CLASSES or cls.startswith("OFX"):
        return False
    if cls.rstrip("0123456789") in _BUILTIN_CLASSES:
        return False
    return _NODE_CLASS.fullmatch(cls) is not None


def search_path(value: str) -> list[str]:
    """The folders of a NUKE_PATH-style list: ``;``-separated when it has any ``;`` (Windows),
    else ``:``-separated, keeping URLs (``gs://b/x``) and drive letters (``C:/x``) whole."""
    if ";" in value:
        return [p.strip() for p in value.split(";") if p.strip()]
    parts = value.split(":")
    folders: list[str] = []
    index = 0
    while index < len(parts):
        part = parts[index]
        following = parts[index + 1] if index + 1 < len(parts) else None
        joins_url = following is not None and following.startswith("//") and part.isalnum()
        joins_drive = following is not None and len(part) == 1 and part.isalpha()
        if joins_url or (joins_drive and following and following[:1] in "/\\"):
            part = f"{part}:{following}"
            index += 1
        if part.strip():
            folders.append(part.strip())
        index += 1
    return folders


@dataclass(frozen=True)
class GizmoDefinition:
    """A ``.gizmo`` file found for a class: where it is, whether it comes from storage (a mapped
    folder or the script's own; then it is a dependency) and its parsed text."""

    path: str
    url: str
    listed: bool
    script: NukeScript


class GizmoLibrary:
    """Where ``<Class>.gizmo`` files are looked for: each folder of the gizmo path in order
    (first match wins, as on Nuke's plugin path), then the folder of the script using it. One
    listing per folder and one read per gizmo file, for the whole resolve."""

    def __init__(self, ctx: ResolveContext, folders: Sequence[str]) -> None:
        self.ctx = ctx
        self.folders: list[tuple[str, str, bool]] = []  # (as written, URL, from storage)
        for written in folders:
            written = written.strip().rstrip("/\\") or written.strip()
            if not written:
                continue
            try:
                url = ctx.map(written, node_local=True)  # the node's own NUKE_PATH, not the scene's
            except ValueError:
                continue
            listed = is_url(written) or ctx.path_map.is_mapped(written)
            self.folders.append((written, url.rstrip("/"), listed))
        self._found: dict[tuple[str, str], GizmoDefinition | str] = {}

    def find(self, cls: str, script_folder_url: str) -> GizmoDefinition | str:
        """The definition of ``cls``, or why there is none."""
        key = (cls, script_folder_url)
        found = self._found.get(key)
        if found is None:
            found = self._find(cls, script_folder_url)
            self._found[key] = found
        return found

    def _find(self, cls: str, script_folder_url: str) -> GizmoDefinition | str:
        name = f"{cls}.gizmo"
        places = [*self.folders, ("", script_folder_url, True)]
        for written, folder, listed in places:
            try:
                if name not in self.ctx.names_in_folder(folder):
                    continue
            except (OSError, ValueError):
                continue
            url = f"{folder}/{name}"
            path = f"{written}/{name}" if written else _scene_path(self.ctx, url)
            try:
                data = self.ctx.fetch(url).read_bytes()
            except (JitrenderError, OSError, ValueError) as exc:
                return f"cannot read {url}: {exc}"
            try:
                script = parse_script(decode_script(data, url), url)
            except SceneParseError as exc:
                return f"{name} is not a gizmo this resolver can read: {exc.message}"
            return GizmoDefinition(path, url, listed, script)
        where = ", ".join(w for w, _, _ in self.folders) or "empty"
        return (
            f"{cls} is not a node class Nuke ships, and no {name} was found on the gizmo path "
            f"({where}) or next to the script: the files it reads are not listed"
        )


def instantiate_gizmo(definition: NukeScript, instance: Node) -> tuple[Node, list[Node]]:
    """A node standing for ``instance`` (the gizmo's knobs, with the instance's values for
    user knobs, ``name`` and ``disable``) and copies of the gizmo's member nodes inside it, in
    script order; the instance's values for link knobs go to the member knobs they show.
    Raises NotEvaluable when the file holds no ``Gizmo``/``Group`` block."""
    top = next((n for n in definition.nodes if n.group is None and n.is_group()), None)
    if top is None:
        raise NotEvaluable("the .gizmo file has no Gizmo { } block")
    overridable = top.user_knobs | instance.user_knobs | {"name", "disable"}
    knobs = dict(top.knobs)
    braced = set(top.braced)
    for knob, value in instance.knobs.items():
        if knob in overridable:
            knobs[knob] = value
            if knob in instance.braced:
                braced.add(knob)
            else:
                braced.discard(knob)
    knobs["name"] = instance.name
    stand_in = Node(
        instance.cls,
        knobs,
        instance.group,
        instance.line,
        frozenset(braced),
        user_knobs=top.user_knobs | instance.user_knobs,
        numeric_knobs=top.numeric_knobs | instance.numeric_knobs,
        input_count=instance.input_count,
        inputs=list(instance.inputs),  # the gizmo's Input nodes read the instance's inputs
    )
    copies = {id(top): stand_in}
    members: list[Node] = []
    for node in definition.nodes:
        parent = copies.get(id(node.group)) if node.group is not None else None
        if parent is None:
            continue
        copy = Node(
            node.cls,
            node.knobs,
            parent,
            node.line,
            node.braced,
            {},
            node.user_knobs,
            node.links,
            node.input_count,
            [copies.get(id(i)) if i is not None else None for i in node.inputs],
            node.numeric_knobs,
        )
        parent.members[copy.name] = copy
        copies[id(node)] = copy
        members.append(copy)
    # A link knob (``{41 plate T Read1.file}``) shows a member's knob: the instance's value for
    # it is that member's value.
    for knob, target in top.links.items():
        if knob not in instance.knobs:
            continue
        *path, member_knob = target.split(".")
        member: Node | None = stand_in
        for name in path:
            member = member.members.get(name) if member is not None else None
        if member is None or member is stand_in or not member_knob:
            continue
        member.knobs = {**member.knobs, member_knob: instance.knobs[knob]}
        linked = {member_knob} if knob in instance.braced else set()
        member.braced = (member.braced - {member_knob}) | linked
    return stand_in, members


def _scene_path(ctx: ResolveContext, url: str) -> str:
    """How the artist would write ``url``: through the path map, else the local path
    (``file://``) or the URL itself."""
    mapped = ctx.path_map.to_scene_path(url)
    if mapped is not None:
        return mapped
    if split_url(url)[0] == "file":
        return local_path_of(url).as_posix()
    return url


def resolve_nuke_script(
    ctx: ResolveContext, *, gizmo_path: Sequence[str] | None = None
) -> Dependencies:
    """Every file the context's frames of a Nuke script read, merged one entry per URL.
    ``gizmo_path``: the folders (as the artist writes them) holding ``<Class>.gizmo`` files;
    default: the folders on ``NUKE_PATH``."""
    try:
        data = ctx.scene_file.read_bytes()
    except OSError as exc:
        raise SceneParseError(f"{ctx.scene_url}:1:1: cannot read the script: {exc}") from None
    environ = {**os.environ, **ctx.env}  # the job's env: is what Nuke will run with
    if gizmo_path is None:
        gizmo_path = search_path(environ.get("NUKE_PATH", ""))
    script = parse_script(decode_script(data, ctx.scene_url), ctx.scene_url)
    gizmos = GizmoLibrary(ctx, gizmo_path)
    resolver = ScriptResolver(ctx, script, environ, frozenset({ctx.scene_url}), "", gizmos)
    return resolver.resolve().merged()


@register("nuke", ".nk", ".nknc")
def resolve_nuke(ctx: ResolveContext) -> Dependencies:
    """Every file the context's frames of a Nuke script read, merged one entry per URL
    (gizmos are looked for on ``NUKE_PATH``)."""
    return resolve_nuke_script(ctx)


__all__ = [
    "GizmoDefinition",
    "GizmoLibrary",
    "ScriptResolver",
    "held_frame",
    "instantiate_gizmo",
    "precomp_output",
    "read_frame_map",
    "resolve_nuke",
    "resolve_nuke_script",
    "search_path",
    "write_frame_map",
]
