"""`reportgen export` and `reportgen import`: the demo models round-trip through TransformerLens and
`transformers` with the same logits and answers, models built in those libraries import with the
same logits, and every source reportgen cannot compute exactly is refused in one line."""

from __future__ import annotations

import copy
import hashlib
import json
import pickle
import warnings
from pathlib import Path

import pytest
import torch

from reportgen.cli import main
from reportgen.data.dataset import stratified_examples
from reportgen.data.tokenizer import Tokenizer
from reportgen import hooks as hp
from reportgen.model.checkpoint import load_checkpoint, save_checkpoint
from reportgen.model.interop import task_tokens
from reportgen.model.transformer import ModelConfig, Transformer
from reportgen.train.evaluate import greedy_decode

ROOT = Path(__file__).resolve().parents[1]
DEMOS = {"rev": ROOT / "runs/add3_rev/checkpoint_best.pt", "steps": ROOT / "runs/add3_steps/checkpoint_best.pt"}
TASK_FLAGS = {"rev": ["--answer-order", "reversed"], "steps": ["--with-steps"]}
ADD = {"task": "add", "min_digits": 1, "max_digits": 3, "with_steps": False, "answer_order": "plain"}
ADD_TOKENS = ["<pad>", "<bos>", "<eos>", *"0123456789+="]
NO_PROCESSING = dict(fold_ln=False, center_writing_weights=False, center_unembed=False, fold_value_biases=False)
ABS_TOL = 1e-4  # logits, float32


