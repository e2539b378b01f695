"""The README's plug-in tables are generated from the registries; a stale copy fails here."""

from __future__ import annotations

import pytest

from recsys_mtl import plugin_tables
from recsys_mtl.weighting import weighting_methods


def test_readme_plugin_tables_match_the_registries(repo_root):
    readme = (repo_root / "README.md").read_text()
    assert plugin_tables.replace_in(readme, plugin_tables.render()) == readme, (
        "README.md's plug-in tables are stale: run `python -m recsys_mtl.plugin_tables --write`")


def test_every_registered_weighting_method_has_a_row_and_a_when_to_use_line():
    table = plugin_tables.weighting_table()
    for name, cls in weighting_methods().items():
        assert f"| `{name}` |" in table
        assert cls.when_to_use, f"weighting method {name!r} has no when_to_use line for the README"


def test_a_new_registered_method_makes_the_readme_stale(repo_root, monkeypatch):
    from recsys_mtl.weighting import base

    class Newcomer(base.WeightingMethod):
        when_to_use = "never"

    monkeypatch.setitem(base._REGISTRY, "newcomer", Newcomer)
    readme = (repo_root / "README.md").read_text()
    assert plugin_tables.replace_in(readme, plugin_tables.render()) != readme


def test_missing_markers_are_named():
    with pytest.raises(ValueError, match="markers are missing"):
        plugin_tables.replace_in("# no tables here\n", plugin_tables.render())
