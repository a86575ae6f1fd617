"""Rendered and thumbnail images (PS3.18 8.3.5, 10.4.1.1.3): one frame as JPEG or PNG.

pydicom decodes the frame (reading only that frame from the file, whatever
the syntax its plugins decode: native, JPEG, JPEG-LS, JPEG 2000, RLE), then
the grey levels a viewer would show are made the way PS3.3 C.11 says: the
Modality LUT (Rescale Slope and Intercept, or a Modality LUT Sequence), the
window of the request (``window=center,width[,function]``) or of the
instance (Window Center/Width and VOI LUT Function, else its VOI LUT
Sequence), else the frame's own range; MONOCHROME1 is inverted.  Colour
images go as they are (YBR decoded to RGB, palettes applied), scaled to
8 bits.  Pillow scales (``viewport``, and 128 pixels on the long side for a
thumbnail) and encodes.

Decoding holds the interpreter lock for as long as the decoder runs (a few
milliseconds for a CT frame); callers run `render` in a thread.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
from PIL import Image
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi_lut,
    pixel_array,
)

from dicomd.web.pixels import Pixels

MEDIA_TYPES: Final = ("image/jpeg", "image/png")
"""What a rendered image can be, the default first."""
THUMBNAIL_SIZE: Final = 128
"""A thumbnail's longest side unless ``viewport`` says otherwise."""
MOST_VIEWPORT: Final = 8192
WINDOW_FUNCTIONS: Final = frozenset({"LINEAR", "LINEAR_EXACT", "SIGMOID"})


class RenderingError(ValueError):
    """A frame that cannot be rendered; ``str()`` is one line."""


@dataclass(frozen=True)
class RenderOptions:
    """How to render: media type, the box to fit in, a window, the JPEG quality."""

    media_type: str = "image/jpeg"
    viewport: tuple[int, int] | None = None
    window: tuple[float, float, str] | None = None
    quality: int = 90
    thumbnail: bool = False

    @classmethod
    def from_query(
        cls,
        media_type: str,
        *,
        viewport: str | None = None,
        window: str | None = None,
        quality: str | None = None,
        thumbnail: bool = False,
    ) -> RenderOptions:
        """Options from the query parameters of PS3.18 8.3.5.1; `ValueError` saying which
        is wrong."""
        return cls(
            media_type,
            _viewport(viewport),
            _window(window),
            _quality(quality),
            thumbnail,
        )

    @property
    def box(self) -> tuple[int, int] | None:
        """The largest size the image may have, None for its own."""
        if self.viewport is not None:
            return self.viewport
        return (THUMBNAIL_SIZE, THUMBNAIL_SIZE) if self.thumbnail else None