# ---------------------------------------------------------------- helpers
def cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def assert_refused(rc: int, err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("reportgen: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]


def export(capsys, ckpt: Path, to: str, out: Path) -> Path:
    rc, _, err = cli(capsys, "export", "--checkpoint", ckpt, "--to", to, "--out", out)
    assert rc == 0, err
    return out


@torch.no_grad()
def logits64(model: Transformer, tokens: torch.Tensor) -> torch.Tensor:
    return copy.deepcopy(model).double()(tokens)


def float32_tolerance(model: Transformer, tokens: torch.Tensor) -> float:
    """ABS_TOL, or twice reportgen's own float32 rounding error on these inputs where that is larger:
    two float32 implementations of one function differ by about their rounding errors (on add3_rev,
    whose logits reach 29, reportgen's float32 logits are up to 1.1e-4 from its float64 ones)."""
    with torch.no_grad():
        own = float((model(tokens).double() - logits64(model, tokens)).abs().max())
    return max(ABS_TOL, 2 * own)


def greedy_answers(logits_fn, tokenizer: Tokenizer, records: list[dict]) -> list[str]:
    """Greedy decoding through any model's logits: batches of prompts of equal length, one full
    forward pass per new token, stopping at EOS (reference for the other libraries' models)."""
    n_new = max(len(r["target"]) for r in records) + 1
    answers: dict[int, str] = {}
    by_len: dict[int, list[int]] = {}
    for i, r in enumerate(records):
        by_len.setdefault(len(r["prompt"]), []).append(i)
    for rows in by_len.values():
        tokens = torch.tensor([tokenizer.encode(records[i]["prompt"]) for i in rows])
        with torch.no_grad():
            for _ in range(n_new):
                tokens = torch.cat([tokens, logits_fn(tokens)[:, -1].argmax(-1, keepdim=True)], dim=1)
        for i, seq in zip(rows, tokens):
            answers[i] = tokenizer.decode(seq[len(records[i]["prompt"]) + 1:].tolist(), keep_specials=True)
    return [answers[i] for i in range(len(records))]


def task_records(task: dict, n: int = 96) -> list[dict]:
    return stratified_examples(task["task"], n, task["max_digits"], task["min_digits"], 7, task["with_steps"],
                               task["answer_order"])


def transformer_lens():
    tl = pytest.importorskip("transformer_lens")
    warnings.filterwarnings("ignore", message=".*HookedTransformer is deprecated.*")
    return tl


def tl_model(tl, directory: Path, dtype=torch.float32):
    """The exported model loaded as the README says, with no weight processing."""
    from safetensors.torch import load_file

    cfg = tl.HookedTransformerConfig(**json.loads((directory / "config.json").read_text()), device="cpu",
                                     dtype=dtype)
    model = tl.HookedTransformer(cfg)
    weights = {k: v.to(dtype) for k, v in load_file(directory / "model.safetensors").items()}
    model.load_and_process_state_dict(weights, **NO_PROCESSING)
    return model.eval()


def hf_model(directory: Path, dtype=torch.float32):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, local_files_only=True).eval()


# ---------------------------------------------------------------- export round trips
@pytest.mark.parametrize("demo", sorted(DEMOS))
def test_demo_exported_to_transformer_lens_computes_the_same_logits_and_answers(demo, tmp_path, capsys):
    tl = transformer_lens()
    ckpt = load_checkpoint(DEMOS[demo])
    out = export(capsys, DEMOS[demo], "transformer-lens", tmp_path / "tl")
    tokens = task_tokens(ckpt.task, ckpt.tokenizer, 128)
    model32, model64 = tl_model(tl, out), tl_model(tl, out, torch.float64)
    with torch.no_grad():
        assert float((model64(tokens) - logits64(ckpt.model, tokens)).abs().max()) < 1e-9  # the same function
        gap = float((model32(tokens) - ckpt.model(tokens)).abs().max())
    assert gap <= float32_tolerance(ckpt.model, tokens), gap
    records = task_records(ckpt.task)
    n_new = max(len(r["target"]) for r in records) + 1
    ours = greedy_decode(ckpt.model, ckpt.tokenizer, [r["prompt"] for r in records], n_new)
    assert greedy_answers(model32, ckpt.tokenizer, records) == ours
    assert sum(a == r["target"] for a, r in zip(ours, records)) >= 0.95 * len(records)  # real answers compared
    assert json.loads((out / "vocab.json").read_text()) == {t: i for i, t in enumerate(ckpt.tokenizer.vocab)}


@pytest.mark.parametrize("demo", sorted(DEMOS))
def test_every_hook_point_records_what_transformer_lens_records_under_its_name(demo, tmp_path, capsys):
    """Each reportgen hook point (`ln1.hook_normalized` before the LayerNorm's weight and bias
    included) holds TransformerLens's activation of the same name, in float64."""
    tl = transformer_lens()
    ckpt = load_checkpoint(DEMOS[demo])
    out = export(capsys, DEMOS[demo], "transformer-lens", tmp_path / "tl")
    tokens = task_tokens(ckpt.task, ckpt.tokenizer, 64)
    model64 = copy.deepcopy(ckpt.model).double()
    with torch.no_grad():
        _, theirs = tl_model(tl, out, torch.float64).run_with_cache(tokens)
        _, ours = model64.run_with_cache(tokens)
    assert list(ours) == hp.all_names(ckpt.model.cfg.n_layers)
    for name, value in ours.items():
        gap = (value - theirs[name]).nan_to_num(posinf=0, neginf=0).abs().max()  # masked scores are -inf in both
        assert value.shape == theirs[name].shape and float(gap) < 1e-9, (name, float(gap))
        assert torch.equal(value.isinf(), theirs[name].isinf()), name
    ln1, normalized = model64.blocks[0].ln1, ours[hp.ln1_normalized(0)]
    assert float((normalized * ln1.w.detach() + ln1.b.detach() - normalized).abs().max()) > 0.5  # w, b tell apart


@pytest.mark.parametrize("demo", sorted(DEMOS))
def test_demo_exported_to_hf_computes_the_same_logits_and_answers(demo, tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    ckpt = load_checkpoint(DEMOS[demo])
    out = export(capsys, DEMOS[demo], "hf", tmp_path / "hf")
    tokens = task_tokens(ckpt.task, ckpt.tokenizer, 128)
    model32, model64 = hf_model(out), hf_model(out, torch.float64)
    assert type(model32).__name__ == "GPT2LMHeadModel"
    with torch.no_grad():
        # b_U lives in ln_f.bias as a float32 vector c with c @ W_U = b_U: off by about 1e-7.
        assert float((model64(tokens).logits - logits64(ckpt.model, tokens)).abs().max()) < 1e-6
        gap = float((model32(tokens).logits - ckpt.model(tokens)).abs().max())
    assert gap <= float32_tolerance(ckpt.model, tokens), gap
    records = task_records(ckpt.task)
    n_new = max(len(r["target"]) for r in records) + 1
    ours = greedy_decode(ckpt.model, ckpt.tokenizer, [r["prompt"] for r in records], n_new)
    assert greedy_answers(lambda t: model32(t).logits, ckpt.tokenizer, records) == ours
    tokenizer = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    texts = [r["prompt"] + r["target"] for r in records]
    assert [tokenizer(" ".join(t))["input_ids"] for t in texts] == [ckpt.tokenizer.encode(t) for t in texts]
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (
        ckpt.tokenizer.bos_id, ckpt.tokenizer.eos_id, ckpt.tokenizer.pad_id)


@pytest.mark.parametrize("to", ["transformer-lens", "hf"])
@pytest.mark.parametrize("demo", sorted(DEMOS))
def test_an_export_imported_back_gives_identical_weights(demo, to, tmp_path, capsys):
    out = export(capsys, DEMOS[demo], to, tmp_path / "export")
    rc, stdout, err = cli(capsys, "import", "--from", to, out, "--task", "add", "--digits", "1-3", *TASK_FLAGS[demo],
                          "--vocab", out / "vocab.json", "--out", tmp_path / "run" / "checkpoint.pt")
    assert rc == 0, err
    original, back = load_checkpoint(DEMOS[demo]), load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    a, b = original.model.state_dict(), back.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert back.tokenizer == original.tokenizer and back.task == original.task
    origin = back.meta["imported_from"]
    assert origin["kind"] == to and origin["path"] == str(out.resolve())
    assert origin["files"]["weights"] == str(out.resolve() / "model.safetensors")
    assert origin["sha256"]["weights"] == hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    assert set(origin["sha256"]) == {"config", "weights", "vocab_map"}
    assert ("restored" in stdout) == (to == "hf")


def test_hf_export_of_a_model_whose_unembedding_bias_cannot_be_folded_is_refused(tmp_path, capsys):
    """d_model 16 < d_vocab 21: no c with c @ W_U = b_U, so GPT-2 cannot compute the same logits."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(n_layers=1, n_heads=2, d_model=16, d_mlp=32, n_ctx=24))
    with torch.no_grad():
        model.b_U.normal_()
    save_checkpoint(tmp_path / "narrow.pt", model, Tokenizer(), data=ADD)
    rc, _, err = cli(capsys, "export", "--checkpoint", tmp_path / "narrow.pt", "--to", "hf", "--out", tmp_path / "hf")
    assert_refused(rc, err, "GPT-2 has no unembedding bias", "rank below d_vocab", "--to transformer-lens")
    assert not (tmp_path / "hf").exists()
    export(capsys, tmp_path / "narrow.pt", "transformer-lens", tmp_path / "tl")  # TransformerLens has b_U


def test_export_never_replaces_a_directory_of_the_users_files(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    rc, _, err = cli(capsys, "export", "--checkpoint", DEMOS["rev"], "--to", "transformer-lens", "--out", mine)
    assert_refused(rc, err, str(mine))
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    export(capsys, DEMOS["rev"], "transformer-lens", tmp_path / "tl")
    export(capsys, DEMOS["rev"], "hf", tmp_path / "tl")  # its own earlier export is replaced
    assert (tmp_path / "tl" / "tokenizer.json").is_file()


# ---------------------------------------------------------------- import from the other libraries
def randomized(model: torch.nn.Module, seed: int) -> None:
    """Every parameter random (biases and LayerNorm scales too), so that each must map to its place."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 1.0 if name.endswith((".w", ".weight")) and p.dim() == 1 else 0.0
            p.copy_(scale + 0.3 * torch.randn(p.shape, generator=g))


def shuffled_map(d_vocab: int, seed: int) -> dict[str, int]:
    """reportgen's tokens for addition at random ids of a larger vocabulary."""
    ids = torch.randperm(d_vocab, generator=torch.Generator().manual_seed(seed)).tolist()
    return {t: ids[i] for i, t in enumerate(ADD_TOKENS)}


@pytest.mark.parametrize("normalization", ["LN", "LNPre"])
def test_a_hooked_transformer_imports_with_the_same_logits(normalization, tmp_path, capsys):
    tl = transformer_lens()
    cfg = tl.HookedTransformerConfig(n_layers=2, d_model=32, d_head=8, n_heads=4, d_mlp=64, n_ctx=24, d_vocab=24,
                                     act_fn="gelu", normalization_type=normalization, device="cpu", seed=0)
    source = tl.HookedTransformer(cfg).eval()
    randomized(source, 1)
    src = tmp_path / "tl_model"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(cfg.to_dict(), default=str))  # as the README says to save it
    torch.save(source.state_dict(), src / "weights.pt")
    (tmp_path / "map.json").write_text(json.dumps(shuffled_map(24, 2)))
    rc, _, err = cli(capsys, "import", "--from", "transformer-lens", src, "--task", "add", "--digits", "1-3",
                     "--vocab", tmp_path / "map.json", "--out", tmp_path / "run" / "checkpoint.pt")
    assert rc == 0, err
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    tokens = task_tokens(ADD, ckpt.tokenizer, 96)
    with torch.no_grad():
        assert float((ckpt.model(tokens) - source(tokens)).abs().max()) <= ABS_TOL
    assert ckpt.tokenizer.encode("12+3=") == [shuffled_map(24, 2)[t] for t in ["<bos>", *"12+3="]]
    assert sum(t.startswith("<unused:") for t in ckpt.tokenizer.vocab) == 24 - len(ADD_TOKENS)


def test_a_gpt2_model_with_tied_embeddings_imports_with_the_same_logits(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=20, n_positions=24, n_embd=32, n_layer=2, n_head=4, n_inner=48,
                                     activation_function="gelu", tie_word_embeddings=True)
    torch.manual_seed(0)
    source = transformers.GPT2LMHeadModel(config).eval()
    randomized(source, 3)
    source.save_pretrained(tmp_path / "gpt2")
    (tmp_path / "map.json").write_text(json.dumps(shuffled_map(20, 4)))
    rc, stdout, err = cli(capsys, "import", "--from", "hf", tmp_path / "gpt2", "--task", "add", "--digits", "1-3",
                          "--vocab", tmp_path / "map.json", "--out", tmp_path / "run" / "checkpoint.pt")
    assert rc == 0, err
    assert "tied embeddings" in stdout and "b_U set to 0" in stdout
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    tokens = task_tokens(ADD, ckpt.tokenizer, 96)
    with torch.no_grad():
        assert float((ckpt.model(tokens) - source(tokens).logits).abs().max()) <= ABS_TOL


def permuted_demo(capsys, tmp_path: Path, seed: int = 5) -> tuple[Path, Path]:
    """add3_rev as a TransformerLens model trained elsewhere: its token ids permuted within a
    vocabulary of 25, weights in a .pt state dict. Returns (source dir, vocab map)."""
    from safetensors.torch import load_file

    out = export(capsys, DEMOS["rev"], "transformer-lens", tmp_path / "export")
    weights = load_file(out / "model.safetensors")
    old = json.loads((out / "vocab.json").read_text())
    ids = torch.randperm(25, generator=torch.Generator().manual_seed(seed))[:21]
    new_map = {t: int(ids[i]) for t, i in old.items() if t in ADD_TOKENS}
    W_E = 0.01 * torch.randn(25, 64)
    W_E[ids] = weights["embed.W_E"]
    W_U, b_U = torch.zeros(64, 25), torch.full((25,), -3.0)
    W_U[:, ids], b_U[ids] = weights["unembed.W_U"], weights["unembed.b_U"]
    weights.update({"embed.W_E": W_E, "unembed.W_U": W_U, "unembed.b_U": b_U})
    src = tmp_path / "elsewhere"
    src.mkdir()
    config = json.loads((out / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "d_vocab": 25, "d_vocab_out": 25}))
    torch.save(weights, src / "model.pt")
    (tmp_path / "map.json").write_text(json.dumps(new_map))
    return src, tmp_path / "map.json"


