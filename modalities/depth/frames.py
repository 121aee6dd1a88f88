"""The files of one depth frame, found at discovery: its depth map (required; its header
checked against ``max_pixels``), the aligned colour image and the camera intrinsics (optional),
paired with the frame's labels by name.

Depth maps are ``<depth_dir>/<stem>.{png,npy,tif,tiff}`` (:data:`DEPTH_READERS` by suffix),
colour images ``<rgb_dir>/<stem>.{png,jpg}``, intrinsics ``<intrinsics_dir>/<stem>.{json,txt}``
or ``intrinsics.{json,txt}`` in root. Every path is resolved inside the dataset root
(:meth:`ModalityAdapter.resolve_inside_root`); a missing depth map is a :class:`DataError`
naming the file that referenced it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsod_core.errors import DataError
from modalities.base import SampleRef
from modalities.depth import intrinsics, npy, png

if TYPE_CHECKING:
    from modalities.depth.adapter import DepthAdapter

# Depth readers by file extension, in the order a stem's files are looked for; each module has
# ``declared_size(path, max_pixels)`` (header only) and ``read_depth(path, max_pixels)``.
DEPTH_READERS = {".png": png, ".npy": npy, ".tif": png, ".tiff": png}
DEPTH_EXTENSIONS = tuple(DEPTH_READERS)


def find_depth(adapter: DepthAdapter, stem: str, referenced_from: Path, sample: str) -> Path:
    """``<depth_dir>/<stem>.<ext>`` for the first of :data:`DEPTH_EXTENSIONS` that exists."""
    depth_dir = adapter.resolve_inside_root(adapter.params.depth_dir, referenced_from)
    for ext in DEPTH_EXTENSIONS:
        cand = adapter.resolve_inside_root(depth_dir / f"{stem}{ext}", referenced_from)
        if cand.is_file():
            return cand
    raise DataError(
        f"names depth map {stem!r} but no {depth_dir / stem}"
        f"{{{','.join(DEPTH_EXTENSIONS)}}} exists",
        path=referenced_from,
        sample=sample,
    )


def optional(
    adapter: DepthAdapter, folder: str, stem: str, exts: tuple[str, ...], ref_from: Path
) -> Path | None:
    """``<folder>/<stem>.<ext>`` for the first of ``exts`` that exists, else None."""
    base = adapter.resolve_inside_root(folder, ref_from)
    for ext in exts:
        cand = base / f"{stem}{ext}"
        if cand.is_file():
            return adapter.resolve_inside_root(cand, ref_from)
    return None


def check_header(adapter: DepthAdapter, path: Path, reader=png) -> None:
    """Refuse an image whose header declares more than ``max_pixels`` (no pixel read)."""
    limit = adapter.params.max_pixels
    w, h = reader.declared_size(path, limit)
    adapter.check_declared_size(path, w * h, limit, f"{w} x {h} px", "max_pixels")


def frame_ref(
    adapter: DepthAdapter,
    ref_id: str,
    split: str,
    stem: str,
    ref_from: Path,
    objects: list[dict[str, Any]],
) -> SampleRef:
    """A frame's ref: its files found (depth required, colour and intrinsics optional) and
    the headers of the images it will read checked against ``max_pixels``."""
    depth = find_depth(adapter, stem, ref_from, ref_id)
    paths = frame_paths(adapter, depth, ref_from, ref_from, (stem,))
    return SampleRef(ref_id, split, paths, {"objects": objects})


def frame_paths(
    adapter: DepthAdapter,
    depth: Path,
    annotation: Path | None,
    ref_from: Path,
    stems: tuple[str, ...],
) -> dict[str, Path]:
    """The files of one frame: its ``depth`` map (header checked against ``max_pixels``),
    its ``annotation`` (when it has one), the colour image ``<rgb_dir>/<stem>.{png,jpg}``
    and intrinsics ``<intrinsics_dir>/<stem>.{json,txt}`` of the first of ``stems`` that
    has one (else ``intrinsics.{json,txt}`` in root)."""
    p = adapter.params
    paths = {"depth": depth}
    if annotation is not None:
        paths["annotation"] = annotation
    check_header(adapter, depth, DEPTH_READERS[depth.suffix.lower()])

    def first(folder: str, exts: tuple[str, ...]) -> Path | None:
        return next((f for s in stems if (f := optional(adapter, folder, s, exts, ref_from))), None)

    rgb = first(p.rgb_dir, png.RGB_EXTENSIONS)
    if rgb is not None:
        paths["rgb"] = rgb
        if p.encoding == "rgbd":
            check_header(adapter, rgb)
    intr = first(p.intrinsics_dir, intrinsics.EXTENSIONS)
    if intr is None:
        intr = optional(adapter, ".", "intrinsics", intrinsics.EXTENSIONS, ref_from)
    if intr is not None:
        paths["intrinsics"] = intr
    return paths
