"""Hook point names (reportgen.hooks): what the stages filter, sort and label names by."""

from __future__ import annotations

from reportgen import hooks as hp


def test_a_name_splits_into_its_block_and_site_and_back():
    names = hp.all_names(2)
    blocks = [n for n in names if hp.is_in_block(n)]
    assert [n for n in names if n not in blocks] == [hp.EMBED, hp.POS_EMBED, hp.FINAL_NORMALIZED]
    assert all(hp.in_block(hp.layer_of(n), hp.site_of(n)) == n for n in blocks)
    assert [hp.site_of(n) for n in blocks] == list(hp.BLOCK_SITES) * 2
    assert hp.site_of(hp.FINAL_NORMALIZED) == hp.FINAL_NORMALIZED


def test_site_filters_select_that_site_in_every_block():
    names = hp.all_names(3)
    assert [n for n in names if hp.at_sites(hp.ATTN_PATTERN)(n)] == [hp.attn_pattern(l) for l in range(3)]
    # a suffix test would also take blocks.l.mlp.hook_post for "hook_post": a site is matched whole
    assert [n for n in names if hp.at_sites("hook_post")(n)] == []


def test_forward_rank_sorts_names_by_layer_then_forward_order():
    blocks = [n for n in hp.all_names(2) if hp.is_in_block(n)]
    assert sorted(reversed(blocks), key=lambda n: (hp.layer_of(n), hp.forward_rank(n))) == blocks
    assert hp.forward_rank(hp.EMBED) < hp.forward_rank(hp.resid_pre(0)) < hp.forward_rank(hp.FINAL_NORMALIZED)
    assert hp.forward_rank("blocks.0.not_a_hook") == len(hp.ORDER)


def test_labels_as_reports_write_them():
    assert hp.label(hp.resid_post(1)) == "L1 resid_post"
    assert hp.label(hp.attn_z(0)) == "L0 attn.z"
    assert hp.label(hp.EMBED) == "embed"
    assert hp.short_site(hp.mlp_post(2)) == "mlp.post"
