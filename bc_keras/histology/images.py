"""The one image check, used by prepare, the input pipelines and inference (TensorFlow-free)."""

from __future__ import annotations

import io
import os
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

# The extensions flow_from_directory accepts.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class ImageCheck:
    """What `check_image` found: `problem` is None for a usable image, else a short reason."""

    problem: str | None
    mode: str | None = None
    format: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


@dataclass
class ImageScan:
    """Usable images (in the order given), skipped `(path, reason)` pairs and non-RGB images."""

    good: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    converted: list[tuple[str, str]] = field(default_factory=list)


def _png_bit_depth(head: bytes) -> int | None:
    """The bit depth from a PNG's IHDR chunk (byte 24), or None for other files."""
    if head[:8] == _PNG_SIGNATURE and head[12:16] == b"IHDR" and len(head) > 24:
        return head[24]
    return None


def check_image(source, size: int | None = None, formats: tuple[str, ...] | None = None):
    """Checks that a file is a complete image both pipelines decode to the same pixels.

    Refused: empty files, non-images, truncated or corrupt files, images over PIL's
    decompression-bomb limit, 16-bit PNGs (PIL and TensorFlow reduce them to 8 bits
    differently), and formats outside `formats` when given. Grayscale, palette and RGBA images
    are usable: both pipelines convert them to RGB the same way (their mode is returned).

    Args:
        source: a path, or a binary file object (e.g. `io.BytesIO` of an archive member).
        size: the byte size when known (saves a stat).
        formats: PIL format names accepted (e.g. `("PNG",)`); None accepts any.

    Returns:
        An `ImageCheck`.
    """
    try:
        if size is None:
            size = os.path.getsize(source) if not hasattr(source, "read") else None
        if size == 0:
            return ImageCheck("empty file (0 bytes)")
        if hasattr(source, "read"):
            head = source.read(32)
            source.seek(0)
        else:
            with open(source, "rb") as file:
                head = file.read(32)
        if _png_bit_depth(head) == 16:
            return ImageCheck("16-bit PNG; convert it to 8-bit RGB to use it")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                mode, image_format = image.mode, image.format
                image.verify()
    except FileNotFoundError:
        return ImageCheck("file not found")
    except UnidentifiedImageError:
        return ImageCheck("not an image file")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        return ImageCheck(f"too large to decode safely ({' '.join(str(error).split())[:90]})")
    except (OSError, SyntaxError, ValueError, EOFError, zlib.error) as error:
        return ImageCheck(f"corrupt or truncated image ({' '.join(str(error).split())[:90]})")
    if formats is not None and image_format not in formats:
        return ImageCheck(f"a {image_format} file, not {'/'.join(formats)}", mode, image_format)
    return ImageCheck(None, mode, image_format)


def check_images(paths) -> ImageScan:
    """Checks every path (see `check_image`)."""
    scan = ImageScan()
    for path in paths:
        result = check_image(path)
        if not result.ok:
            scan.skipped.append((str(path), result.problem))
            continue
        scan.good.append(path)
        if result.mode != "RGB":
            scan.converted.append((str(path), result.mode))
    return scan


def check_bytes(data: bytes, formats: tuple[str, ...] | None = None) -> ImageCheck:
    """`check_image` on bytes in memory (an archive member)."""
    return check_image(io.BytesIO(data), size=len(data), formats=formats)


def describe_problems(scan: ImageScan, where: str) -> list[str]:
    """One line per kind of problem in a scan, naming a few files."""
    lines = []
    if scan.skipped:
        shown = "; ".join(f"{Path(p).name}: {reason}" for p, reason in scan.skipped[:3])
        more = f" (and {len(scan.skipped) - 3} more)" if len(scan.skipped) > 3 else ""
        lines.append(
            f"skipping {len(scan.skipped)} unreadable image(s) in {where}: {shown}{more}; "
            "replace or delete them to use them"
        )
    if scan.converted:
        path, mode = scan.converted[0]
        lines.append(
            f"{len(scan.converted)} image(s) in {where} are not RGB (e.g. {Path(path).name}, "
            f"mode {mode}); they are converted to RGB"
        )
    return lines
