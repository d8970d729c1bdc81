"""The tray icons tell the states apart on any panel, and the app icon files are complete."""

from __future__ import annotations

import itertools
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QColor, QGuiApplication, QImage, QPalette
from PySide6.QtWidgets import QApplication

from inferhub_desktop.ui import icons
from inferhub_desktop.ui.icons import TrayState, app_icon, build_app_icons, panel_is_dark, tray_icon

ASSETS = Path(icons.__file__).parent / "assets"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TRAY_SIZES = [16, 20, 22, 24, 32, 40, 48, 64]
APP_SIZES = [16, 24, 32, 48, 64, 128, 256, 512, 1024]
ICO_SIZES = [16, 24, 32, 48, 64, 128, 256]
ICNS_SIZES = {
    "ic07": 128,
    "ic08": 256,
    "ic09": 512,
    "ic10": 1024,
    "ic11": 32,
    "ic12": 64,
    "ic13": 256,
    "ic14": 512,
}
BADGE_HUES = {
    TrayState.SHARING: range(100, 170),
    TrayState.SERVING: range(200, 240),
    TrayState.NO_BACKEND: range(30, 60),
    TrayState.POOL_PROBLEM: range(350, 375),  # red wraps around 0; hues below 15 are shifted by 360
}


def tray_image(state: TrayState, *, dark_panel: bool, size: int = 22) -> QImage:
    pixmap = tray_icon(state, dark_panel=dark_panel).pixmap(QSize(size, size), 1.0)
    return pixmap.toImage().convertToFormat(QImage.Format.Format_ARGB32)


def pixels(image: QImage, x0: int, y0: int, x1: int, y1: int) -> Iterator[QColor]:
    for y, x in itertools.product(range(y0, y1), range(x0, x1)):
        yield image.pixelColor(x, y)


def badge_hues(image: QImage) -> list[int]:
    """Return the hues of the strongly coloured, mostly opaque pixels in the bottom-right quarter."""
    half = image.width() // 2
    colored = [c for c in pixels(image, half, half, image.width(), image.height()) if c.alpha() > 160]
    return [c.hsvHue() + (360 if c.hsvHue() < 15 else 0) for c in colored if c.hsvSaturation() > 120]


def read_ico(data: bytes) -> list[tuple[int, bytes]]:
    """Parse an ICO file into (stated size, image data) pairs, checking the directory on the way."""
    reserved, kind, count = struct.unpack_from("<HHH", data, 0)
    assert (reserved, kind) == (0, 1)
    entries = []
    for index in range(count):
        width, height, _, _, planes, bits, length, offset = struct.unpack_from(
            "<BBBBHHII", data, 6 + 16 * index
        )
        assert width == height
        assert (planes, bits) == (1, 32)
        assert offset + length <= len(data)
        entries.append((width or 256, data[offset : offset + length]))
    return entries


def read_icns(data: bytes) -> dict[str, bytes]:
    """Parse an ICNS file into its entries by type, checking the lengths on the way."""
    assert data[:4] == b"icns"
    assert struct.unpack_from(">I", data, 4)[0] == len(data)
    entries = {}
    position = 8
    while position < len(data):
        kind = data[position : position + 4].decode("ascii")
        (length,) = struct.unpack_from(">I", data, position + 4)
        assert length > 8
        entries[kind] = data[position + 8 : position + length]
        position += length
    assert position == len(data)
    return entries


def decoded_size(data: bytes) -> tuple[int, int]:
    assert data.startswith(PNG_SIGNATURE)
    image = QImage.fromData(data)
    assert not image.isNull()
    return image.width(), image.height()


@pytest.mark.parametrize("dark_panel", [True, False], ids=["dark", "light"])
@pytest.mark.parametrize("state", list(TrayState), ids=lambda s: s.name)
def test_every_tray_icon_holds_every_size(qapp: QApplication, state: TrayState, dark_panel: bool) -> None:
    icon = tray_icon(state, dark_panel=dark_panel)
    assert sorted((s.width(), s.height()) for s in icon.availableSizes()) == [(n, n) for n in TRAY_SIZES]
    for size in TRAY_SIZES:
        assert icon.pixmap(QSize(size, size), 1.0).size() == QSize(size, size)


@pytest.mark.parametrize("dark_panel", [True, False], ids=["dark", "light"])
def test_the_states_look_different_at_panel_size(qapp: QApplication, dark_panel: bool) -> None:
    images = {state: tray_image(state, dark_panel=dark_panel) for state in TrayState}
    for first, second in itertools.combinations(TrayState, 2):
        assert images[first] != images[second], (first, second)


