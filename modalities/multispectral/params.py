"""The multispectral adapter's params: one frozen dataclass, each field typed, documented and
bounded; :meth:`MultispectralParams.check` holds the rules that span fields.

Also the fixed tables the params name: the spectral roles (``band_roles`` keys) and the
normalised-difference indices (``derived`` values).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from modalities.base import AdapterParams, param
from modalities.formats.groups import GROUP_BY_DOC, check_group_by

# Spectral roles -> default band description (the role's own name).
DEFAULT_ROLES: dict[str, str] = {
    role: role for role in ("coastal", "blue", "green", "red", "red_edge", "nir", "swir1", "swir2")
}
# Normalised differences: name -> (a, b) giving (a - b) / (a + b + eps), roles of band_roles.
DERIVED: dict[str, tuple[str, str]] = {
    "ndvi": ("nir", "red"),  # vegetation (Rouse et al. 1974)
    "ndwi": ("green", "nir"),  # open water (McFeeters 1996)
    "ndbi": ("swir1", "nir"),  # built-up (Zha et al. 2003)
}
DerivedName = Literal["ndvi", "ndwi", "ndbi"]

#: Default per-raster size limit (width x height from the header). A Sentinel-2 10 m tile
#: (10980 x 10980 = 1.2e8 px) passes eight times over; at the default chip size it still keeps
#: discovery's per-chip bookkeeping to ~150,000 windows (seconds), while a header declaring
#: 200,000 x 200,000 px (4e10, 6.25 million chips) is refused before any window is built.
MAX_PIXELS = 1_000_000_000

_DEFAULT_LABELS = {
    "geojson": "{stem}.geojson",
    "xview": "xView_train.geojson",
    "dota": "{stem}.txt",
    "coco": "annotations.json",
    "yolo": "{stem}.txt",
}
#: The label formats whose boxes are in pixels: their rasters need no CRS.
PIXEL_LABELS = ("xview", "dota", "coco", "yolo")


@dataclass(frozen=True)
class MultispectralParams(AdapterParams):
    """Params of ``modality: multispectral`` (``docs/modalities/multispectral.md``)."""

    raster_glob: str = param(
        "**/*.tif", "rasters under root (a pathlib glob); not used with a band stack"
    )
    stack: Literal["none", "sentinel2", "landsat", "pattern"] = param(
        "none",
        "none: each raster file holds all its bands; sentinel2 / landsat / pattern: one file "
        "per band, grouped into scenes by the file-name pattern of that product (pattern: "
        "band_files); bands then lists the band names in order",
    )
    band_files: str | None = param(
        None,
        "stack: pattern, a band file name with '{scene}' and '{band}', e.g. '{scene}_{band}.tif'",
    )
    stack_reference: str | None = param(
        None,
        "band stack: the band (of bands) whose grid every band is resampled onto; null = the "
        "band with the finest pixel",
    )
    boa_add_offset: float | None = param(
        None,
        "stack: sentinel2 without MTD_MSIL2A.xml: BOA_ADD_OFFSET of every spectral band "
        "(-1000 since processing baseline 04.00, 0 before); with boa_quantification",
    )
    boa_quantification: float | None = param(
        None,
        "stack: sentinel2 without MTD_MSIL2A.xml: BOA_QUANTIFICATION_VALUE (10000)",
        min=0,
        min_exclusive=True,
    )
    label_format: Literal["geojson", "xview", "dota", "coco", "yolo"] = param(
        "geojson",
        "geojson: map-coordinate features; xview: xView GeoJSON pixel boxes "
        "(bounds_imcoords, type_id, image_id); dota: DOTA v1 text, oriented quadrilaterals; "
        "coco: one COCO instances JSON, images matched to rasters/scenes by file name or stem; "
        "yolo: one txt per raster, normalised boxes. All but geojson are pixel labels: "
        "rasters without a CRS (PNG, JPEG, plain TIFF) are then read, outputs in pixels",
    )
    label_pattern: str | None = param(
        None,
        "label file: with '{stem}' one per raster, relative to its folder; without, one file "
        "for all rasters, relative to root; null = {stem}.geojson (geojson), "
        "xView_train.geojson (xview), {stem}.txt (dota, yolo), annotations.json (coco)",
    )
    yolo_names: str | None = param(
        None,
        "yolo: data.yaml or classes.txt (relative to root) naming the class indices; "
        "null = class_names",
    )
    class_map: dict[str, str | None] = param(
        default_factory=dict,
        doc="class name in the label files -> class name used (a COCO category named "
        "otherwise than the docs say); '' or null drops that class",
    )
    crowd: Literal["auto", "ignore", "objects"] = param(
        "auto",
        "coco iscrowd boxes: ignore (COCO's rule), objects, or auto: objects when every box "
        "of the file is crowd (with a warning), else ignore",
    )
    unmatched: Literal["skip", "error"] = param(
        "skip",
        "coco annotations whose image_id matches no image, and images matching no raster: "
        "counted in one warning (skip) or refused (error)",
    )
    nodata: float | None = param(
        None,
        "raw no-data value of every band without a nodata tag of its own (Sentinel-2 stacks "
        "take NODATA from MTD_MSIL2A.xml when it is there); null = none",
    )
    split_files: dict[str, str] = param(
        default_factory=dict,
        doc="split (train/val/test) -> text file (relative to root) listing rasters or scenes "
        "(file name, stem or path), one a line; rasters in no list are left out. Replaces "
        "the split hash (val_fraction, test_fraction)",
    )
    image_property: str | None = param(
        None,
        "one label file for all rasters: feature property naming a feature's raster (its file "
        "name, stem or path under root); null = image_id for xview, required for geojson",
    )
    keep_difficult: bool = param(
        True, "keep objects flagged difficult (DOTA); kept ones are Sample.difficult"
    )
    require_labels: bool = param(True, "a raster without its label file is an error")
    bands: list[int | str] | None = param(
        None, "selected bands, 1-based indexes or band descriptions, in order; null = all", min=1
    )
    band_roles: dict[str, int | str] = param(
        default_factory=dict,
        doc="role -> band (description or 1-based index) for derived channels and render; "
        "unset roles default to their own name",
        min=1,
    )
    derived: list[DerivedName] = param(
        default_factory=list, doc="normalised-difference channels appended after the bands"
    )
    clip_percentiles: list[float] | None = param(
        default_factory=lambda: [1.0, 99.0],
        doc="per-raster, per-band [low, high] percentile clip; null = min/max",
        min=0,
        max=100,
    )
    rescale: bool = param(True, "map the clipped range of each band to [0, 1]")
    stats_size: int = param(512, "longest side of the decimated read for the statistics", min=8)
    chip_size: int = param(96, "chip side in pixels", min=8)
    overlap: int = param(16, "overlap of neighbouring chips in pixels (< chip_size)", min=0)
    empty_chip_rate: float = param(0.1, "fraction of chips without boxes kept", min=0, max=1)
    min_visible: float = param(
        0.5,
        "fraction of a box's area that must lie in a chip for the chip to keep it",
        min=0,
        max=1,
    )
    class_names: list[str] | None = param(
        None, "class names for labels 1..K; null = the sorted names found in the labels"
    )
    class_property: str = param("class", "feature property holding the class name")
    unknown_class: Literal["error", "skip"] = param(
        "error", "a feature whose class is not in class_names: error, or skip it with a warning"
    )
    labels_outside: Literal["error", "warn"] = param(
        "error", "a label file none of whose features overlaps its raster: error or warning"
    )
    split_by: Literal["raster", "chip"] = param(
        "raster", "split unit: whole rasters (no leakage between overlapping chips) or chips"
    )
    # on the raster's path (a scene's <folder>/<scene id>) under root; e.g. the Sentinel-2
    # tile '_(T\d{2}[A-Z]{3})_' makes one place on every date one unit (needs split_by: raster)
    group_by: str | None = param(None, GROUP_BY_DOC)
    val_fraction: float = param(0.15, "share of the validation split", min=0, max=1)
    test_fraction: float = param(
        0.15, "share of the test split (1: an evaluation-only dataset)", min=0, max=1
    )
    seed: int = param(0, "seed of the split hash and of the empty-chip selection")
    merge_iou: float = param(
        0.5, "IoU above which chip predictions of one class are merged by NMS", min=0, max=1
    )
    merge_containment: float | None = param(
        0.7,
        "the merge NMS also drops a box whose intersection with a larger, higher-scored box "
        "of its class is at least this share of its own area (a fragment); 0 or null: off",
        min=0,
        max=1,
    )
    export_wgs84: bool = param(True, "also write the predictions as RFC 7946 WGS84 GeoJSON")
    max_pixels: int = param(MAX_PIXELS, "largest width x height a raster header may declare", min=1)

    def check(self) -> None:
        if self.bands is not None and not self.bands:
            self.fail("bands", "must be null (all bands) or a non-empty list")
        unknown = sorted(set(self.band_roles) - set(DEFAULT_ROLES))
        if unknown:
            self.fail("band_roles", f"unknown role {unknown[0]!r} (roles: {list(DEFAULT_ROLES)})")
        cp = self.clip_percentiles
        if cp is not None and (len(cp) != 2 or not cp[0] < cp[1]):
            self.fail("clip_percentiles", f"must be null or [low, high] with low < high, got {cp}")
        if self.overlap >= self.chip_size:
            self.fail("overlap", f"must be below chip_size={self.chip_size}, got {self.overlap}")
        names = self.class_names
        if names is not None and (not names or len(set(names)) != len(names)):
            self.fail("class_names", f"must be null or a non-empty list of distinct names: {names}")
        if self.val_fraction + self.test_fraction > 1:
            # == 1 is an evaluation-only dataset (no train split; to score a trained model)
            self.fail("val_fraction", "val_fraction + test_fraction must be at most 1")
        bad = sorted(set(self.split_files) - {"train", "val", "test"})
        if bad:
            self.fail("split_files", f"keys must be train, val, test; got {bad[0]!r}")
        if why := check_group_by(self.group_by):
            self.fail("group_by", why)
        if self.group_by is not None and self.split_by == "chip":
            self.fail("group_by", "keeps rasters of one group in one split: needs split_by: raster")
        pattern = self.labels_pattern
        if self.label_format == "coco" and "{stem}" in pattern:
            self.fail("label_pattern", f"coco labels are one file for all rasters: {pattern!r}")
        if "{stem}" not in pattern:
            if self.label_format in ("dota", "yolo"):
                self.fail(
                    "label_pattern",
                    f"{self.label_format.upper()} labels are one file per image: must contain "
                    f"'{{stem}}', got {pattern!r}",
                )
            if self.label_format == "geojson" and not self.image_property:
                self.fail(
                    "label_pattern",
                    f"{pattern!r} has no '{{stem}}', so it names one file for all rasters; set "
                    "image_property to the feature property naming each feature's raster",
                )
        self._check_stack()

    def _check_stack(self) -> None:
        if self.stack == "none":
            for name in ("band_files", "stack_reference", "boa_add_offset", "boa_quantification"):
                if getattr(self, name) is not None:
                    self.fail(name, "applies to band stacks only (set stack)")
            return
        if not self.bands or not all(isinstance(b, str) for b in self.bands):
            self.fail(
                "bands",
                f"stack: {self.stack} needs the band names in order, e.g. "
                f"['B02', 'B03', 'B04', 'B08'], got {self.bands}",
            )
        if len(set(self.bands)) != len(self.bands):
            self.fail("bands", f"band names must be distinct, got {self.bands}")
        if self.stack == "pattern":
            bf = self.band_files or ""
            if "{scene}" not in bf or "{band}" not in bf or "/" in bf:
                self.fail(
                    "band_files",
                    "stack: pattern needs a file name (no '/') with "
                    f"'{{scene}}' and '{{band}}', got {self.band_files!r}",
                )
        elif self.band_files is not None:
            self.fail("band_files", "applies to stack: pattern only")
        if self.stack_reference is not None and self.stack_reference not in self.bands:
            self.fail("stack_reference", f"must be one of bands {self.bands}")
        if (self.boa_add_offset is None) != (self.boa_quantification is None):
            self.fail(
                "boa_add_offset", "set both boa_add_offset and boa_quantification, or neither"
            )
        if self.stack != "sentinel2" and self.boa_quantification is not None:
            self.fail("boa_quantification", "applies to stack: sentinel2 only")

    @property
    def labels_pattern(self) -> str:
        """``label_pattern``, or the label format's default when null."""
        if self.label_pattern is not None:
            return self.label_pattern
        return _DEFAULT_LABELS[self.label_format]

    @property
    def pixel_labels(self) -> bool:
        """Whether the labels are in pixels (rasters without a CRS are then read)."""
        return self.label_format in PIXEL_LABELS

    @property
    def shared_labels(self) -> bool:
        """Whether one label file holds the labels of every raster (no '{stem}')."""
        return "{stem}" not in self.labels_pattern

    @property
    def image_key(self) -> str | None:
        """The feature property linking a feature to its raster in a shared label file."""
        if self.image_property:
            return self.image_property
        return "image_id" if self.label_format == "xview" else None

    @property
    def roles(self) -> dict[str, int | str]:
        """Every spectral role -> its band (``band_roles`` over the defaults)."""
        return {**DEFAULT_ROLES, **self.band_roles}


@dataclass(frozen=True)
class MultispectralDetectParams(AdapterParams):
    """Options of ``dsod detect`` on multispectral scenes (flags ``--chip-size``,
    ``--overlap``, ``--wgs84``, ``--merge-containment``)."""

    chip_size: int | None = param(
        None, "window side in px (default: the model's training chip_size)", min=1
    )
    overlap: int | None = param(None, "window overlap in px (default: half a window)", min=0)
    wgs84: bool = param(False, "also write an RFC 7946 (WGS84) copy of each GeoJSON")
    merge_containment: float | None = param(
        None,
        "containment share of the scene merge (0: off; default: the model's adapter "
        "merge_containment)",
        min=0,
        max=1,
    )
