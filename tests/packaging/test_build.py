"""The installers' metadata and what the bundle keeps of Qt, checked without building anything."""

from __future__ import annotations

import importlib.util
import plistlib
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import PySide6
import pytest

from tests.support import ROOT


def load_build() -> ModuleType:
    """Import packaging/build.py, which is a script beside the spec rather than a package module."""
    spec = importlib.util.spec_from_file_location("inferhub_build", ROOT / "packaging" / "build.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


build = load_build()
QT = "PySide6/Qt"
SITE = "/venv/site-packages"


def entry(dest: str, kind: str = "BINARY", src: str | None = None) -> tuple[str, str, str]:
    return (dest, src if src is not None else f"{SITE}/{dest}", kind)


def test_the_macos_plist_makes_a_tray_only_app_that_says_why_it_wants_the_local_network() -> None:
    plist = plistlib.loads(plistlib.dumps(build.info_plist()))
    assert build.check_info_plist(plist) == []
    assert plist["LSUIElement"] is True
    assert plist["NSBonjourServices"] == ["_inferhub._tcp"]
    assert "local network" in plist["NSLocalNetworkUsageDescription"]
    assert plist["CFBundleShortVersionString"] == build.VERSION


def test_a_plist_without_the_local_network_keys_is_refused() -> None:
    plist = {**build.info_plist(), "LSUIElement": False, "NSBonjourServices": []}
    del plist["NSLocalNetworkUsageDescription"]
    problems = build.check_info_plist(plist)
    assert len(problems) == 3
    assert any("NSLocalNetworkUsageDescription" in p for p in problems)


def test_depends_name_each_package_once_and_the_glibc_the_bundle_needs() -> None:
    sonames = {"libc.so.6", "libm.so.6", "libxcb-cursor.so.0", "libssl.so.3", "libcrypto.so.3"}
    assert build.deb_depends(sonames, 35) == ["libc6 (>= 2.35)", "libssl3", "libxcb-cursor0"]
    assert build.rpm_requires({"libxcb-cursor.so.0"}, 35) == [
        "libc.so.6(GLIBC_2.35)(64bit)",
        "libxcb-cursor.so.0()(64bit)",
    ]


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or shutil.which("readelf") is None, reason="needs Linux and readelf"
)
def test_the_qt_xcb_plugin_needs_only_libraries_with_a_package_named() -> None:
    qt = Path(PySide6.__file__).parent / "Qt"
    bundled = {path.name for path in (qt / "lib").iterdir()}
    for plugin in ("platforms/libqxcb.so", "platforms/libqwayland.so"):
        needed = set(build.needed_libraries(qt / "plugins" / plugin)) - bundled
        assert needed <= set(build.LINUX_SYSTEM_LIBRARIES), plugin


def test_trim_keeps_the_plugins_the_app_loads_and_drops_translations() -> None:
    binaries = [
        entry(f"{QT}/plugins/platforms/libqxcb.so"),
        entry(f"{QT}/plugins/platforms/libqeglfs.so"),
        entry(f"{QT}/plugins/imageformats/libqsvg.so"),
        entry(f"{QT}/plugins/imageformats/libqjpeg.so"),
        entry(f"{QT}/plugins/tls/libqopensslbackend.so"),
        entry(f"{QT}/plugins/platformthemes/libqgtk3.so"),
    ]
    datas = [
        entry(f"{QT}/translations/qt_de.qm", "DATA"),
        entry("inferhub_desktop/ui/assets/tray.svg", "DATA"),
    ]
    kept, kept_datas = build.trim(binaries, datas, lambda _: [], linux=False)
    assert [dest for dest, _, _ in kept] == [
        f"{QT}/plugins/platforms/libqxcb.so",
        f"{QT}/plugins/imageformats/libqsvg.so",
    ]
    assert kept_datas == [datas[1]]


def test_trim_keeps_the_qt_libraries_something_kept_links_to_and_their_links() -> None:
    binaries = [
        entry("PySide6/QtGui.abi3.so", "EXTENSION"),
        entry(f"{QT}/plugins/platforms/libqxcb.so"),
        entry(f"{QT}/plugins/platforms/libqeglfs.so"),
        entry(f"{QT}/lib/libQt6Gui.so.6"),
        entry(f"{QT}/lib/libQt6Core.so.6"),
        entry(f"{QT}/lib/libQt6XcbQpa.so.6"),
        entry(f"{QT}/lib/libQt6EglFSDeviceIntegration.so.6"),
        entry("libQt6Core.so.6", "SYMLINK", f"{QT}/lib/libQt6Core.so.6"),
        entry("libQt6EglFSDeviceIntegration.so.6", "SYMLINK", f"{QT}/lib/libQt6EglFSDeviceIntegration.so.6"),
    ]
    links = {
        "PySide6/QtGui.abi3.so": ["libQt6Gui.so.6"],
        f"{QT}/lib/libQt6Gui.so.6": ["libQt6Core.so.6", "libc.so.6"],
        f"{QT}/plugins/platforms/libqxcb.so": ["libQt6XcbQpa.so.6"],
        f"{QT}/plugins/platforms/libqeglfs.so": ["libQt6EglFSDeviceIntegration.so.6"],
    }
    kept, _ = build.trim(binaries, [], lambda src: links.get(src.removeprefix(f"{SITE}/"), []), linux=False)
    assert {dest for dest, _, _ in kept} == {
        "PySide6/QtGui.abi3.so",
        f"{QT}/plugins/platforms/libqxcb.so",
        f"{QT}/lib/libQt6Gui.so.6",
        f"{QT}/lib/libQt6Core.so.6",
        f"{QT}/lib/libQt6XcbQpa.so.6",
        "libQt6Core.so.6",
    }


