"""The tray icons tell the states apart on any panel, and the app icon files are complete."""

from __future__ import annotations

import itertools
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QColor, QGuiApplication, QImage, QPainter, QPalette
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
# Panels the icon must read on: Windows and macOS dark, GNOME's dark grey, a mid grey, a light theme.
PANELS = {"dark": "#1E1E1E", "mid": "#3D3D3D", "grey": "#777777", "light": "#F0F0F0"}
PANEL_SIZES = [16, 22, 24]
# At 64 px: the middle of the top-left node, solid in every state; a point above it, in its halo; and a
# point on the link from that node to the hub.
NODE = (10, 10)
HALO = (10, 1)
LINK = (18, 18)


def tray_image(state: TrayState, *, dark_panel: bool, size: int = 22) -> QImage:
    pixmap = tray_icon(state, dark_panel=dark_panel).pixmap(QSize(size, size), 1.0)
    return pixmap.toImage().convertToFormat(QImage.Format.Format_ARGB32)


def pixels(image: QImage, x0: int, y0: int, x1: int, y1: int) -> Iterator[QColor]:
    for y, x in itertools.product(range(y0, y1), range(x0, x1)):
        yield image.pixelColor(x, y)


def on_panel(state: TrayState, *, dark_panel: bool, size: int, panel: str) -> QImage:
    """Draw the tray icon over a panel of colour ``panel``, as the tray does."""
    image = QImage(size, size, QImage.Format.Format_ARGB32)
    image.fill(QColor(panel))
    painter = QPainter(image)
    painter.drawPixmap(0, 0, tray_icon(state, dark_panel=dark_panel).pixmap(QSize(size, size), 1.0))
    painter.end()
    return image


def outside_badge(size: int) -> list[tuple[int, int]]:
    """Return the pixels of an icon of ``size`` outside the badge's bottom-right quarter."""
    half = size // 2
    return [(x, y) for y, x in itertools.product(range(size), repeat=2) if x < half or y < half]


def contrast_ratio(first: QColor, second: QColor) -> float:
    """Return the WCAG 2 contrast ratio of two opaque colours."""

    def luminance(color: QColor) -> float:
        def linear(channel: int) -> float:
            value = channel / 255
            return value / 12.92 if value <= 0.04045 else ((value + 0.055) / 1.055) ** 2.4

        return 0.2126 * linear(color.red()) + 0.7152 * linear(color.green()) + 0.0722 * linear(color.blue())

    lighter, darker = sorted((luminance(first), luminance(second)), reverse=True)
    return (lighter + 0.05) / (darker + 0.05)


def legible_pixels(image: QImage, panel: str) -> int:
    """Count the pixels outside the badge's quarter that meet WCAG's 3:1 for graphics against ``panel``."""
    background = QColor(panel)
    return sum(
        contrast_ratio(image.pixelColor(x, y), background) >= 3 for x, y in outside_badge(image.width())
    )


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
def test_the_glyph_is_light_with_a_dark_halo_on_dark_panels_and_the_reverse(
    qapp: QApplication, state: TrayState
) -> None:
    on_dark = tray_image(state, dark_panel=True, size=64)
    on_light = tray_image(state, dark_panel=False, size=64)
    assert all(image.pixelColor(*at).alpha() == 255 for image in (on_dark, on_light) for at in (NODE, HALO))
    assert on_dark.pixelColor(*NODE).lightness() > 220
    assert on_dark.pixelColor(*HALO).lightness() < 60
    assert on_light.pixelColor(*NODE).lightness() < 60
    assert on_light.pixelColor(*HALO).lightness() > 220


@pytest.mark.parametrize("dark_panel", [True, False], ids=["dark-guess", "light-guess"])
@pytest.mark.parametrize("panel", PANELS.values(), ids=PANELS.keys())
@pytest.mark.parametrize("size", PANEL_SIZES)
@pytest.mark.parametrize("state", list(TrayState), ids=lambda s: s.name)
def test_the_glyph_reads_on_any_panel_whatever_the_guess(
    qapp: QApplication, state: TrayState, size: int, panel: str, dark_panel: bool
) -> None:
    # panel_is_dark() reads the app's palette, not the panel's, so the guess is wrong on some desktops.
    image = on_panel(state, dark_panel=dark_panel, size=size, panel=panel)
    assert legible_pixels(image, panel) >= len(outside_badge(size)) // 6


@pytest.mark.parametrize("dark_panel", [True, False], ids=["dark-guess", "light-guess"])
@pytest.mark.parametrize("panel", PANELS.values(), ids=PANELS.keys())
@pytest.mark.parametrize("size", PANEL_SIZES)
def test_not_sharing_reads_as_well_yet_differs_from_sharing_beside_the_badge(
    qapp: QApplication, size: int, panel: str, dark_panel: bool
) -> None:
    idle = on_panel(TrayState.NOT_SHARING, dark_panel=dark_panel, size=size, panel=panel)
    active = on_panel(TrayState.SHARING, dark_panel=dark_panel, size=size, panel=panel)
    assert legible_pixels(idle, panel) >= len(outside_badge(size)) // 6
    # At least a line across the icon's worth of pixels tells them apart without looking at the badge.
    changed = [
        xy for xy in outside_badge(size) if contrast_ratio(idle.pixelColor(*xy), active.pixelColor(*xy)) >= 3
    ]
    assert len(changed) >= size


def test_not_sharing_draws_the_nodes_unlinked_at_full_strength(qapp: QApplication) -> None:
    idle = tray_image(TrayState.NOT_SHARING, dark_panel=True, size=64)
    active = tray_image(TrayState.SHARING, dark_panel=True, size=64)
    assert active.pixelColor(*NODE).alpha() == 255
    assert idle.pixelColor(*NODE) == active.pixelColor(*NODE)
    assert active.pixelColor(*LINK).lightness() > 220
    # Halo or nothing where the link was; no glyph.
    assert idle.pixelColor(*LINK).lightness() < 60


@pytest.mark.parametrize("size", PANEL_SIZES)
def test_the_badges_differ_in_shape_not_only_in_hue(qapp: QApplication, size: int) -> None:
    def silhouette(state: TrayState) -> set[tuple[int, int]]:
        image = tray_image(state, dark_panel=True, size=size)
        quarter = range(size // 2, size)
        return {
            (x, y) for x, y in itertools.product(quarter, repeat=2) if image.pixelColor(x, y).alpha() > 128
        }

    badged = [state for state in TrayState if state in BADGE_HUES]
    shapes = {state: silhouette(state) for state in badged}
    for first, second in itertools.combinations(badged, 2):
        # What the glyph and its halo leave in the quarter is the same in every state and cancels out.
        assert len(shapes[first] ^ shapes[second]) >= (size // 2) ** 2 // 5, (first, second)


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
