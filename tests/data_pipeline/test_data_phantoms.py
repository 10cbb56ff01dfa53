"""Phantoms: determinism, tissue contrasts of both modalities, and a CT->MR map that needs context."""

import numpy as np
import pytest
from scipy import ndimage

from diffma_cli.data.phantoms import LABEL, case_rng, make_phantom

SCALE = 0.25  # 4x coarser voxels: the same anatomy in mm, fast


@pytest.fixture(scope="module")
def brain():
    return make_phantom("brain", case_rng(7, "brain", 0), scale=SCALE, centre="A")


@pytest.fixture(scope="module")
def full_brain():
    """SynthRAD's 1 mm grid: thin layers (CSF, scalp fat) are only resolved at full resolution."""
    return make_phantom("brain", case_rng(7, "brain", 0), centre="A")


@pytest.fixture(scope="module")
def pelvis_t1():
    return make_phantom("pelvis", case_rng(7, "pelvis", 1), scale=SCALE, centre="A")


def _mean(phantom, modality, tissue):
    """Median over a tissue's core voxels (all 26 neighbours the same tissue: free of partial volume)."""
    inside = phantom.labels == LABEL[tissue]
    core = ndimage.binary_erosion(inside, structure=np.ones((3, 3, 3), bool))
    values = getattr(phantom, modality)[core if core.sum() >= 20 else inside]
    assert values.size > 0, tissue
    return float(np.median(values))


def test_same_seed_same_case_other_seed_other_case(brain):
    again = make_phantom("brain", case_rng(7, "brain", 0), scale=SCALE, centre="A")
    for name in ("ct", "mr", "mask", "labels"):
        assert np.array_equal(getattr(brain, name), getattr(again, name))
    assert brain.origin == again.origin
    other = make_phantom("brain", case_rng(8, "brain", 0), scale=SCALE, centre="A")
    assert other.ct.shape != brain.ct.shape or not np.array_equal(other.ct, brain.ct)


def test_grids_dtypes_and_mask(brain, pelvis_t1):
    assert brain.spacing == (4.0, 4.0, 4.0) and pelvis_t1.spacing == (4.0, 4.0, 10.0)
    for phantom in (brain, pelvis_t1):
        assert (phantom.ct.dtype, phantom.mr.dtype, phantom.mask.dtype) == (np.int16, np.int16, np.uint8)
        assert phantom.ct.shape == phantom.mr.shape == phantom.mask.shape
        body = phantom.labels != LABEL["air"]
        # the dilated mask holds the whole body (air pockets inside it included) and some air around it
        assert np.all(phantom.mask[body] == 1) and phantom.mask.sum() > body.sum()
        outside = phantom.mask == 0
        assert abs(np.median(phantom.ct[outside]) + 1000) < 10  # air around the body
        assert phantom.mr.min() >= 0


def test_brain_contrasts(full_brain):
    assert full_brain.spacing == (1.0, 1.0, 1.0)
    assert 150 <= min(full_brain.ct.shape) <= max(full_brain.ct.shape) < 300  # SynthRAD brain grids
    tissues = ("fat", "csf", "grey_matter", "white_matter", "cortical_bone")
    ct = {t: _mean(full_brain, "ct", t) for t in tissues}
    assert ct["fat"] < ct["csf"] < ct["white_matter"] < ct["grey_matter"] < 100 < 700 < ct["cortical_bone"]
    mr = {t: _mean(full_brain, "mr", t) for t in tissues}
    assert mr["fat"] > mr["white_matter"] > mr["grey_matter"] > mr["csf"]
    assert mr["cortical_bone"] < mr["csf"]


def test_ct_value_does_not_determine_mr(full_brain):
    """Grey and white matter voxels of the same CT value differ in MR: a model needs context."""
    values = {}
    for tissue in ("grey_matter", "white_matter"):
        inside = full_brain.labels == LABEL[tissue]
        same_hu = inside & (full_brain.ct >= 28) & (full_brain.ct <= 38)
        assert same_hu.sum() > 1000
        values[tissue] = full_brain.mr[same_hu].astype(float)
    gap = values["white_matter"].mean() - values["grey_matter"].mean()
    spread = np.sqrt((values["white_matter"].var() + values["grey_matter"].var()) / 2)
    assert gap > 2 * spread


def test_pelvis_weightings_and_contrast_agent():
    t1 = make_phantom("pelvis", case_rng(1, "pelvis", 0), scale=SCALE, centre="A")
    t2 = make_phantom("pelvis", case_rng(1, "pelvis", 0), scale=SCALE, centre="C")
    assert (t1.info["mr_weighting"], t2.info["mr_weighting"]) == ("T1", "T2")
    assert np.array_equal(t1.labels, t2.labels)  # same anatomy, other sequence
    assert _mean(t1, "mr", "urine") < _mean(t1, "mr", "muscle") < _mean(t1, "mr", "fat")
    assert _mean(t2, "mr", "urine") > _mean(t2, "mr", "muscle")
    ct = [_mean(t1, "ct", tissue) for tissue in ("gas", "fat", "muscle", "marrow")]
    assert ct == sorted(ct)
    native = make_phantom("brain", case_rng(2, "brain", 0), scale=SCALE, centre="A")
    enhanced = make_phantom("brain", case_rng(2, "brain", 0), scale=SCALE, centre="B")
    assert enhanced.info["mr_weighting"] == "T1+Gd"
    ratio = [_mean(p, "mr", "enhancing") / _mean(p, "mr", "white_matter") for p in (native, enhanced)]
    assert ratio[1] > 1.5 * ratio[0]
