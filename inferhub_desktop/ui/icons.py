"""The application icon and the tray icon for each sharing state, drawn from the SVGs in ``assets``."""

from __future__ import annotations

import enum
import functools
import itertools
import os
import struct
import sys
from collections.abc import Mapping
from pathlib import Path

from PySide6.QtCore import QBuffer, QIODevice, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QGuiApplication, QIcon, QImage, QImageWriter, QPainter, QPalette, QPixmap
from PySide6.QtSvg import QSvgRenderer

_ASSETS = Path(__file__).parent / "assets"

_APP_ICON_SIZES = (16, 24, 32, 48, 64, 128, 256, 512, 1024)
_ICO_SIZES = (16, 24, 32, 48, 64, 128, 256)
# The @2x types (ic11–ic14) hold the same pixels as a 1x type of twice the size.
_ICNS_ENTRIES = (
    ("ic07", 128),
    ("ic08", 256),
    ("ic09", 512),
    ("ic10", 1024),
    ("ic11", 32),
    ("ic12", 64),
    ("ic13", 256),
    ("ic14", 512),
)
# Panels are 16–24 px tall; the larger sizes serve HiDPI screens.
_TRAY_SIZES = (16, 20, 22, 24, 32, 40, 48, 64)
_PNG_DOTS_PER_METER = 2835  # 72 dpi, fixed so the written PNGs do not depend on the screen

_GLYPH_ON_DARK = "#F2F4F8"
_GLYPH_ON_LIGHT = "#1F2430"
# The glyph wears a halo of the other colour, so it reads on any panel even where panel_is_dark() guesses
# wrong: one pixel per 16 px of icon, the thinnest edge that shows at 16 px and scales with HiDPI.
_ICON_PX_PER_HALO_PX = 16
# Not sharing draws only the nodes, unlinked: as visible as the other states, yet another shape.
_NOT_SHARING_ELEMENT = "nodes"
_BADGE_FRACTION = 0.5
# A clear disc, wider than the badge, keeps the badge's outline apart from the glyph whatever its shape.
_BADGE_GAP_FRACTION = 0.07


class TrayState(enum.Enum):
    """What the tray icon tells the user about this workstation."""

    # The tooltip says the states of trouble in these words, the others in the node's (state_words).
    NOT_SHARING = "not sharing"
    SHARING = "sharing"
    SERVING = "serving colleagues"
    NO_BACKEND = "no model server on this machine"
    POOL_PROBLEM = "nothing can answer your requests"


_BADGES: Mapping[TrayState, str] = {
    TrayState.SHARING: "badge-sharing.svg",
    TrayState.SERVING: "badge-serving.svg",
    TrayState.NO_BACKEND: "badge-no-backend.svg",
    TrayState.POOL_PROBLEM: "badge-problem.svg",
}


@functools.cache
def tray_icon(state: TrayState, *, dark_panel: bool) -> QIcon:
    """Return the tray icon for ``state``, coloured for a dark or a light panel and legible on either."""
    icon = QIcon()
    for size in _TRAY_SIZES:
        icon.addPixmap(QPixmap.fromImage(_tray_image(state, size, dark_panel=dark_panel)))
    return icon


def app_icon() -> QIcon:
    """Return the application icon from the PNG sizes shipped in the package."""
    icon = QIcon()
    for size in _APP_ICON_SIZES:
        icon.addFile(str(_ASSETS / f"inferhub-{size}.png"), QSize(size, size))
    return icon


def panel_is_dark() -> bool:
    """Tell whether the desktop uses a dark colour scheme, so the tray glyph should be light."""
    scheme = QGuiApplication.styleHints().colorScheme()
    if scheme == Qt.ColorScheme.Dark:
        return True
    if scheme == Qt.ColorScheme.Light:
        return False
    return QGuiApplication.palette().color(QPalette.ColorRole.Window).lightness() < 128


def build_app_icons(directory: Path) -> list[Path]:
    """Render ``inferhub.svg`` into the app icon PNGs, ICO and ICNS in ``directory``; return their paths."""
    renderer = _renderer("inferhub.svg")
    pngs = {size: _png_bytes(_render(renderer, size)) for size in _APP_ICON_SIZES}
    files = {f"inferhub-{size}.png": data for size, data in pngs.items()}
    files["inferhub.ico"] = _ico_bytes([(size, pngs[size]) for size in _ICO_SIZES])
    files["inferhub.icns"] = _icns_bytes([(kind, pngs[size]) for kind, size in _ICNS_ENTRIES])
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in files.items():
        path = directory / name
        path.write_bytes(data)
        written.append(path)
    return written


@functools.cache
def _renderer(name: str) -> QSvgRenderer:
    """Load one of the package's SVG assets."""
    renderer = QSvgRenderer(str(_ASSETS / name))
    if not renderer.isValid():
        raise RuntimeError(f"cannot render icon asset {name}; reinstall InferHub Desktop")
    return renderer


