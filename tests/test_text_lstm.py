"""CharLSTM (torch.func-compatible character LSTM), its log-perplexity scorer, and the text data helpers."""

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import unlearnkit as uk
from unlearnkit.data.text import CharVocab, Quote, attribution_name, char_windows, load_fortunes, python_docs_excerpt
from unlearnkit.errors import DataError, ModelError
from unlearnkit.influence.functional import FlatModel
from unlearnkit.influence.gradients import per_sample_gradients
from unlearnkit.influence.hessian import HessianOperator
from unlearnkit.models import CharLSTM, char_log_perplexity, for_data
from unlearnkit.training import TrainConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_windows(n=12, window=5, vocab=6, seed=0):
    codes = np.random.default_rng(seed).integers(0, vocab, size=n + window)
    return char_windows(codes, window, vocab_size=vocab)


def tiny_model(seed=0, dtype=torch.float64, **kw):
    config = dict(vocab_size=6, window=5, embed_dim=4, hidden=5, layers=2, l2=1e-2) | kw
    model = CharLSTM(**config).to(dtype)
    model.init_parameters(torch.Generator().manual_seed(seed))
    return model


# ------------------------------------------------------------------------------ CharLSTM


def test_forward_shape_registry_and_for_data():
    data = tiny_windows()
    model = for_data("char-lstm", data, hidden=7)
    assert isinstance(model, CharLSTM) and model.kind in uk.models.MODELS
    assert (model.vocab_size, model.window, model.hidden, model.n_classes) == (6, 5, 7, 6)
    assert model.input_shape == (5,)
    X, _ = data.tensors()
    assert model(X).shape == (len(data), 6)
    rebuilt = uk.models.build("char-lstm", **model.config)
    assert rebuilt.config == model.config
    assert model.first_layer() is model.embedding and model.head() is model.output
    assert len(model.blocks()) == model.layers == 1
    with pytest.raises(ModelError, match="character indices"):
        model.check_data(data.replace(X=data.X + 0.5))


def test_recurrence_equals_torch_nn_lstm():
    model = tiny_model()
    ref = torch.nn.LSTM(4, 5, num_layers=2, batch_first=True).to(torch.float64)
    with torch.no_grad():  # same weights; the gate order i, f, g, o is nn.LSTM's
        for k, layer in enumerate(model.lstm):
            getattr(ref, f"weight_ih_l{k}").copy_(layer.input_gates.weight)
            getattr(ref, f"bias_ih_l{k}").copy_(layer.input_gates.bias)
            getattr(ref, f"weight_hh_l{k}").copy_(layer.hidden_gates.weight)
            getattr(ref, f"bias_hh_l{k}").zero_()
        X, _ = tiny_windows().tensors(dtype=torch.float64)
        _, (h_n, _) = ref(model.embedding(X.long()))
        torch.testing.assert_close(model(X), model.output(h_n[-1]), atol=1e-12, rtol=0)


def test_init_is_deterministic_and_covers_the_embedding():
    a, b, c = tiny_model(seed=3), tiny_model(seed=3), tiny_model(seed=4)
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb), name
        assert not torch.equal(pa, pc), name
    h = a.hidden
    assert torch.all(a.lstm[0].input_gates.bias[h:2 * h] == 1)


def test_per_sample_gradients_match_autograd_row_by_row():
    data = tiny_windows(n=10)
    model = tiny_model(dtype=torch.float32)
    flat = FlatModel(model)
    G = per_sample_gradients(flat, data, batch_size=4)
    X, y = data.tensors()
    for i in range(len(data)):
        model.zero_grad()
        F.cross_entropy(model(X[i:i + 1]), y[i:i + 1]).backward()
        expected = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        torch.testing.assert_close(G[i], expected, atol=1e-5, rtol=0)