def test_a_model_with_its_own_token_ids_answers_as_the_original(tmp_path, capsys):
    """The vocab map puts each character at the source's id: eval gives the original's answers."""
    src, vocab = permuted_demo(capsys, tmp_path)
    rc, _, err = cli(capsys, "import", "--from", "transformer-lens", src, "--task", "add", "--digits", "1-3",
                     "--answer-order", "reversed", "--vocab", vocab, "--out", tmp_path / "run" / "checkpoint.pt")
    assert rc == 0, err
    results = []
    for ckpt in (DEMOS["rev"], tmp_path / "run" / "checkpoint.pt"):
        rc, out, err = cli(capsys, "eval", "--checkpoint", ckpt, "--instances", "200", "--json")
        assert rc == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert results[1]["exact_match"] == results[0]["exact_match"] >= 0.95
    assert results[1]["by_stratum"] == results[0]["by_stratum"]


# ---------------------------------------------------------------- refusals
def tl_source(tmp_path: Path, ctx: int = 24, **changes) -> Path:
    """A supported TransformerLens source (reportgen's own export of a small random model with a
    context of `ctx`), with `changes` to its config (`...` deletes an option)."""
    from safetensors.torch import save_file

    from reportgen.model.interop import tl_config, tl_state_dict

    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(n_layers=1, n_heads=2, d_model=16, d_mlp=32, n_ctx=ctx, d_vocab=15))
    config = {k: v for k, v in {**tl_config(model.cfg), **changes}.items() if v is not ...}
    (src / "config.json").write_text(json.dumps(config))
    save_file(tl_state_dict(model), src / "model.safetensors")
    (tmp_path / "map.json").write_text(json.dumps({t: i for i, t in enumerate(ADD_TOKENS)}))
    return src


