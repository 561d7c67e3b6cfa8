"""Names of the model's hook points: the one place they are spelled.

Every name is TransformerLens's, with TransformerLens's meaning (`blocks.0.ln1.hook_normalized` is
the LayerNorm output before its weight and bias, as there), so a name read in a report or passed to
a hook means what researchers know it to mean. The model, the analyses, the results, the renderer
and the tests build, filter, sort and label names with what is here instead of writing
"blocks.{l}..." or a suffix themselves. Pure strings: every stage may import this module.

A block's hook points are `blocks.{l}.<site>`; the sites below are named as TransformerLens names
them within a block ("attn.hook_z"), and `site_of` takes a name back to its site.
"""

from __future__ import annotations

from typing import Callable

EMBED = "hook_embed"
POS_EMBED = "hook_pos_embed"
FINAL_NORMALIZED = "ln_final.hook_normalized"

# The hook point sites of one block, in the order its forward pass reaches them.
RESID_PRE = "hook_resid_pre"
LN1_NORMALIZED = "ln1.hook_normalized"
ATTN_Q = "attn.hook_q"
ATTN_K = "attn.hook_k"
ATTN_V = "attn.hook_v"
ATTN_SCORES = "attn.hook_attn_scores"
ATTN_PATTERN = "attn.hook_pattern"
ATTN_Z = "attn.hook_z"  # every head's output before W_O: [batch, pos, head, d_head]
ATTN_OUT = "hook_attn_out"
RESID_MID = "hook_resid_mid"
LN2_NORMALIZED = "ln2.hook_normalized"
MLP_PRE = "mlp.hook_pre"
MLP_POST = "mlp.hook_post"  # every neuron's activation: [batch, pos, d_mlp]
MLP_OUT = "hook_mlp_out"
RESID_POST = "hook_resid_post"
BLOCK_SITES = (RESID_PRE, LN1_NORMALIZED, ATTN_Q, ATTN_K, ATTN_V, ATTN_SCORES, ATTN_PATTERN, ATTN_Z, ATTN_OUT,
               RESID_MID, LN2_NORMALIZED, MLP_PRE, MLP_POST, MLP_OUT, RESID_POST)
RESID_SITES = (RESID_PRE, RESID_MID, RESID_POST)  # the residual stream of a block, in forward order


def in_block(layer: int, site: str) -> str:
    """The hook `site` ("hook_resid_pre", "attn.hook_z", ...) of block `layer`."""
    return f"blocks.{layer}.{site}"


def resid_pre(layer: int) -> str:
    return in_block(layer, RESID_PRE)


def ln1_normalized(layer: int) -> str:
    return in_block(layer, LN1_NORMALIZED)


def attn_q(layer: int) -> str:
    return in_block(layer, ATTN_Q)


def attn_k(layer: int) -> str:
    return in_block(layer, ATTN_K)


def attn_v(layer: int) -> str:
    return in_block(layer, ATTN_V)


def attn_scores(layer: int) -> str:
    return in_block(layer, ATTN_SCORES)


def attn_pattern(layer: int) -> str:
    return in_block(layer, ATTN_PATTERN)


def attn_z(layer: int) -> str:
    return in_block(layer, ATTN_Z)


def attn_out(layer: int) -> str:
    return in_block(layer, ATTN_OUT)


def resid_mid(layer: int) -> str:
    return in_block(layer, RESID_MID)


def ln2_normalized(layer: int) -> str:
    return in_block(layer, LN2_NORMALIZED)


def mlp_pre(layer: int) -> str:
    return in_block(layer, MLP_PRE)


def mlp_post(layer: int) -> str:
    return in_block(layer, MLP_POST)


def mlp_out(layer: int) -> str:
    return in_block(layer, MLP_OUT)


def resid_post(layer: int) -> str:
    return in_block(layer, RESID_POST)


def all_names(n_layers: int) -> list[str]:
    """Every hook point of a model with `n_layers` blocks, in forward order."""
    return [EMBED, POS_EMBED] + [in_block(l, site) for l in range(n_layers) for site in BLOCK_SITES] + [FINAL_NORMALIZED]


def stream(n_layers: int) -> list[str]:
    """The residual stream between blocks, as the logit lens and the probes read it: the embedding
    (block 0's resid_pre) and each block's output, in forward order."""
    return [resid_pre(0)] + [resid_post(l) for l in range(n_layers)]


def in_stream(name: str) -> bool:
    """Whether `name` is one of `stream(n)`, for any number of blocks."""
    return site_of(name) == RESID_POST or name == resid_pre(0)


def is_in_block(name: str) -> bool:
    return name.startswith("blocks.") and name.count(".") >= 2


def layer_of(name: str) -> int:
    """The block a hook point belongs to: 'blocks.1.attn.hook_z' -> 1."""
    return int(name.split(".")[1])


def site_of(name: str) -> str:
    """A block's hook point without its block: 'blocks.1.attn.hook_z' -> 'attn.hook_z'; a hook point
    outside the blocks ('hook_embed') is its own site."""
    return name.split(".", 2)[2] if is_in_block(name) else name


def at_sites(*sites: str) -> Callable[[str], bool]:
    """A filter of hook point names: those at one of `sites` in any block (e.g. `at_sites(ATTN_PATTERN)`,
    every layer's attention pattern), for `run_with_cache(..., names=...)`."""
    return lambda name: site_of(name) in sites


ORDER = (EMBED, POS_EMBED, *BLOCK_SITES, FINAL_NORMALIZED)


def forward_rank(name: str) -> int:
    """Where a hook point's site comes in a forward pass (the embeddings, a block's sites, the final
    LayerNorm), for sorting names by layer and then in forward order; unknown names after all."""
    site = site_of(name)
    return ORDER.index(site) if site in ORDER else len(ORDER)


def short_site(name: str) -> str:
    """A site as reports write it, without block and 'hook_': 'blocks.1.attn.hook_z' -> 'attn.z',
    'hook_embed' -> 'embed'."""
    return site_of(name).replace("hook_", "")


def label(name: str) -> str:
    """A hook point as reports write it: 'blocks.1.hook_resid_post' -> 'L1 resid_post'."""
    return f"L{layer_of(name)} {short_site(name)}" if is_in_block(name) else short_site(name)
