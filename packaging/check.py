"""Build the Linux installers and check them as a user gets them; check the other OSes' sources compile.

    .venv/bin/python packaging/check.py      (as root where Debian packages are missing)

Installs what it lacks (Debian packages, the `package` extra), builds the bundle, .deb and .rpm with
build.py, unpacks the .deb into a scratch root and runs the frozen app from it: `--version`, a headless node
answering `GET /` and `/api/version`, and the tray app docking in a tray under Xvfb. The Windows installer
script is compiled around a stand-in app and the macOS Info.plist checked, so neither can rot unseen. Ends
by printing the sizes and start times (`python -m bench.package`). Exits non-zero on the first failure.
"""

from __future__ import annotations

import importlib
import os
import plistlib
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

from smoke import ROOT, check_headless, check_version, fail

# The repository's helpers for running processes and a virtual display with a tray; smoke puts the
# repository on the path.
from tests.support import process_output, start_fake_ollama_process, start_process, stop_process
from tests.ui.display import app_args, virtual_desktop, windows

# packaging/build.py, beside this file. Imported by name, not by an import statement, which linters would
# sort differently depending on whether PyInstaller's build/ folder exists.
build = importlib.import_module("build")

# The Debian package that brings each command the check and the build use.
_TOOLS = {
    "readelf": "binutils",  # PyInstaller reads binaries with binutils too
    "makensis": "nsis",
    "rpm": "rpm",
    "desktop-file-validate": "desktop-file-utils",
    "Xvfb": "xvfb",
    "trayer": "trayer",
    "xwininfo": "x11-utils",
}
_DOCKED = '"InferHub": ("inferhub" "InferHub")'
# Qt says this when a plugin or a library it wants is not in the bundle.
_QT_LOAD_FAILURE = re.compile(r"Could not (load|find)|cannot load library|failed to load", re.IGNORECASE)


def step(title: str) -> None:
    print(f"== {title}", flush=True)


