"""Names of the model's hook points: the one place they are spelled.

Every name is TransformerLens's, with TransformerLens's meaning (`blocks.0.ln1.hook_normalized` is
the LayerNorm output before its weight and bias, as there), so a name read in a report or passed to
a hook means what researchers know it to mean. The model, the analyses and the tests build names
with these functions instead of writing "blocks.{l}..." themselves.
"""

from __future__ import annotations

EMBED = "hook_embed"
POS_EMBED = "hook_pos_embed"
FINAL_NORMALIZED = "ln_final.hook_normalized"


def in_block(layer: int, site: str) -> str:
    """The hook `site` ("hook_resid_pre", "attn.hook_z", ...) of block `layer`."""
    return f"blocks.{layer}.{site}"


def resid_pre(layer: int) -> str:
    return in_block(layer, "hook_resid_pre")


def ln1_normalized(layer: int) -> str:
    return in_block(layer, "ln1.hook_normalized")


def attn_q(layer: int) -> str:
    return in_block(layer, "attn.hook_q")


def attn_k(layer: int) -> str:
    return in_block(layer, "attn.hook_k")


def attn_v(layer: int) -> str:
    return in_block(layer, "attn.hook_v")


def attn_scores(layer: int) -> str:
    return in_block(layer, "attn.hook_attn_scores")


def attn_pattern(layer: int) -> str:
    return in_block(layer, "attn.hook_pattern")


def attn_z(layer: int) -> str:
    return in_block(layer, "attn.hook_z")


def attn_out(layer: int) -> str:
    return in_block(layer, "hook_attn_out")


def resid_mid(layer: int) -> str:
    return in_block(layer, "hook_resid_mid")


def ln2_normalized(layer: int) -> str:
    return in_block(layer, "ln2.hook_normalized")


def mlp_pre(layer: int) -> str:
    return in_block(layer, "mlp.hook_pre")


def mlp_post(layer: int) -> str:
    return in_block(layer, "mlp.hook_post")


def mlp_out(layer: int) -> str:
    return in_block(layer, "hook_mlp_out")


def resid_post(layer: int) -> str:
    return in_block(layer, "hook_resid_post")


# The hook points of one block, in the order its forward pass reaches them.
BLOCK = (resid_pre, ln1_normalized, attn_q, attn_k, attn_v, attn_scores, attn_pattern, attn_z, attn_out,
         resid_mid, ln2_normalized, mlp_pre, mlp_post, mlp_out, resid_post)


def all_names(n_layers: int) -> list[str]:
    """Every hook point of a model with `n_layers` blocks, in forward order."""
    return [EMBED, POS_EMBED] + [name(l) for l in range(n_layers) for name in BLOCK] + [FINAL_NORMALIZED]


def layer_of(name: str) -> int:
    """The block a hook point belongs to: 'blocks.1.attn.hook_z' -> 1."""
    return int(name.split(".")[1])


def site_of(name: str) -> str:
    """A block's hook point without its block: 'blocks.1.attn.hook_z' -> 'attn.hook_z'."""
    return name.split(".", 2)[2]