def refused_import(capsys, tmp_path: Path, src, *needles, kind="transformer-lens", vocab=None, out=None) -> None:
    """`reportgen import` of `src` fails in one line holding `needles` and leaves --out as it was."""
    out = out or tmp_path / "run" / "checkpoint.pt"
    before = out.read_bytes() if out.exists() else None
    rc, _, err = cli(capsys, "import", "--from", kind, src, "--task", "add", "--digits", "1-3",
                     "--vocab", vocab or tmp_path / "map.json", "--out", out)
    assert_refused(rc, err, *needles)
    assert (out.read_bytes() if out.exists() else None) == before


def test_a_supported_source_imports(tmp_path, capsys):
    """The base of the refusal tests below is itself accepted (so each refusal is its one change)."""
    src = tl_source(tmp_path)
    rc, _, err = cli(capsys, "import", "--from", "transformer-lens", src, "--task", "add", "--digits", "1-3",
                     "--vocab", tmp_path / "map.json", "--out", tmp_path / "run" / "checkpoint.pt")
    assert rc == 0, err


@pytest.mark.parametrize("changes, needles", [
    ({"positional_embedding_type": "rotary"}, ["positional_embedding_type='rotary'", "learned absolute positions"]),
    ({"normalization_type": "RMS"}, ["normalization_type='RMS'", "LayerNorm"]),
    ({"act_fn": "gelu_new"}, ["act_fn='gelu_new'", "exact GELU"]),
    ({"act_fn": ...}, ["act_fn is not given", "'relu'"]),
    ({"parallel_attn_mlp": True}, ["parallel_attn_mlp=True"]),
    ({"gated_mlp": True}, ["gated_mlp=True"]),
    ({"attn_only": True}, ["attn_only=True"]),
    ({"n_key_value_heads": 1}, ["n_key_value_heads=1", "grouped-query"]),
    ({"use_local_attn": True}, ["use_local_attn=True"]),
    ({"normalization_type": None}, ["normalization_type=None"]),
    ({"d_head": 4}, ["d_head * n_heads (4 * 2) differs from d_model (16)"]),
    ({"some_new_option": 3}, ["unknown TransformerLens option some_new_option"]),
    ({"n_ctx": 20}, ["pos_embed.W_pos has shape (24, 16), its config says (20, 16)"]),
    ({"d_vocab": "15"}, ["needs d_vocab as a positive integer"]),
])
def test_unsupported_transformer_lens_configs_are_refused_by_name(changes, needles, tmp_path, capsys):
    refused_import(capsys, tmp_path, tl_source(tmp_path, **changes), *needles)