def run(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command, failing the check with its output if it fails."""
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False, env=env)
    if result.returncode != 0:
        fail(f"{' '.join(map(str, args))} exited {result.returncode}:\n{result.stdout}{result.stderr}")
    return result


def installed(package: str) -> bool:
    query = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True, check=False
    )
    return "ok installed" in query.stdout


def apt_install(packages: list[str]) -> None:
    """Install the Debian packages that are missing."""
    missing = sorted({p for p in packages if not installed(p)})
    if not missing:
        return
    if os.geteuid() != 0:
        fail(f"missing Debian packages {', '.join(missing)}: run as root, or apt-get install them")
    print(f"installing {', '.join(missing)}", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run("apt-get", "update", "-qq", env=env)
    run("apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing, env=env)


def depends(deb: Path) -> list[str]:
    """Return the package names in a .deb's Depends, without their versions."""
    field = run("dpkg-deb", "--field", deb, "Depends").stdout
    return [re.sub(r"\s*\(.*\)", "", item).strip() for item in field.split(",") if item.strip()]


def check_system_libraries(bundle: Path, deb: Path) -> None:
    """Check every library the bundle takes from the OS is found here and comes from a package in Depends."""
    wanted = set(depends(deb))
    for soname in sorted(build.linux_system_libraries(bundle)):
        owners = subprocess.run(["dpkg", "-S", f"*/{soname}"], capture_output=True, text=True, check=False)
        packages = {line.split(":")[0] for line in owners.stdout.splitlines()}
        if not packages:
            fail(f"{soname}, which the bundle links to, is on no installed package: the Depends miss it")
        if not packages & wanted:
            fail(f"{soname} comes from {', '.join(sorted(packages))}, which the .deb does not depend on")


def check_menu_entry(root: Path) -> None:
    """Check the desktop file is valid, without a warning, and each hicolor PNG is the size of its folder."""
    desktop_file = root / "usr" / "share" / "applications" / f"{build.NAME}.desktop"
    if said := run("desktop-file-validate", desktop_file).stdout.strip():
        fail(f"desktop-file-validate {desktop_file}: {said}")
    pngs = sorted(root.glob("usr/share/icons/hicolor/*x*/apps/*.png"))
    if len(pngs) < len(build.LINUX_ICON_SIZES):
        fail(f"only {len(pngs)} hicolor icons in the package")
    for png in pngs:
        width, height = struct.unpack(">II", png.read_bytes()[16:24])
        if png.parent.parent.name != f"{width}x{height}":
            fail(f"{png} is {width}x{height}")


def built(dist: Path, pattern: str) -> Path:
    """Return the one file in dist/ that build.py made for this version."""
    found = sorted(dist.glob(pattern))
    if len(found) != 1:
        fail(f"expected one {pattern} in {dist}, found {[p.name for p in found]}")
    return found[0]


def check_tray(command: Path, scratch: Path, backend: str) -> None:
    """Start the tray app from the package on a virtual display with a tray; check its icon docks."""
    with virtual_desktop() as env:
        app, _ = start_process(
            app_args(scratch / "tray", backend, [str(command)]), re.compile(r"(tray icon shown)"), env=env
        )
        try:
            tree = windows(env)
            if _DOCKED not in tree:
                fail(f"the app's icon is not in the tray:\n{tree}")
        finally:
            output = process_output(app)
            status = stop_process(app)
    if status != 0 or _QT_LOAD_FAILURE.search(output):
        fail(f"the tray app exited {status} or Qt could not load part of itself:\n{output}")
    print("tray icon docked")


def check_rpm(rpm: Path, bundle: Path) -> None:
    """Check the .rpm holds the app and requires the libraries the bundle links to."""
    files = run("rpm", "-qpl", rpm).stdout.split()
    for path in (
        "/usr/bin/inferhub",
        "/usr/lib/inferhub/inferhub",
        "/usr/share/applications/inferhub.desktop",
    ):
        if path not in files:
            fail(f"{rpm.name} lacks {path}")
    requires = set(run("rpm", "-qpR", rpm).stdout.split("\n"))
    wanted = build.rpm_requires(build.linux_system_libraries(bundle), build.glibc_floor(bundle))
    if missing := set(wanted) - requires:
        fail(f"{rpm.name} does not require {', '.join(sorted(missing))}")


def check_nsis(scratch: Path) -> None:
    """Compile the Windows installer script around a stand-in app (warnings count as errors)."""
    payload = scratch / "windows-app"
    (payload / "_internal").mkdir(parents=True)
    for exe in (f"{build.NAME}.exe", f"{build.CLI_NAME}.exe"):
        (payload / exe).write_bytes(b"MZ stand-in")
    (payload / "_internal" / "python311.dll").write_bytes(b"MZ stand-in")
    setup = scratch / "InferHub-setup.exe"
    run(*build.makensis_command(payload, setup))
    if setup.read_bytes()[:2] != b"MZ":
        fail(f"makensis wrote {setup}, which is no Windows executable")
    print(f"NSIS script compiled: {setup.stat().st_size} bytes")


def check_info_plist(scratch: Path) -> None:
    """Write the macOS Info.plist as the build does and read it back with plistlib."""
    path = scratch / "Info.plist"
    path.write_bytes(plistlib.dumps(build.info_plist()))
    with path.open("rb") as file:
        if problems := build.check_info_plist(plistlib.load(file)):
            fail("the macOS Info.plist is wrong: " + "; ".join(problems))
    print("macOS Info.plist is right")


def main() -> None:
    step("tools")
    apt_install([package for tool, package in _TOOLS.items() if shutil.which(tool) is None])
    run(sys.executable, "-m", "pip", "install", "-q", "-e", f"{ROOT}[package]")

    step("build: bundle, .deb, .rpm")
    dist = ROOT / "dist"
    subprocess.run([sys.executable, str(build.PACKAGING / "build.py")], check=True)
    deb = built(dist, f"{build.NAME}_{build.VERSION}_*.deb")
    rpm = built(dist, f"{build.NAME}-{build.VERSION}-1.*.rpm")

    step(".deb unpacked into a scratch root, its dependencies installed; the .rpm")
    with tempfile.TemporaryDirectory(prefix="inferhub-package-") as tmp:
        scratch = Path(tmp)
        root = scratch / "root"
        run("dpkg-deb", "-x", deb, root)
        bundle = root / "usr" / "lib" / build.NAME
        apt_install(depends(deb))
        check_system_libraries(bundle, deb)
        check_menu_entry(root)
        check_rpm(rpm, bundle)
        command = root / "usr" / "bin" / build.NAME

        step("frozen app: --version, headless node, tray")
        check_version(command)
        fake, backend = start_fake_ollama_process()
        try:
            check_headless(command, scratch / "headless", backend)
            check_tray(command, scratch, backend)
        finally:
            stop_process(fake)

        step("other OSes: NSIS script, macOS Info.plist")
        check_nsis(scratch)
        check_info_plist(scratch)

    step("sizes and start times")
    subprocess.run([sys.executable, "-m", "bench.package", "--runs", "3"], cwd=ROOT, check=True)
    print("packaging check passed")


if __name__ == "__main__":
    main()