def _render(renderer: QSvgRenderer, size: int, element: str | None = None) -> QImage:
    """Render an SVG, or only its ``element``, into a transparent square image of ``size`` pixels."""
    image = QImage(size, size, QImage.Format.Format_ARGB32_Premultiplied)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    if element is None:
        renderer.render(painter, QRectF(0, 0, size, size))
    else:
        # An element is drawn into the rectangle given; give it the one it fills in the whole drawing.
        scale = size / renderer.viewBoxF().width()
        bounds = renderer.boundsOnElement(element)
        renderer.render(painter, element, QRectF(bounds.topLeft() * scale, bounds.size() * scale))
    painter.end()
    return image


def _tinted(mask: QImage, color: str) -> QImage:
    """Return ``mask``'s coverage filled with ``color``, whatever colours it was drawn in."""
    image = mask.copy()
    painter = QPainter(image)
    painter.setCompositionMode(QPainter.CompositionMode.CompositionMode_SourceIn)
    painter.fillRect(image.rect(), QColor(color))
    painter.end()
    return image


def _grown(mask: QImage, radius: int) -> QImage:
    """Return ``mask``'s coverage grown by ``radius`` pixels all round."""
    image = QImage(mask.size(), QImage.Format.Format_ARGB32_Premultiplied)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    # Stamping the mask at every offset within a disc grows it round, not square, past one pixel.
    for dx, dy in itertools.product(range(-radius, radius + 1), repeat=2):
        if dx * dx + dy * dy <= radius * radius + radius:
            painter.drawImage(dx, dy, mask)
    painter.end()
    return image


def _tray_image(state: TrayState, size: int, *, dark_panel: bool) -> QImage:
    """Draw the haloed tray glyph with the badge of ``state`` in its bottom-right quarter."""
    glyph_color, halo_color = (
        (_GLYPH_ON_DARK, _GLYPH_ON_LIGHT) if dark_panel else (_GLYPH_ON_LIGHT, _GLYPH_ON_DARK)
    )
    element = _NOT_SHARING_ELEMENT if state is TrayState.NOT_SHARING else None
    glyph = _render(_renderer("tray.svg"), size, element)
    badge = _BADGES.get(state)
    side = round(size * _BADGE_FRACTION)
    if badge is not None:
        gap = max(1, round(size * _BADGE_GAP_FRACTION))
        painter = QPainter(glyph)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setCompositionMode(QPainter.CompositionMode.CompositionMode_DestinationOut)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(Qt.GlobalColor.black)
        painter.drawEllipse(QRectF(size - side - gap, size - side - gap, side + 2 * gap, side + 2 * gap))
        painter.end()
    image = _tinted(_grown(glyph, size // _ICON_PX_PER_HALO_PX), halo_color)
    painter = QPainter(image)
    painter.drawImage(0, 0, _tinted(glyph, glyph_color))
    if badge is not None:
        painter.drawImage(size - side, size - side, _render(_renderer(badge), side))
    painter.end()
    return image


def _png_bytes(image: QImage) -> bytes:
    """Encode ``image`` as PNG."""
    image.setDotsPerMeterX(_PNG_DOTS_PER_METER)
    image.setDotsPerMeterY(_PNG_DOTS_PER_METER)
    buffer = QBuffer()
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    writer = QImageWriter(buffer, b"png")
    if not writer.write(image):
        raise RuntimeError(f"Qt could not encode a PNG: {writer.errorString()}")
    return bytes(buffer.data().data())


def _ico_bytes(entries: list[tuple[int, bytes]]) -> bytes:
    """Pack square PNGs, given with their sizes, into an ICO file."""
    directory = [struct.pack("<HHH", 0, 1, len(entries))]
    offset = 6 + 16 * len(entries)
    for size, data in entries:
        # A size byte can only say 1–255; 0 stands for 256.
        side = 0 if size == 256 else size
        directory.append(struct.pack("<BBBBHHII", side, side, 0, 0, 1, 32, len(data), offset))
        offset += len(data)
    return b"".join(directory) + b"".join(data for _, data in entries)


def _icns_bytes(entries: list[tuple[str, bytes]]) -> bytes:
    """Pack PNGs, given with their icns type codes, into an ICNS file."""
    body = b"".join(kind.encode("ascii") + struct.pack(">I", 8 + len(data)) + data for kind, data in entries)
    return b"icns" + struct.pack(">I", 8 + len(body)) + body


def _main() -> None:
    """Regenerate the app icon files in the package's assets from ``inferhub.svg``."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    _app = QGuiApplication.instance() or QGuiApplication(sys.argv)
    for path in build_app_icons(_ASSETS):
        print(path)


if __name__ == "__main__":
    _main()
