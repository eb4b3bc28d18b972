"""The family registry: every family's presets are presets, each with its source's parameter count and timm
architecture; each architecture a family names is one of the table's rows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vit_jax.config import PRESETS
from vit_jax.families import FAMILIES
from vit_jax.formats import timm_archs


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_family_presets_are_registered_with_counts_and_architectures(family):
    assert set(family.presets) <= set(PRESETS)
    assert set(family.golden_params) == set(family.presets)
    assert set(family.timm_presets) == set(family.presets)
    for preset, arch in family.timm_presets.items():
        assert timm_archs.architecture_fields(arch), (preset, arch)  # a row of the table covers it
        if family.timm_architectures:  # a family with rows of its own names its own architectures
            assert any(re.fullmatch(row.pattern, arch) for row in family.timm_architectures), (preset, arch)
        assert PRESETS[preset].pixel_mean == family.pixels["pixel_mean"], preset
        assert PRESETS[preset].pixel_std == family.pixels["pixel_std"], preset


def test_architecture_rows_do_not_overlap():
    """The first matching row wins; no example is matched by another family's row."""
    rows = timm_archs.ARCHITECTURES
    for row in rows:
        assert [other.example for other in rows if re.fullmatch(other.pattern, row.example)][0] == row.example



def test_design_doc_tables_hold_every_family_count():
    """docs/design.md's preset tables state each family preset's parameter count, as its module declares it."""
    text = (Path(__file__).parents[2] / "docs" / "design.md").read_text()
    missing = [f"{name}: {count:,}" for family in FAMILIES for name, count in family.golden_params.items()
               if f"{count:,}" not in text]
    assert not missing
