"""Frozen text encoder (bundled MiniLM-L6 and any local HF folder) and prompt expansion."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import torch

from chronotope.text.encoder import TextEncoder
from chronotope.text.expand import ChatExpander, expand, expand_prompt
from chronotope.world.parser import parse_prompt

PROMPTS = ["a red circle moves left on a black background", "a small blue square", ""]


@pytest.fixture(scope="module")
def minilm() -> TextEncoder:
    return TextEncoder(max_length=16)


def test_shapes_dim_and_frozen(minilm):
    emb, mask = minilm.encode(PROMPTS)
    assert minilm.dim == 384
    assert emb.shape[0] == 3 and emb.shape[2] == 384 and emb.dtype == torch.float32
    assert mask.shape == emb.shape[:2] and mask.dtype == torch.bool
    assert emb.shape[1] <= 16  # truncated to max_length
    assert all(not p.requires_grad for p in minilm.model.parameters()) and not minilm.model.training
    assert not mask[2].any() and bool((emb[2] == 0).all())  # "" = null caption: the DiT's learned null token
    e, m = minilm.encode([""])
    assert e.shape == (1, 1, 384) and not m.any()
    assert bool((emb[~mask] == 0).all()) and bool((emb[mask].abs().sum(-1) > 0).all())


def test_mask_matches_tokenizer(minilm):
    _, mask = minilm.encode(PROMPTS)
    tok = minilm.tokenizer(PROMPTS[:2], padding=True, truncation=True, max_length=16, return_tensors="pt")
    assert torch.equal(mask[:2], tok["attention_mask"].bool())
    long = " ".join(["word"] * 100)
    _, m = minilm.encode([long])
    assert m.shape == (1, 16) and m.all()


def test_deterministic_batch_independent_and_distinct(tmp_path):
    enc = TextEncoder(max_length=16, cache_size=0)
    a, ma = enc.encode(PROMPTS)
    b, mb = enc.encode(PROMPTS)
    assert torch.equal(a, b) and torch.equal(ma, mb)
    single, _ = enc.encode([PROMPTS[1]])
    n = int(ma[1].sum())
    torch.testing.assert_close(single[0, :n], a[1, :n], atol=1e-5, rtol=1e-5)  # padding does not leak
    x, _ = enc.encode(["a red circle"])
    y, _ = enc.encode(["a blue circle"])
    assert not torch.allclose(x, y, atol=1e-3)


def test_cache_hits_and_lru_eviction():
    enc = TextEncoder(max_length=16, cache_size=2)
    calls = []
    original = enc._encode_uncached

    def counting(prompts):
        calls.append(list(prompts))
        return original(prompts)

    enc._encode_uncached = counting
    first, _ = enc.encode(["a", "b", "a"])
    assert calls == [["a", "b"]]  # duplicates encoded once
    again, _ = enc.encode(["b", "a"])
    assert len(calls) == 1 and torch.equal(again[1], first[0])
    enc.encode(["c"])  # evicts the least recently used ("b")
    enc.encode(["b"])
    assert calls[-1] == ["b"] and len(calls) == 3


def test_missing_path_raises_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TextEncoder(path=tmp_path / "nope")


def _tiny_vocab(folder: Path) -> Path:
    words = "a an the red blue green circle square triangle moves left right on black background".split()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    path = folder / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n")
    return path


def test_bert_folder_by_path(tmp_path):
    from transformers import BertConfig, BertModel, BertTokenizer

    torch.manual_seed(0)
    tok = BertTokenizer(str(_tiny_vocab(tmp_path)))
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    folder = tmp_path / "tiny-bert"
    BertModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    enc = TextEncoder(path=folder, max_length=12)
    emb, mask = enc.encode(["a red circle", "the blue square moves left on a black background and the red circle"])
    assert enc.dim == 32 and emb.shape == (2, 12, 32)
    assert mask[0].sum() == 5 and mask[1].all()  # [CLS] a red circle [SEP]; the long one truncated
    assert not torch.allclose(emb[0, 1], emb[1, 1])


def test_t5_encoder_folder_by_path(tmp_path):
    from transformers import BertTokenizer, T5Config, T5Model

    torch.manual_seed(0)
    tok = BertTokenizer(str(_tiny_vocab(tmp_path)))
    cfg = T5Config(vocab_size=len(tok), d_model=24, d_kv=8, d_ff=48, num_layers=1, num_decoder_layers=1,
                   num_heads=3, pad_token_id=0, decoder_start_token_id=0)
    folder = tmp_path / "tiny-t5"
    T5Model(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    enc = TextEncoder(path=folder)
    assert type(enc.model).__name__ == "T5EncoderModel" and enc.dim == 24
    emb, mask = enc.encode(["a red circle"])
    assert emb.shape == (1, 5, 24) and mask.all() and torch.isfinite(emb).all()


# --- prompt expansion -------------------------------------------------------------------------------

def test_world_expansion_keeps_given_attributes_and_fills_the_rest():
    prompt = "a red circle and a small blue square on a white background"
    for seed in range(20):
        out = expand(prompt, seed)
        assert out.expanded and out.text != prompt and "objects[1].size" not in out.missing
        spec = parse_prompt(out.text)  # the caption must be in the World's language
        assert spec == out.spec
        assert spec["background"] == "white"
        red, blue = spec["objects"]
        assert (red["color"], red["shape"]) == ("red", "circle")
        assert (blue["color"], blue["shape"], blue["size"]) == ("blue", "square", "small")
        assert red["size"] is not None and red["motion"] is not None  # filled in
    texts = {expand_prompt(prompt, seed) for seed in range(20)}
    assert len(texts) > 10  # the seed chooses the open attributes and the wording
    assert expand_prompt(prompt, 3) == expand_prompt(prompt, 3)  # deterministic per seed


def test_expansion_switches_and_non_world_prompts():
    complete = "a small red circle slowly moves left on a black background"
    assert expand_prompt(complete, 0) == complete  # nothing open: kept as written
    forced = expand(complete, 0, enabled=True)
    assert forced.expanded and parse_prompt(forced.text)["objects"] == parse_prompt(complete)["objects"]
    assert expand_prompt("a red circle", 0, enabled=False) == "a red circle"
    other = expand("a cat playing the piano", 0)
    assert other.text == "a cat playing the piano" and not other.expanded and "not a World prompt" in other.note


class _ChatHandler(BaseHTTPRequestHandler):
    requests: list[dict] = []
    status = 200

    def do_POST(self):  # noqa: N802 (http.server API)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        if type(self).status != 200:
            self.send_response(type(self).status)
            self.end_headers()
            self.wfile.write(b"model not loaded")
            return
        reply = {"choices": [{"message": {"role": "assistant",
                                          "content": f"  A large {body['messages'][1]['content']} slowly rises. "}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):  # keep test output quiet
        pass


@pytest.fixture()
def chat_server():
    server = HTTPServer(("127.0.0.1", 0), _ChatHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _ChatHandler.requests, _ChatHandler.status = [], 200
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_chat_expander_against_local_server(chat_server):
    chat = ChatExpander(chat_server + "/", "tiny-llm", api_key="sk-test")
    out = expand("red circle", seed=7, expander=chat)
    assert out.expanded and out.text == "A large red circle slowly rises."
    req = _ChatHandler.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sk-test"
    assert req["body"]["model"] == "tiny-llm" and req["body"]["seed"] == 7
    assert req["body"]["messages"][0]["role"] == "system" and "caption" in req["body"]["messages"][0]["content"]
    assert expand_prompt("red circle", 0, enabled=False, expander=chat) == "red circle"
    _ChatHandler.status = 500
    with pytest.raises(RuntimeError, match="HTTP 500"):
        chat("red circle")


def test_chat_expander_unreachable_is_clear():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectionError, match="unreachable"):
        ChatExpander(f"http://127.0.0.1:{port}/v1", "m", timeout=5)("a red circle")
    with pytest.raises(ValueError, match="http"):
        ChatExpander("localhost:8000", "m")


def test_cli_expand(capsys):
    from chronotope.cli import main

    assert main(["expand", "a red circle", "--seed", "3"]) == 0
    out = capsys.readouterr().out.strip()
    assert out == expand_prompt("a red circle", 3) and out != "a red circle"
    assert main(["expand", "a cat"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == "a cat" and "not a World prompt" in captured.err


def test_truncation_says_how_much_of_a_long_prompt_the_encoder_reads(minilm):
    assert minilm.truncation("a red circle moves left") is None  # 7 tokens of 16
    prompt = "a red circle moves left on a black background " * 50
    total, kept, chars = minilm.truncation(prompt)
    assert kept == 16 and total > 400 and 0 < chars < 100
    emb, _ = minilm.encode([prompt])
    assert torch.equal(emb, minilm.encode([prompt[:chars]])[0])  # what is past `chars` has no effect


def test_expansion_note_names_a_long_prompt_instead_of_echoing_it():
    out = expand("hello there " * 1000, seed=0)
    assert not out.expanded and "not a World prompt" in out.note
    assert len(out.note) < 400 and "12,000 characters" in out.note
    short = expand("一只红色的圆圈 🔴", seed=0)
    assert not short.expanded and "一只红色的圆圈 🔴" in short.note  # a short prompt is quoted as written


class _Fruit:
    """A toy data source's language: "N apples" names how many; the caption writer fills a missing colour."""

    name, character, traits = "fruit", "kind", ("color",)
    words = {"size": (), "color": ("red", "green"), "shape": (), "motion": (), "speed": (), "background": ()}

    def parse(self, prompt):
        words = prompt.split()
        if "apple" not in words:
            return None, "no fruit named"
        color = next((w for w in words if w in self.words["color"]), None)
        return {"objects": [{"kind": "apple", "color": color}]}, ""

    def unspecified(self, spec):
        return [f"objects[{i}].color" for i, o in enumerate(spec["objects"]) if o["color"] is None]

    def caption(self, spec, seed):
        objects = [{**o, "color": o["color"] or self.words["color"][seed % 2]} for o in spec["objects"]]
        return " and ".join(f"a {o['color']} {o['kind']}" for o in objects), {"objects": objects}