@pytest.mark.parametrize("changes, needles", [
    ({"activation_function": "gelu_new"}, ["activation_function='gelu_new'", "tanh approximation"]),
    ({"activation_function": ...}, ["activation_function='gelu_new' (the default)"]),
    ({"model_type": "llama"}, ["model_type 'llama'", "GPT-2"]),
    ({"scale_attn_by_inverse_layer_idx": True}, ["scale_attn_by_inverse_layer_idx=True"]),
])
def test_unsupported_hf_configs_are_refused_by_name(changes, needles, tmp_path, capsys):
    out = export(capsys, DEMOS["rev"], "hf", tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    src = tmp_path / "changed"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({k: v for k, v in {**config, **changes}.items() if v is not ...}))
    (src / "model.safetensors").write_bytes((out / "model.safetensors").read_bytes())
    refused_import(capsys, tmp_path, src, *needles, kind="hf", vocab=out / "vocab.json")


@pytest.mark.parametrize("edit, needles", [
    (lambda m: m.pop("="), ["does not map =", "needs <pad> <bos> <eos> 0 1 2 3 4 5 6 7 8 9 + ="]),
    (lambda m: m.pop("<eos>"), ["does not map <eos>"]),
    (lambda m: m.update({"+": m["0"]}), ["'0' and '+' both map to id 3"]),
    (lambda m: m.update({"+": 15}), ["'+' maps to 15", "from 0 to 14"]),
    (lambda m: m.update({"+": "13"}), ["'+' maps to \"13\""]),
    (lambda m: m.update({"x": 14}), ["'x' is not a reportgen token"]),
])
def test_bad_vocab_maps_are_refused(edit, needles, tmp_path, capsys):
    src = tl_source(tmp_path)
    mapping = json.loads((tmp_path / "map.json").read_text())
    edit(mapping)
    (tmp_path / "map.json").write_text(json.dumps(mapping))
    refused_import(capsys, tmp_path, src, "vocab map", *needles)