@pytest.mark.parametrize("state", list(TrayState), ids=lambda s: s.name)
def test_the_glyph_is_light_on_dark_panels_dark_on_light(qapp: QApplication, state: TrayState) -> None:
    def glyph_lightness(image: QImage) -> float:
        # The top half holds glyph only; the badge sits in the bottom-right quarter.
        glyph = [c for c in pixels(image, 0, 0, image.width(), image.height() // 2) if c.alpha() > 40]
        assert len(glyph) > 20
        return sum(c.lightness() for c in glyph) / len(glyph)

    on_dark = tray_image(state, dark_panel=True)
    on_light = tray_image(state, dark_panel=False)
    assert on_dark != on_light
    assert glyph_lightness(on_dark) > 220
    assert glyph_lightness(on_light) < 60


def test_not_sharing_dims_the_glyph(qapp: QApplication) -> None:
    # (10, 10) is the middle of the top-left node at 64 px, solid in every state.
    dimmed = tray_image(TrayState.NOT_SHARING, dark_panel=True, size=64).pixelColor(10, 10)
    active = tray_image(TrayState.SHARING, dark_panel=True, size=64).pixelColor(10, 10)
    assert active.alpha() == 255
    assert 100 <= dimmed.alpha() <= 130
    assert dimmed.rgb() == active.rgb()


@pytest.mark.parametrize("dark_panel", [True, False], ids=["dark", "light"])
def test_only_not_sharing_has_no_badge(qapp: QApplication, dark_panel: bool) -> None:
    assert badge_hues(tray_image(TrayState.NOT_SHARING, dark_panel=dark_panel)) == []
    for state, hues in BADGE_HUES.items():
        found = badge_hues(tray_image(state, dark_panel=dark_panel))
        assert len(found) > 15, state
        assert sum(hue in hues for hue in found) > 0.8 * len(found), (state, found)


def test_panel_is_dark_follows_the_palette_when_the_scheme_is_unknown(qapp: QApplication) -> None:
    if QGuiApplication.styleHints().colorScheme() != Qt.ColorScheme.Unknown:
        pytest.skip("the platform states a colour scheme")
    original = QGuiApplication.palette()
    try:
        QGuiApplication.setPalette(QPalette(QColor("#202124")))
        assert panel_is_dark()
        QGuiApplication.setPalette(QPalette(QColor("#F0F0F0")))
        assert not panel_is_dark()
    finally:
        QGuiApplication.setPalette(original)


def test_build_app_icons_writes_complete_containers(qapp: QApplication, tmp_path: Path) -> None:
    written = build_app_icons(tmp_path)

    assert sorted(p.name for p in written) == sorted(
        [f"inferhub-{n}.png" for n in APP_SIZES] + ["inferhub.ico", "inferhub.icns"]
    )
    assert all(p.parent == tmp_path and p.stat().st_size > 0 for p in written)
    for size in APP_SIZES:
        assert decoded_size((tmp_path / f"inferhub-{size}.png").read_bytes()) == (size, size)
    ico = read_ico((tmp_path / "inferhub.ico").read_bytes())
    assert [size for size, _ in ico] == ICO_SIZES
    assert all(decoded_size(data) == (size, size) for size, data in ico)
    icns = read_icns((tmp_path / "inferhub.icns").read_bytes())
    assert {kind: decoded_size(data)[0] for kind, data in icns.items()} == ICNS_SIZES


def test_committed_app_icons_match_a_fresh_build(qapp: QApplication, tmp_path: Path) -> None:
    build_app_icons(tmp_path)

    def structure(directory: Path) -> tuple[list[tuple[int, tuple[int, int]]], dict[str, tuple[int, int]]]:
        ico = read_ico((directory / "inferhub.ico").read_bytes())
        icns = read_icns((directory / "inferhub.icns").read_bytes())
        return (
            [(size, decoded_size(data)) for size, data in ico],
            {kind: decoded_size(data) for kind, data in icns.items()},
        )

    assert structure(ASSETS) == structure(tmp_path)
    for size in APP_SIZES:
        image = QImage(str(ASSETS / f"inferhub-{size}.png"))
        assert (image.width(), image.height()) == (size, size)


def test_app_icon_offers_every_shipped_size(qapp: QApplication) -> None:
    icon = app_icon()
    assert sorted(s.width() for s in icon.availableSizes()) == APP_SIZES
    assert not icon.pixmap(QSize(32, 32), 1.0).isNull()