def test_trim_leaves_the_os_libraries_to_linux_but_keeps_python() -> None:
    system = "/usr/lib/x86_64-linux-gnu"
    binaries = [
        entry("libX11.so.6", src=f"{system}/libX11.so.6"),
        entry("libstdc++.so.6", src="/lib64/libstdc++.so.6"),
        entry("libpython3.11.so.1.0", src=f"{system}/libpython3.11.so.1.0"),
        entry("python3.11/lib-dynload/_ssl.so", "EXTENSION", "/usr/lib/python3.11/lib-dynload/_ssl.so"),
        entry("libzstd.so.1", src="/opt/python/lib/libzstd.so.1"),
    ]
    kept, _ = build.trim(binaries, [], lambda _: [], linux=True)
    assert [dest for dest, _, _ in kept] == [
        "libpython3.11.so.1.0",
        "python3.11/lib-dynload/_ssl.so",
        "libzstd.so.1",
    ]
    assert build.trim(binaries, [], lambda _: [], linux=False)[0] == binaries


def test_trim_drops_an_unused_macos_framework_whole() -> None:
    framework = f"{QT}/lib/QtOpenGL.framework"
    binaries = [
        entry(f"{framework}/Versions/A/QtOpenGL"),
        entry(f"{framework}/QtOpenGL", "SYMLINK", "Versions/Current/QtOpenGL"),
        entry(f"{QT}/lib/QtCore.framework/Versions/A/QtCore"),
        entry("PySide6/QtCore.abi3.so", "EXTENSION"),
    ]
    datas = [entry(f"{framework}/Resources/Info.plist", "DATA")]
    links = {"PySide6/QtCore.abi3.so": ["@rpath/QtCore.framework/Versions/A/QtCore"]}
    kept, kept_datas = build.trim(
        binaries, datas, lambda src: links.get(src.removeprefix(f"{SITE}/"), []), linux=False
    )
    assert [dest for dest, _, _ in kept] == [binaries[2][0], binaries[3][0]]
    assert kept_datas == []


def test_trim_reads_windows_destinations_and_imports_in_any_case() -> None:
    binaries = [
        entry("PySide6\\plugins\\platforms\\qwindows.dll"),
        entry("PySide6\\plugins\\platforms\\qdirect2d.dll"),
        entry("PySide6\\plugins\\styles\\qmodernwindowsstyle.dll"),
        entry("PySide6\\Qt6Core.dll"),
        entry("PySide6\\msvcp140.dll"),
        entry("PySide6\\opengl32sw.dll"),
    ]
    links = {
        "PySide6\\plugins\\platforms\\qwindows.dll": ["Qt6Core.dll"],
        "PySide6\\Qt6Core.dll": ["MSVCP140.dll"],
    }
    kept, _ = build.trim(binaries, [], lambda src: links.get(src.removeprefix(f"{SITE}/"), []), linux=False)
    assert [dest for dest, _, _ in kept] == [binaries[0][0], binaries[2][0], binaries[3][0], binaries[4][0]]


def test_unused_qt_modules_are_excluded(tmp_path: Path) -> None:
    for name in (
        "QtCore.abi3.so",
        "QtCore.pyi",
        "QtQml.pyi",
        "QtWebEngineCore.pyi",
        "QtSvg.pyi",
        "Qt6Core.dll",
    ):
        (tmp_path / name).touch()
    assert build.qt_modules_to_exclude(tmp_path) == ["PySide6.QtQml", "PySide6.QtWebEngineCore"]


def test_the_packages_put_the_app_on_the_path_and_in_the_menu(tmp_path: Path) -> None:
    config = build.nfpm_config(tmp_path, {"libxcb-cursor.so.0"}, 35)
    contents = {item["dst"]: item for item in config["contents"]}
    assert contents["/usr/bin/inferhub"] == {
        "src": "../lib/inferhub/inferhub",
        "dst": "/usr/bin/inferhub",
        "type": "symlink",
    }
    assert contents["/usr/lib/inferhub"]["type"] == "tree"
    assert "/usr/share/applications/inferhub.desktop" in contents
    assert "/usr/share/icons/hicolor/scalable/apps/inferhub.svg" in contents
    icons = [dst for dst in contents if dst.startswith("/usr/share/icons/hicolor/") and dst.endswith(".png")]
    assert len(icons) == 8
    assert all(Path(contents[dst]["src"]).is_file() for dst in contents if dst.startswith("/usr/share"))
    assert "libxcb-cursor0" in config["depends"]
    assert "libxcb-cursor.so.0()(64bit)" in config["overrides"]["rpm"]["depends"]


def test_the_desktop_file_launches_the_command_with_its_icon() -> None:
    path = ROOT / "packaging" / "linux" / "inferhub.desktop"
    keys = dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    assert keys["Exec"] == keys["Icon"] == build.NAME
    if shutil.which("desktop-file-validate"):
        result = subprocess.run(
            ["desktop-file-validate", str(path)], capture_output=True, text=True, check=False
        )
        assert (result.returncode, result.stdout) == (0, "")
