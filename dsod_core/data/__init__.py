"""Data contracts, the HDF5 store, the torch Dataset, transforms and collate."""

from dsod_core.data.sample import SPLITS, Sample, pixel_to_world, world_to_pixel

__all__ = ["SPLITS", "Sample", "pixel_to_world", "world_to_pixel"]