def _viewport(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    pieces = text.split(",")
    try:
        width, height = int(pieces[0]), int(pieces[1])
    except (ValueError, IndexError):
        raise ValueError(f"viewport={text[:40]!r} is not width,height") from None
    if not (0 < width <= MOST_VIEWPORT and 0 < height <= MOST_VIEWPORT):
        raise ValueError(f"viewport={text[:40]!r}: each side is 1 to {MOST_VIEWPORT}")
    return width, height


def _window(text: str | None) -> tuple[float, float, str] | None:
    if text is None:
        return None
    pieces = text.split(",")
    try:
        center, width = float(pieces[0]), float(pieces[1])
    except (ValueError, IndexError):
        raise ValueError(f"window={text[:40]!r} is not center,width[,function]") from None
    function = pieces[2].strip().upper() if len(pieces) > 2 else "LINEAR"
    if not (math.isfinite(center) and math.isfinite(width) and width >= 1):
        raise ValueError(f"window={text[:40]!r}: the width must be 1 or more")
    if function not in WINDOW_FUNCTIONS:
        raise ValueError(f"window function {function[:20]!r} is not one of LINEAR, SIGMOID...")
    return center, width, function


def _quality(text: str | None) -> int:
    if text is None:
        return 90
    if not text.isdigit() or not 1 <= int(text) <= 100:
        raise ValueError(f"quality={text[:20]!r} is not 1 to 100")
    return int(text)


def render(path: Path, pixels: Pixels, frame: int, options: RenderOptions) -> bytes:
    """Blocking: frame ``frame`` (1-based) of the instance ``path`` rendered as ``options``
    asks.  Raises `RenderingError` for pixels that do not decode or cannot be shown."""
    head = pixels.head
    try:
        array = pixel_array(str(path), index=frame - 1)
    except Exception as error:  # pydicom and its plugins raise many types for bad streams
        raise RenderingError(f"frame {frame} does not decode: {_one_line(error)}") from None
    photometric = str(head.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    try:
        if photometric.startswith("MONOCHROME"):
            grey = _grey_levels(array, head, frame, options.window)
            if photometric == "MONOCHROME1":
                grey = 255 - grey
            image = Image.fromarray(grey, mode="L")
        else:
            image = Image.fromarray(_colour(array, head, photometric), mode="RGB")
    except RenderingError:
        raise
    except Exception as error:  # attributes pydicom's LUT functions cannot use
        raise RenderingError(f"frame {frame} cannot be shown: {_one_line(error)}") from None
    if options.box is not None:
        image.thumbnail(options.box, Image.Resampling.LANCZOS)
    out = io.BytesIO()
    if options.media_type == "image/png":
        image.save(out, format="PNG")
    else:
        image.save(out, format="JPEG", quality=options.quality)
    return out.getvalue()


def _grey_levels(
    array: np.ndarray[Any, Any],
    head: Any,
    frame: int,
    window: tuple[float, float, str] | None,
) -> np.ndarray[Any, Any]:
    """8-bit grey levels: Modality LUT, then the window asked for, the instance's, or the
    frame's range (PS3.3 C.11.1, C.11.2)."""
    if array.ndim != 2:
        raise RenderingError("a monochrome frame with more than one sample per pixel")
    values = apply_modality_lut(array, head).astype(np.float64)
    if window is None:
        window = _instance_window(head)
    if window is not None:
        return _windowed(values, *window)
    if "VOILUTSequence" in head:
        try:
            values = apply_voi_lut(array, head, index=frame - 1).astype(np.float64)
        except Exception as error:
            raise RenderingError(f"the VOI LUT: {_one_line(error)}") from None
    return _stretched(values)


def _instance_window(head: Any) -> tuple[float, float, str] | None:
    """The instance's first Window Center/Width and its VOI LUT Function."""
    center, width = head.get("WindowCenter"), head.get("WindowWidth")
    if center is None or width is None:
        return None
    try:
        center = float(center[0] if _is_multiple(center) else center)
        width = float(width[0] if _is_multiple(width) else width)
    except (TypeError, ValueError, IndexError):
        return None
    function = str(head.get("VOILUTFunction") or "LINEAR").upper()
    if not math.isfinite(center) or not math.isfinite(width) or width < 1:
        return None
    return center, width, function if function in WINDOW_FUNCTIONS else "LINEAR"


def _is_multiple(value: Any) -> bool:
    return not isinstance(value, str | bytes) and hasattr(value, "__getitem__")


def _windowed(values: np.ndarray[Any, Any], center: float, width: float, function: str) -> Any:
    """The window functions of PS3.3 C.11.2.1.2 and C.11.2.1.3, onto 0-255."""
    if function == "SIGMOID":
        out = 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    elif function == "LINEAR_EXACT":
        out = (values - center) / width + 0.5
    else:
        out = (values - (center - 0.5)) / (width - 1 if width > 1 else 1) + 0.5
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def _stretched(values: np.ndarray[Any, Any]) -> Any:
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.clip(np.rint((values - low) * (255.0 / (high - low))), 0, 255).astype(np.uint8)


def _colour(array: np.ndarray[Any, Any], head: Any, photometric: str) -> Any:
    """8-bit RGB: a palette applied, anything decoded already RGB, deeper samples scaled."""
    if photometric == "PALETTE COLOR":
        try:
            array = apply_color_lut(array, head)
        except Exception as error:
            raise RenderingError(f"the palette: {_one_line(error)}") from None
        bits = 16 if array.dtype.itemsize > 1 else 8
    else:
        bits = int(head.get("BitsStored") or 8)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise RenderingError(f"{photometric} frames of shape {array.shape} are not rendered")
    if bits > 8:
        array = np.right_shift(array.astype(np.uint32), bits - 8)
    return np.clip(array, 0, 255).astype(np.uint8)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:200] or type(error).__name__
