"""The Nuke resolver on 22 public scripts nobody on this team wrote (``../shared/corpus/nuke``),
through ``jitrender deps --json`` against a bucket on file:// and on a real GCS API server.

There are no images: each case builds a bucket of small stand-in files for every frame of every
sequence the script names (plus decoy frames outside the range Nuke reads), every single file
it names (read by a render or not: files that only feed a Viewer or a disabled Write are decoys
too), and the outputs its Writes would make. The expected set is worked out here from Foundry's
documented semantics, by hand, per case (the comments say why each file is or is not read):

- a render reads what is upstream of the Writes that render (every enabled Write); Reads that
  feed only Viewers, disabled Writes or nothing are not read; a script with no Write at all (a
  toolset) renders nothing with ``nuke -x``, so jitrender lists every enabled file-reading node;
- a Read shows file frame ``frame`` inside ``first``..``last`` (omitted: 1 and 1) and holds the
  first/last frame outside them (``before``/``after`` default ``hold``);
- a movie or still is one file for every frame; Writes' files are outputs, never inputs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import put_object

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / ".." / "shared" / "corpus" / "nuke" / "cases"

pytestmark = pytest.mark.skipif(
    not CORPUS.is_dir(), reason=f"the public Nuke corpus is not at {CORPUS} (../shared/corpus)"
)


@dataclass(frozen=True)
class Sequence:
    """A numbered sequence in the bucket: ``pattern`` (bucket-relative, ``####`` or ``%04d``)
    with frames ``first``..``last`` as the script's Read knows them; the bucket also holds
    ``decoys`` frames on each side, which a hold never reads."""

    pattern: str
    first: int
    last: int
    decoys: int = 3

    def name(self, frame: int) -> str:
        return self.pattern.replace("####", f"{frame:04d}").replace("%04d", f"{frame:04d}")

    def stand_ins(self) -> list[str]:
        return [self.name(f) for f in range(self.first - self.decoys, self.last + self.decoys + 1)]

    def held(self, frames: list[int]) -> set[str]:
        """What a Read with this range and before/after ``hold`` reads for ``frames``."""
        return {self.name(min(max(f, self.first), self.last)) for f in frames}


@dataclass(frozen=True)
class Case:
    script: str  # the corpus file
    scene_at: str  # where the script goes in the bucket
    frames: list[int]
    # The files a render of ``frames`` reads (bucket-relative); every other file is a decoy.
    expected: Callable[[list[int]], set[str]]
    path_map: dict[str, str] = field(default_factory=dict)  # scene prefix -> bucket folder
    files: tuple[str, ...] = ()  # single files in the bucket (read or decoys)
    sequences: tuple[Sequence, ...] = ()
    copies: dict[str, str] = field(default_factory=dict)  # corpus file -> bucket path
    local_gizmos: tuple[str, ...] = ()  # corpus .gizmo files on a farm-local NUKE_PATH
    unresolved: frozenset[str] = frozenset()  # the sources whose entries need Nuke itself


def fixed(*names: str) -> Callable[[list[int]], set[str]]:
    return lambda frames: set(names)


def frames(spec: str) -> list[int]:
    first, _, last = spec.partition("-")
    return list(range(int(first), int(last or first) + 1))


# -- the cases -------------------------------------------------------------------------------

MULTI = Sequence("mls/some_exrs_####.exr", 50, 100)
MULTI_JPG = Sequence("mls/input_seq_####.jpg", 1, 10)
NP_SEQ = Sequence("np/file.####.exr", 1, 1, decoys=4)
CAM_PLATE = Sequence(
    "X/AW/ARMW-16-003_Innocean_Photogramity_Test/work/s04_Turn/img/plate/maya_plates/EXR/"
    "s04_bkg.####.exr",
    1220,
    1366,
)
CAM_BEAUTY = Sequence(
    "X/AW/ARMW-16-003_Innocean_Photogramity_Test/work/s04_Turn/img/ren/v04/G90_Main_Beauty/"
    "G90_G90_Main_Beauty_####.exr",
    1220,
    1366,
)
CAM_SPORT = Sequence(
    "X/Innocean/INNO-17-026_2018_G80_CG_Assets/work/s01_360/img/ren/v04/Sport/g80_Sport_####.exr",
    1,
    36,
)
CAM_HDRI = Sequence(
    "X/Innocean/INNO-17-036_2018_Elantra_Ext_HDRI_360-180_frames/work/s01_HDRI-360/img/ren/v01/"
    "ValueEdition/Elantra_ValueEdition_####.exr",
    1,
    180,
)
CAM_STILLS = (
    "D/rbobo/Dropbox/richbobo/NUKE/IMAGES/FLOWERS/Flowering-Bushes-1.jpg",
    "X/Chobani/CHOB-17-005_Chobani_Drinks-Spring_2017/work/chobani/_common/img/comp/"
    "apple_cucumber/v001/apple_cucumber_drink_v001_FULL.psd",
    "Users/richbobo/Dropbox/richbobo/NUKE/Photoshop_and_Nuke/ACES_WORKFLOW/dfulmer/elantra_test/"
    "red_q50_0000.exr",
    "Users/richbobo/Dropbox/richbobo/NUKE/Photoshop_and_Nuke/ACES_WORKFLOW/dfulmer/elantra_test/"
    "white.exr",
)
TLX_ROOT = "X/Misc/POSS-18-001_2019_2TX_Build_and_Price_Assets/work/common/img/comp/v04"
TLX_COLOURS = [
    *("ApexBluePearl", "CanyonBronzeMetallic", "LunarSilverMetallic", "MajesticBlackPearl"),
    *("ModernSteelMetallic", "PerformanceRedPearl", "PlatinumWhitePearl"),
]
TLX_TRIMS = {"Base": "Base", "Premium": "Premium", "Premium_A-SPEC": "Premium_A_Spec"}
TLX_TRIMS |= {"Tech": "Tech", "Tech_A-SPEC": "Tech_A_SPEC"}
TLX = tuple(
    [
        Sequence(f"{TLX_ROOT}/{trim}/{c}/{c}_####.png", 1, 8)
        for trim in TLX_TRIMS
        for c in TLX_COLOURS
    ]
    + [
        Sequence(f"{TLX_ROOT}/{trim}/Interior/{name}_####.png", 1, 8)
        for trim, name in TLX_TRIMS.items()
    ]
    + [Sequence(f"{TLX_ROOT}/Glass/Glass_####.png", 1, 8)]
    + [Sequence(f"{TLX_ROOT}/Shadow/Shadow_####.png", 1, 8)]
)
SGS_OCIO = "isln/OCIO_Configs/aw_Comp_aces_1.0.3/aw_Comp_config.ocio"
SGS_MAP = {"//isln-smb.ad.sgsco.int/library": "isln", "X:/": "X", "D:/": "D"}
SGS_MAP |= {"/Users/richbobo": "Users/richbobo"}
SMOKE_EXR = tuple(
    Sequence(f"Z/Render/SC_042/{name}/{name}.####.exr", 1, 74)
    for name in ("QQFC_sc042_BG", "sc_042_BG_B", "sc_042_CH_A", "sc_042_CH_head")
)
SMOKE_MOVIES = tuple(
    f"Y/images/QQFC2017/sc_043/fx/sc_043/{name}.mp4"
    for name in (
        "random_fire_extinguisher_from_right_02",
        "sucai/fire_smoke_from_background_to_fullscreen_01",
        "sucai/vapours_from_bottom_02",
        "vapours_from_bottom_04",
        "vapours_from_bottom_05",
    )
)
# The artist's folder keeps its '@' in the bucket: a literal character in Nuke paths.
BOX = "Box Sync/CODE_aw_projects (Rich.Bobo@armstrong-white.com)"
BOX_MAP = {f"C:/Users/rbobo/{BOX}": BOX}
REINHARD = f"{BOX}/aw_projects/Reinhard_Preview_Tools/Nuke_Scripts"
PSD_READS = (
    "Users/richbobo/Dropbox/richbobo/NUKE/Photoshop_and_Nuke/img/comp/apple_cucumber/v001/"
    "apple_cucumber_drink_v001.exr",
    "D/rbobo/Dropbox/richbobo/NUKE/Photoshop_and_Nuke/ACES_WORKFLOW/dfulmer/elantra_test/"
    "red_q50_0000.exr",
    "D/rbobo/Dropbox/richbobo/NUKE/Photoshop_and_Nuke/ACES_WORKFLOW/dfulmer/elantra_test/white.exr",
)

CASES: dict[str, Case] = {
    # No Write: every enabled Read is listed; [file dirname [value root.name]] is the artist's
    # folder (W:/…, a Windows rule) with forward slashes, mapped back into the bucket. The
    # CryptomatteMulti gizmo is not redistributable, so its instances are unresolved.
    "crypto_example": Case(
        "crypto_example/example.nk",
        "crypto/sample_images/example.nk",
        frames("1-3"),
        fixed(
            *(
                f"crypto/sample_images/{n}.exr"
                for n in ("bunny_CryptoObject", "bunny_CryptoAsset", "bunny_CryptoMaterial")
            ),
            "crypto/sample_images/testGrid_CryptoObject.exr",
        ),
        path_map={"W:/development/cryptommittee/public_repo": "crypto"},
        files=(
            *(
                f"crypto/sample_images/{n}.exr"
                for n in ("bunny_CryptoObject", "bunny_CryptoAsset", "bunny_CryptoMaterial")
            ),
            "crypto/sample_images/testGrid_CryptoObject.exr",
            "crypto/sample_images/bunny_CryptoObject.0001.exr",  # decoy: no frame token
        ),
        unresolved=frozenset({"CryptomatteMulti1", "CryptomatteMulti2"}),
    ),
    # ColorBars -> Write: nothing is read (the Write's own output is not an input).
    "dl_cwd_path": Case(
        "dl_cwd_path/cwd-path.nk",
        "cwd/cwd-path.nk",
        frames("1-3"),
        fixed(),
        files=("cwd/output_0001.exr", "cwd/output_0002.exr"),
    ),
    "dl_frame": Case(
        "dl_frame/frame.nk",
        "frame/scene/frame.nk",
        frames("3-7"),
        fixed(),
        files=("frame/scene/ColorBars.png",),
    ),
    # No Write: the Read inside Group1 (Deadline's own expected asset).
    "dl_group_read": Case(
        "dl_group_read/group-read.nk",
        "group-read/scene/group-read.nk",
        frames("1-3"),
        fixed("group-read/scene/colorbars.png"),
        files=("group-read/scene/colorbars.png", "group-read/colorbars.png"),
    ),
    # Read2 (50-100) and Read1 (1-10) merge into Write3; Write1/Write2 read Constant/Noise.
    # Frames 1-100 read 51 + 10 = 61 files: exactly Deadline's golden list for this script.
    "dl_multi_load_save": Case(
        "dl_multi_load_save/multi-load-save.nk",
        "mls/multi-load-save.nk",
        frames("1-100"),
        lambda fs: MULTI.held(fs) | MULTI_JPG.held(fs),
        sequences=(MULTI, MULTI_JPG),
        files=(
            "mls/output/output_0001.png",
            "mls/more_output_0001.exr",
            "mls/third_output_0001.png",
        ),
    ),
    "dl_noise_saver": Case(
        "dl_noise_saver/noise-saver.nk",
        "noise/noise-saver.nk",
        frames("1-5"),
        fixed(),
        files=("noise/output/output_0001.png",),
    ),
    # The Root's custom OCIO config (absolute path, mapped); the config names no LUT files.
    "dl_ocio": Case(
        "dl_ocio/ocio.nk",
        "ocio/scene/ocio.nk",
        frames("1-3"),
        fixed("ocio/scene/config.ocio"),
        path_map={"/home/rocky/src/deadline-cloud-for-nuke/job_bundle_output_tests/ocio": "ocio"},
        copies={"dl_ocio/config.ocio": "ocio/scene/config.ocio"},
        files=("ocio/scene/output/output_0001.png",),
    ),
    "dls_motionblur3d": Case(
        "dls_motionblur3d/motionblur3d_10.nk", "mb/motionblur3d_10.nk", frames("1-3"), fixed()
    ),
    # The Flow groups' CACHE Reads and WriteWATER Writes use the group's cache knob, which
    # the toolset leaves unset: an unset file knob is empty, so nothing is read.
    "jed_flow_examples": Case(
        "jed_flow_examples/flow_examples.nk", "flow/flow_examples.nk", frames("1-3"), fixed()
    ),
    # The OCIOFileTransform's output feeds nothing (the BlinkScript reads the Dot before it),
    # so its .3dl is a decoy; the Writes and GenerateLUT write, never read.
    "jed_lutapply": Case(
        "jed_lutapply/LUTApply.nk",
        "blink/scripts/LUTApply.nk",
        frames("1-3"),
        fixed(),
        path_map={"/Volumes/BOOTCAMP/work/client/hpd/code/public/general/blink": "blink"},
        files=(
            "blink/scripts/exampleGrade.3dl",
            "blink/LUTApply.blink",
            "blink/scripts/LUTApply_identity.jpg",
            "blink/scripts/LUTApply_exampleGrade.3dl",
        ),
    ),
    # A toolset whose Write and Reformat disable on knobs it never defines: Nuke decides.
    "jed_precompwrite": Case(
        "jed_precompwrite/PrecompWrite.nk",
        "precomp/PrecompWrite.nk",
        frames("1-3"),
        fixed(),
        unresolved=frozenset({"PrecompWrite.write_exr.disable", "PrecompWrite.BboxRemove.disable"}),
    ),
    # No Write; Read1 and DeepRead1 without first/last read frame 1 (Nuke's defaults) always.
    "np_fix_node_class": Case(
        "np_fix_node_class/fix_node_class_matching.nk",
        "np/worksspace.nk",
        frames("1001-1003"),
        fixed("np/file.0001.exr"),
        path_map={"/path/to": "np"},
        sequences=(NP_SEQ,),
    ),
    "np_nested_group": Case(
        "np_nested_group/nested_group.nk", "np/nested_group.nk", frames("1-3"), fixed()
    ),
    # Write1 renders the UV editor groups, which read the Alembic (relative to the script).
    "nst_uveditor": Case(
        "nst_uveditor/NST_UVEditor_demo_clean.nk",
        "nst/NST_UVEditor_demo_clean.nk",
        frames("1001-1003"),
        fixed("nst/Trex_UVtile_skin.abc"),
        files=("nst/Trex_UVtile_skin.abc", "nst/Trex_UVtile_skin.obj"),
    ),
    # No Write: every Read. 1220-1366 plates at 1230-1232; g80 Sport (1-36) and Elantra
    # (1-180) hold their last frame; four stills.
    "sgs_camera_locked": Case(
        "sgs_camera_locked/Camera_Locked_to_Background_v005_x006.nk",
        "D/rbobo/Dropbox/CODE_aw_projects/aw_projects/Image_Locked_To_Camera/Nuke_Scripts/"
        "Camera_Locked_to_Background_v005_x006.nk",
        frames("1230-1232"),
        lambda fs: (
            set(CAM_STILLS)
            | CAM_PLATE.held(fs)
            | CAM_BEAUTY.held(fs)
            | CAM_SPORT.held(fs)
            | CAM_HDRI.held(fs)
        ),
        path_map=SGS_MAP,
        files=CAM_STILLS,
        sequences=(CAM_PLATE, CAM_BEAUTY, CAM_SPORT, CAM_HDRI),
    ),
    # Every Write is disabled: no Read is read (they are decoys here); the Root's OCIO config
    # is still needed to load the script. PSDMerge is a studio gizmo that is not public.
    "sgs_psd_views_proxy": Case(
        "sgs_psd_views_proxy/Save_PSD_From_Nuke_v012_x001_Views_PC.nk",
        f"{BOX}/aw_projects/NukePSD/Nuke_Scripts/Save_PSD_From_Nuke_v012_x001_Views_PC.nk",
        frames("1-1"),
        fixed(SGS_OCIO),
        path_map={**SGS_MAP, **BOX_MAP},
        copies={"sgs_psd_views_proxy/aw_Comp_config_standin.ocio": SGS_OCIO},
        files=PSD_READS,
        unresolved=frozenset({"PSDMerge1", "PSDMerge2", "PSDMerge3"}),
    ),
    # Read1/Read2 feed only Viewer1: not read. Write1 renders generated images.
    "sgs_reinhard_at_path": Case(
        "sgs_reinhard_at_path/Reinhard_Vray_TESTING_v001_x037.nk",
        f"{REINHARD}/Reinhard_Vray_TESTING_v001_x037.nk",
        frames("1-3"),
        fixed(SGS_OCIO),
        path_map={**SGS_MAP, **BOX_MAP},
        copies={"sgs_reinhard_at_path/aw_Comp_config_standin.ocio": SGS_OCIO},
        files=(
            f"{REINHARD}/footage/Desktop/Linear-vs-Reinhard.png",
            f"{REINHARD}/footage/MGD8630HC_Knob/__MGD8630HC_Knob_0001.exr",
            f"{REINHARD}/footage/luts___dupe_1/AW_Reinhard_Vray.3dl",
        ),
    ),
    # No Write; the two logo Reads disable on [python os.name …]: reported, listed both.
    "sgs_slate_os_switch": Case(
        "sgs_slate_os_switch/slate.nk",
        "slate/slate.nk",
        frames("1-3"),
        fixed(
            "N/AW_Resources/AW_Logos/AW_Logo_over_black.tif",
            "Arc/AW_Resources/AW_Logos/AW_Logo_over_black.tif",
        ),
        path_map={"N:/Common": "N", "/Volumes/Arc/Common": "Arc"},
        files=(
            "N/AW_Resources/AW_Logos/AW_Logo_over_black.tif",
            "Arc/AW_Resources/AW_Logos/AW_Logo_over_black.tif",
        ),
        unresolved=frozenset(
            {"Slate.Read_MAC_OSX_PATH.disable", "Slate.Read_WINDOWS_PATH.disable"}
        ),
    ),
    # No Write: 42 eight-frame sequences (first omitted: 1), frames 6-10 hold at 8.
    "sgs_tlx_42_sequences": Case(
        "sgs_tlx_42_sequences/tlx_v2_EDITED.nk",
        f"{BOX}/aw_projects/NukePSD/Nuke_Scripts/_From_Roger/tlx_v2_EDITED.nk",
        frames("6-10"),
        lambda fs: {SGS_OCIO}.union(*(s.held(fs) for s in TLX)),
        path_map={**SGS_MAP, "X:/Misc": "X/Misc"},
        copies={"sgs_tlx_42_sequences/aw_Comp_config_standin.ocio": SGS_OCIO},
        sequences=TLX,
    ),
    # Text -> Write (its file is an output); nothing is read.
    "wlf_simple_write": Case(
        "wlf_simple_write/simple_write.nk", "wlf/simple_write.nk", frames("1-3"), fixed()
    ),
    # No Write: four 1-74 EXR sequences and five movies; the camera does not read its FBX
    # (read_from_file is off); DepthFix comes from a farm-local NUKE_PATH, so is no dependency.
    "wlf_smoke": Case(
        "wlf_smoke/smoke.nk",
        "wlf/FX/smoke.nk",
        frames("73-76"),
        lambda fs: set(SMOKE_MOVIES).union(*(s.held(fs) for s in SMOKE_EXR)),
        path_map={"Z:/QQFC2017": "Z", "Y:/QQFC_2017": "Y"},
        files=(*SMOKE_MOVIES, "Z/Render/cam/sc_042_001_074.fbx"),
        sequences=SMOKE_EXR,
        local_gizmos=("wlf_smoke/DepthFix.gizmo",),
    ),
    # No Root, no Write: the matte painting and the Vectorfield's LUT (Windows paths are
    # case-insensitive: z:/snjyw and Z:/SNJYW are one folder).
    "wlf_snjyw_mp": Case(
        "wlf_snjyw_mp/SNJYW_EP14_MP.nk",
        "Z/MP/SNJYW_EP14_MP.nk",
        frames("1-3"),
        fixed("Z/mp/ep09/sky_01_v4.jpg", "Z/Render/EP14/lut/01_sc022_mp.vf"),
        path_map={"Z:/SNJYW": "Z"},
        files=("Z/mp/ep09/sky_01_v4.jpg", "Z/Render/EP14/lut/01_sc022_mp.vf"),
    ),
}


# -- running one case ------------------------------------------------------------------------


def build_bucket(bucket: str, case: Case) -> set[str]:
    """Put the script, its companions and every stand-in file into ``bucket``; returns the
    bucket-relative names of the stand-ins."""
    names = set(case.files) | {n for s in case.sequences for n in s.stand_ins()}
    uploads = [(f"{bucket}/{n}", b"x") for n in sorted(names)]
    uploads.append((f"{bucket}/{case.scene_at}", (CORPUS / case.script).read_bytes()))
    uploads += [(f"{bucket}/{to}", (CORPUS / src).read_bytes()) for src, to in case.copies.items()]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda item: put_object(*item), uploads))
    return names


def jitrender_deps(bucket: str, case: Case, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-m", "jitrender.cli", "deps", f"{bucket}/{case.scene_at}"]
    args += ["--frames", f"{case.frames[0]}-{case.frames[-1]}", "--json"]
    args += ["--cache-dir", str(tmp_path / "cache")]
    for source, folder in case.path_map.items():
        args += ["--path-map", f"{source}={bucket}/{folder}"]
    env = dict(os.environ)
    env.pop("NUKE_PATH", None)
    if case.local_gizmos:
        local = tmp_path / "site_gizmos"
        local.mkdir()
        for gizmo in case.local_gizmos:
            (local / Path(gizmo).name).write_bytes((CORPUS / gizmo).read_bytes())
        env["NUKE_PATH"] = str(local)
    return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=REPO, env=env)


def check_case(bucket: str, name: str, tmp_path: Path) -> None:
    case = CASES[name]
    build_bucket(bucket, case)
    result = jitrender_deps(bucket, case, tmp_path)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    listed = {d["url"] for d in document["deps"]}
    expected = {f"{bucket}/{n}" for n in case.expected(case.frames)}
    assert listed - expected == set(), "listed but never read"
    assert expected - listed == set(), "read but not listed"
    assert document["missing"] == []
    assert {u["source"] for u in document["unresolved"]} == set(case.unresolved)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_corpus_script_lists_exactly_what_its_render_reads_on_file_bucket(
    name: str, local_bucket: str, tmp_path: Path
) -> None:
    check_case(local_bucket, name, tmp_path)


# On the GCS API server: one case per kind of thing (sequences and holds, a Windows root.name
# rule, an OCIO config, disabled Writes with decoy Reads, [python] disables, a farm-local gizmo,
# geometry through groups); file:// runs them all.
GCS_CASES = (
    "crypto_example",
    "dl_multi_load_save",
    "dl_ocio",
    "nst_uveditor",
    "sgs_psd_views_proxy",
    "sgs_slate_os_switch",
    "wlf_smoke",
)


@pytest.mark.slow
@pytest.mark.parametrize("name", GCS_CASES)
def test_corpus_script_lists_exactly_what_its_render_reads_on_gcs(
    name: str, gcs_bucket: str, tmp_path: Path
) -> None:
    check_case(gcs_bucket, name, tmp_path)


def test_every_corpus_case_has_expectations() -> None:
    assert sorted(CASES) == sorted(p.name for p in CORPUS.iterdir() if p.is_dir())


def test_hand_checked_urls_of_a_few_cases() -> None:
    """Pinned by hand, independently of the Sequence helper."""
    assert CASES["dl_multi_load_save"].expected(frames("1-3")) == {
        "mls/some_exrs_0050.exr",
        "mls/input_seq_0001.jpg",
        "mls/input_seq_0002.jpg",
        "mls/input_seq_0003.jpg",
    }
    assert len(CASES["dl_multi_load_save"].expected(frames("1-100"))) == 61  # Deadline's golden
    assert CASES["sgs_camera_locked"].expected([1230]) == {
        *CAM_STILLS,
        f"{CAM_PLATE.pattern.replace('####', '1230')}",
        f"{CAM_BEAUTY.pattern.replace('####', '1230')}",
        f"{CAM_SPORT.pattern.replace('####', '0036')}",
        f"{CAM_HDRI.pattern.replace('####', '0180')}",
    }
    tlx = CASES["sgs_tlx_42_sequences"].expected([6, 10])
    assert len(tlx) == 1 + 42 * 2
    assert f"{TLX_ROOT}/Glass/Glass_0008.png" in tlx
    assert f"{TLX_ROOT}/Glass/Glass_0009.png" not in tlx