def test_a_scratchpad_task_needs_its_marks_mapped(tmp_path, capsys):
    src = tl_source(tmp_path)
    rc, _, err = cli(capsys, "import", "--from", "transformer-lens", src, "--task", "add", "--digits", "1-3",
                     "--with-steps", "--vocab", tmp_path / "map.json", "--out", tmp_path / "run" / "checkpoint.pt")
    assert_refused(rc, err, "does not map ;, |, c")


class Payload:
    """Stands for any Python object a pickle would rebuild (and could run code doing so)."""


@pytest.mark.parametrize("write, needles", [
    (lambda p: p.write_bytes(pickle.dumps({"embed.W_E": torch.zeros(2)})), ["neither a safetensors file nor a torch"]),
    (lambda p: torch.save({"embed.W_E": Payload()}, p), ["could run code"]),
    (lambda p: torch.save([torch.zeros(2)], p), ["does not hold a state dict"]),
    (lambda p: p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all"), ["not a valid safetensors file"]),
])
def test_unsafe_or_foreign_weight_files_are_refused(write, needles, tmp_path, capsys):
    src = tl_source(tmp_path)
    (src / "model.safetensors").unlink()
    write(src / "weights.pt")
    refused_import(capsys, tmp_path, src, *needles)


def test_missing_and_malformed_sources_are_refused(tmp_path, capsys):
    refused_import(capsys, tmp_path, tmp_path / "nowhere", "not found", "config.json")
    src = tl_source(tmp_path)
    (src / "config.json").write_text("{broken")
    refused_import(capsys, tmp_path, src, "not valid JSON")
    (src / "config.json").unlink()
    refused_import(capsys, tmp_path, src, "config.json not found")
    src = tl_source(tmp_path)
    torch.save({}, src / "other.pt")
    (src / "model.safetensors").rename(src / "more.safetensors")
    refused_import(capsys, tmp_path, src, "several weights files (more.safetensors, other.pt)")
    rc, _, err = cli(capsys, "import", "--from", "transformer-lens", tl_source(tmp_path), "--task", "add", "--digits",
                     "3-1", "--vocab", tmp_path / "map.json", "--out", tmp_path / "run" / "c.pt")
    assert_refused(rc, err, "--digits '3-1'")


def test_import_never_replaces_a_file_it_did_not_write(tmp_path, capsys):
    src = tl_source(tmp_path)
    mine = tmp_path / "run" / "checkpoint.pt"
    mine.parent.mkdir()
    mine.write_text("my notes")
    refused_import(capsys, tmp_path, src, "not a checkpoint an earlier `reportgen import` wrote", out=mine)
    assert mine.read_text() == "my notes"
    argv = ["import", "--from", "transformer-lens", src, "--task", "add", "--digits", "1-3",
            "--vocab", tmp_path / "map.json", "--out", tmp_path / "run" / "again.pt"]
    assert cli(capsys, *argv)[0] == 0
    assert cli(capsys, *argv)[0] == 0  # its own earlier import is replaced


def test_a_context_too_short_for_the_task_is_refused(tmp_path, capsys):
    refused_import(capsys, tmp_path, tl_source(tmp_path, ctx=10), "context (10 positions)", "14 tokens")


# ---------------------------------------------------------------- end to end
@pytest.mark.slow
def test_an_imported_model_builds_a_report(tmp_path, capsys, monkeypatch):
    src, vocab = permuted_demo(capsys, tmp_path)
    rc, _, err = cli(capsys, "import", "--from", "transformer-lens", src, "--task", "add", "--digits", "1-3",
                     "--answer-order", "reversed", "--vocab", vocab,
                     "--out", tmp_path / "elsewhere_run" / "checkpoint.pt")
    assert rc == 0, err
    (tmp_path / "fast.yaml").write_text("n_examples: 40\nn_example_pages: 2\nprobing:\n  n_examples: 40\n")
    monkeypatch.chdir(tmp_path)
    rc, _, err = cli(capsys, "build", "--checkpoint", "elsewhere_run/checkpoint.pt", "--config", "fast.yaml",
                     "--no-pdf", "--out", "site")
    assert rc == 0, err
    results = json.loads((tmp_path / "site" / "results.json").read_text())
    (model,) = results["models"]
    assert model["accuracy"]["exact_match"]["mean"] >= 0.95
    origin = model["provenance"]["train_config"]["imported_from"]
    assert origin["kind"] == "transformer-lens" and origin["path"] == str(src.resolve())
    assert "imported_from" in (tmp_path / "site" / "provenance.html").read_text()