def test_hessian_and_ggn_products_match_autograd():
    data = tiny_windows(n=8)
    model = tiny_model()
    flat = FlatModel(model)
    theta = flat.theta()
    X, y = data.tensors(dtype=torch.float64)
    v = torch.randn(flat.n_params, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    # Hessian: double backward of sum_i l_i, plus l2 v
    t = theta.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(flat.loss_sum(t, X, y), t, create_graph=True)
    (hv,) = torch.autograd.grad(g @ v, t)
    exact_h = hv + model.l2 * v
    torch.testing.assert_close(HessianOperator(flat, data, batch_size=3).matvec(v), exact_h, atol=1e-10, rtol=1e-8)

    # finite differences of the gradient agree too
    eps = 1e-5
    fd = (torch.func.grad(flat.loss_sum)(theta + eps * v, X, y) - torch.func.grad(flat.loss_sum)(theta - eps * v, X, y)) / (2 * eps)
    torch.testing.assert_close(fd + model.l2 * v, exact_h, atol=1e-6, rtol=1e-6)

    # GGN: sum_i J_i^T (diag p_i - p_i p_i^T) J_i v with the logits' Jacobian, plus l2 v
    def logits(t):
        return torch.func.functional_call(model, flat.unflatten(t), (X,))

    J = torch.autograd.functional.jacobian(logits, theta)  # (m, C, p)
    p = torch.softmax(logits(theta), dim=-1)
    H_out = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    exact_ggn = torch.einsum("mcp,mcd,mdq,q->p", J, H_out, J, v) + model.l2 * v
    ggn = HessianOperator(flat, data, batch_size=3, curvature="ggn").matvec(v)
    torch.testing.assert_close(ggn, exact_ggn, atol=1e-10, rtol=1e-8)
    assert float(v @ ggn) > 0  # positive definite with l2 > 0


def test_training_learns_a_repetitive_text():
    rng = np.random.default_rng(0)
    clean = "hello world. " * 160
    noisy = "".join(rng.choice(list("helo wrd.")) if rng.random() < 0.03 else c for c in clean)
    vocab = CharVocab.from_text(clean)
    train = char_windows(vocab.encode(noisy), 6, vocab_size=len(vocab), name="noisy")
    test = char_windows(vocab.encode(clean[:200]), 6, vocab_size=len(vocab), name="clean")
    model = uk.train(CharLSTM(vocab_size=len(vocab), window=6, embed_dim=8, hidden=24), train,
                     config=TrainConfig(epochs=6, lr=1e-2, batch_size=64, seed=0))
    for data in (train, test):  # the noisy text it saw (3% unpredictable), and the clean pattern
        X, y = data.tensors()
        with torch.no_grad():
            assert float((model(X).argmax(1) == y).float().mean()) > 0.9, data.name
    # same seed, same model
    again = uk.train(CharLSTM(vocab_size=len(vocab), window=6, embed_dim=8, hidden=24), train,
                     config=TrainConfig(epochs=1, lr=1e-2, batch_size=64, seed=0))
    twice = uk.train(CharLSTM(vocab_size=len(vocab), window=6, embed_dim=8, hidden=24), train,
                     config=TrainConfig(epochs=1, lr=1e-2, batch_size=64, seed=0))
    for a, b in zip(again.parameters(), twice.parameters()):
        assert torch.equal(a, b)


def test_save_and_load_round_trip(tmp_path):
    from unlearnkit.models.io import load_model, save_model

    model = tiny_model(dtype=torch.float32)
    loaded = load_model(save_model(model, tmp_path / "lstm.pt"))
    X, _ = tiny_windows().tensors()
    assert isinstance(loaded, CharLSTM) and loaded.config == model.config
    torch.testing.assert_close(loaded(X), model(X))


# ------------------------------------------------------------------------------ scorer


def test_char_log_perplexity_equals_the_sum_by_hand():
    model = tiny_model()
    rng = np.random.default_rng(5)
    texts = [rng.integers(0, 6, size=n) for n in (9, 6, 14)]
    scores = char_log_perplexity(model, texts, batch_size=3)  # batches cross text boundaries
    assert scores.shape == (3,) and scores.dtype == np.float64
    for text, score in zip(texts, scores):
        expected = 0.0
        for i in range(5, text.size):
            x = torch.as_tensor(text[i - 5:i], dtype=torch.float64)[None]
            with torch.no_grad():
                expected -= float(torch.log_softmax(model(x), -1)[0, text[i]]) / math.log(2)
        assert score == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert char_log_perplexity(model, []).shape == (0,)
    with pytest.raises(DataError, match="at least 6"):
        char_log_perplexity(model, [np.arange(5)])
    with pytest.raises(DataError, match="outside"):
        char_log_perplexity(model, [np.full(7, 6)])


# ------------------------------------------------------------------------------ text data


def test_vocab_round_trip_and_unknown_characters():
    vocab = CharVocab.from_text("hello, world")
    assert vocab.chars == " ,dehlorw" and len(vocab) == 9
    codes = vocab.encode("world hello")
    assert codes.dtype == np.int64 and vocab.decode(codes) == "world hello"
    with pytest.raises(DataError, match="'!'"):
        vocab.encode("hello!")
    with pytest.raises(DataError, match="distinct"):
        CharVocab("aa")
    with pytest.raises(DataError):
        vocab.decode(np.array([9]))


def test_char_windows_rows_ids_and_labels():
    vocab = CharVocab.from_text("abcdefg")
    codes = vocab.encode("abcdefg")
    data = char_windows(codes, 3, vocab_size=len(vocab), name="abc")
    assert len(data) == 4 and data.feature_shape == (3,) and data.n_classes == 7 and data.name == "abc"
    assert data.X.dtype == np.float32
    np.testing.assert_array_equal(data.ids, [3, 4, 5, 6])
    np.testing.assert_array_equal(data.X[0], [0, 1, 2])
    np.testing.assert_array_equal(data.X[-1], [3, 4, 5])
    np.testing.assert_array_equal(data.y, codes[3:])
    for row, i in zip(data.X, data.ids):  # a row id is the target's position in the text
        assert vocab.decode(row.astype(int)) == "abcdefg"[i - 3:i]
    with pytest.raises(DataError, match="no 7-character window"):
        char_windows(codes, 7, vocab_size=7)
    with pytest.raises(DataError, match=r"\[0, 5\)"):
        char_windows(codes, 3, vocab_size=5)


def test_python_docs_excerpt_is_fixed_and_long():
    text = python_docs_excerpt()
    assert text == python_docs_excerpt()
    assert 100_000 <= len(text) <= 140_000
    assert text.isascii() and text == text.lower() and "  " not in text and "\n" not in text
    assert text.startswith("basic customization")
    assert len(CharVocab.from_text(text)) == 64


@pytest.mark.skipif(__import__("sys").version_info[:3] != (3, 11, 7), reason="the shipped excerpt was built on CPython 3.11.7")
def test_python_docs_excerpt_is_what_the_builder_makes():
    from unlearnkit.data.text import _build_python_docs_excerpt

    assert _build_python_docs_excerpt() == python_docs_excerpt()


FAKE = {
    "alpha": (
        "A banker lends you his umbrella\nwhen the sun is shining.\n\t\t-- Mark Twain\n%\n"
        "%\n\n%\n"  # empty entries are skipped
        "Two-line attribution.\n\t\t-- Someone Famous, \"A Long Book\n\t\t   Title\"\n%\n"
        "No attribution here.\n%\n"
        "Hidden note.\n\t\t-- Ed Editor\n\t[A note.  Ed.]\n%\n"
    ),
    "beta": "Caf\xe9 au lait.\n\t-- Jean (the cook)\n%\nLast one without a trailing separator\n",
}


@pytest.fixture
def fortunes_dir(tmp_path):
    for name, text in FAKE.items():
        (tmp_path / name).write_bytes(text.encode("latin-1"))
        (tmp_path / f"{name}.dat").write_bytes(b"\x00\x01binary")
        (tmp_path / f"{name}.u8").write_bytes(text.encode("utf-8"))
    (tmp_path / "off").mkdir()
    (tmp_path / "off" / "rude").write_text("Offensive.\n%\n")
    return tmp_path


def test_load_fortunes_on_a_fake_directory(fortunes_dir):
    quotes = load_fortunes(root=fortunes_dir)
    assert [q.category for q in quotes] == ["alpha"] * 4 + ["beta"] * 2
    assert quotes[0] == Quote("A banker lends you his umbrella\nwhen the sun is shining.\n\t\t-- Mark Twain", "alpha", "Mark Twain")
    assert [q.attribution for q in quotes] == [
        "Mark Twain", 'Someone Famous, "A Long Book Title"', "", "Ed Editor", "Jean (the cook)", "",
    ]
    assert quotes[4].text.startswith("Caf\ufffd au lait.")  # latin-1 byte replaced, not an error
    assert quotes[5].text == "Last one without a trailing separator"
    assert [q.category for q in load_fortunes("beta", root=fortunes_dir)] == ["beta", "beta"]
    assert len(load_fortunes(["beta", "alpha"], root=fortunes_dir)) == 6
    with pytest.raises(DataError, match="available in .*alpha, beta"):
        load_fortunes(["gamma"], root=fortunes_dir)
    with pytest.raises(DataError, match="apt-get install -y fortunes"):
        load_fortunes(root=fortunes_dir / "missing")


def test_attribution_name():
    assert attribution_name('Mark Twain, "The Disappearance of Literature"') == "Mark Twain"
    assert attribution_name("Wm. Shakespeare") == "Wm. Shakespeare"
    assert attribution_name("Oscar Wilde [as he sipped champagne]") == "Oscar Wilde"
    assert attribution_name('"The Rockford Files"') == ""


@pytest.mark.skipif(not __import__("os").path.isdir("/usr/share/games/fortunes"), reason="Debian's fortunes not installed")
def test_load_fortunes_on_the_real_files():
    quotes = load_fortunes(["literature"])
    assert len(quotes) > 100 and all(q.category == "literature" and q.text.strip() for q in quotes)
    names = {attribution_name(q.attribution) for q in quotes}
    assert "Mark Twain" in names