FRUIT = _Fruit()


def test_expansion_speaks_the_vocabulary_it_is_given():
    from chronotope.text.characters import carry_characters
    from chronotope.text.vocabulary import Vocabulary, load_vocabulary, model_vocabulary

    out = expand("an apple", 1, vocabulary=FRUIT)
    assert out.expanded and out.text == "a green apple" and out.missing == ["objects[0].color"]
    assert "not a fruit prompt" in expand("a red circle", 0, vocabulary=FRUIT).note
    kept = expand("a red circle", 0, vocabulary=None)  # a model trained on other data: prompts as written
    assert kept.text == "a red circle" and not kept.expanded and kept.spec is None and "no vocabulary" in kept.note
    # a storyboard's apple keeps the colour an earlier shot gave it (then nothing is open: the prompt is kept)
    carried = carry_characters(["a red apple", "an apple"], [0, 1], True, "characters", FRUIT)
    assert carried[1] == ("an apple", {"objects": [{"kind": "apple", "color": "red"}]})
    assert carry_characters(["a red apple", "an apple"], [0, 1], True, "none", FRUIT)[1][0] == "a green apple"
    assert carry_characters(["a red circle"], [0], True, "characters", None) == [("a red circle", None)]
    # a model folder names its vocabulary; one that names none speaks the World's
    world = model_vocabulary({})
    assert isinstance(world, Vocabulary) and world is load_vocabulary("chronotope.world.vocabulary:WORLD")
    assert model_vocabulary({"vocabulary": None}) is None
    assert model_vocabulary({"vocabulary": "tests.test_text:FRUIT"}).name == "fruit"  # any importable one
    for bad in ("chronotope.world.vocabulary", "chronotope.world.vocabulary:NOTHING", "chronotope.request:MODES"):
        with pytest.raises(ValueError, match="vocabulary"):
            load_vocabulary(bad)


def test_carried_characters_match_the_world_expander():
    from chronotope.text.characters import carry_characters

    prompts = ["a large red circle moves left", "a red circle on a white background", "a cat", "a blue square"]
    shots = carry_characters(prompts, [0, 1, 2, 3], True, "characters")
    assert shots[1][1]["objects"][0]["size"] == "large" and shots[1][1]["background"] == "white"
    assert shots[2] == ("a cat", None)
    assert shots[3][0] == expand_prompt("a blue square", 3)  # nothing carried: the expander's own caption
    assert carry_characters(prompts, [0, 1, 2, 3], False, "characters")[1][0] == prompts[1]  # expansion off
