"""The contract every registered modality adapter keeps (one suite, parametrised).

Each adapter's demo data is generated small in its native format, discovered, read, written
to a store and read back.
"""

from __future__ import annotations

import numpy as np
import pytest

from dsod_core.data.sample import pixel_to_world, world_to_pixel
from dsod_core.data.store import StoreReader, StoreWriter
from dsod_core.errors import ConfigError
from modalities import available, get_adapter

ADAPTERS = available()


@pytest.fixture(scope="module", params=ADAPTERS)
def prepared(request, tmp_path_factory):
    name = request.param
    cls = get_adapter(name)
    root = tmp_path_factory.mktemp(f"demo_{name}")
    params = cls.write_demo(root, num_images=16, image_size=64, seed=0)
    adapter = cls(root, params)
    refs = adapter.discover()
    samples = [s for ref in refs for s in adapter.read(ref)]
    store = root / "store.h5"
    with StoreWriter(
        store,
        modality=name,
        class_names=adapter.class_names,
        channel_names=adapter.channel_names,
        params=params,
    ) as w:
        for s in samples:
            w.add(s)
    return name, cls, adapter, params, refs, samples, StoreReader(store)


def test_builtin_adapters_all_load():
    from modalities.registry import _BUILTIN

    assert set(_BUILTIN) <= set(ADAPTERS)


def test_registered_names_resolve():
    for name in ADAPTERS:
        assert get_adapter(name).name == name


def test_unknown_modality_lists_known():
    with pytest.raises(ConfigError, match="unknown modality 'nope'.*known modalities"):
        get_adapter("nope")


def test_discovery_and_splits(prepared):
    name, _, adapter, _, refs, samples, reader = prepared
    assert refs, f"{name}: demo discovered nothing"
    assert len(adapter.class_names) >= 2
    assert len(set(adapter.class_names)) == len(adapter.class_names)
    assert len(reader.split_indices("train")) > 0
    assert sum(len(s.labels) for s in samples) > 0, "demo has no objects"


def test_store_round_trip_contract(prepared):
    name, _, adapter, _, _, samples, reader = prepared
    c = len(adapter.channel_names)
    assert reader.num_channels == c and reader.channel_names == adapter.channel_names
    assert reader.class_names == adapter.class_names and reader.modality == name
    assert len(reader) == len(samples)
    assert np.isfinite(reader.mean).all() and (reader.std > 0).all()
    for i in range(len(reader)):
        s = reader.get(i)
        assert s.image.dtype == np.float32 and s.image.shape[0] == c
        assert np.isfinite(s.image).all()
        _, h, w = s.image.shape
        b = s.boxes
        assert ((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])).all()
        assert (b[:, :2] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
        assert ((s.labels >= 1) & (s.labels <= reader.num_classes)).all()
        np.testing.assert_array_equal(s.image, samples[i].image)


def test_pixel_world_mapping_invertible(prepared):
    _, _, _, _, _, samples, _ = prepared
    rng = np.random.default_rng(0)
    for s in samples[:20]:
        _, h, w = s.image.shape
        pts = rng.uniform([0, 0], [w, h], size=(10, 2))
        back = world_to_pixel(s.affine, pixel_to_world(s.affine, pts))
        np.testing.assert_allclose(back[:, :2], pts, atol=1e-6)
        np.testing.assert_allclose(back[:, 2], 0.0, atol=1e-6)


def test_unknown_param_refused(prepared):
    _, cls, adapter, params, _, _, _ = prepared
    with pytest.raises(ConfigError, match="no_such_param"):
        cls(adapter.root, {**params, "no_such_param": 1})


def test_render_and_export(prepared, tmp_path):
    _, _, adapter, _, _, samples, _ = prepared
    with_boxes = [s for s in samples if len(s.labels)][:3]
    pic = adapter.render(with_boxes[0].image)
    assert pic.dtype == np.uint8 and pic.shape == (*with_boxes[0].image.shape[1:], 3)
    items = [
        {
            "sample_id": s.sample_id,
            "source": s.source,
            "meta": s.meta,
            "affine": s.affine,
            "detections": {
                "boxes": s.boxes,
                "scores": np.full(len(s.labels), 0.9),
                "labels": s.labels,
            },
        }
        for s in with_boxes
    ]
    paths = adapter.export_predictions(items, tmp_path / "out")
    assert paths and all(p.exists() and p.stat().st_size > 0 for p in paths)
