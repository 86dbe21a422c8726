"""Factor graphs (jnmf.graph): equivalence with nmf(), per-factor configs and targets that apply, multi-modal
stacking in input order, deep/concat/add/condition shapes (reference part B), build order, assess, errors."""

from __future__ import annotations

import dataclasses
import warnings

import jax
import numpy as np
import pytest
import scipy.sparse as sp

import jnmf
from jnmf import graph as g

TOL = 1e-6


def _max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def _assert_same_model(layer, model, tol=TOL):
    assert layer.W.shape == model.w.shape and layer.H.shape == model.h.shape
    assert _max_diff(layer.W, model.w) <= tol
    assert _max_diff(layer.d, model.d) <= tol * max(1.0, float(np.max(np.abs(model.d))))
    assert _max_diff(layer.H, model.h) <= tol
    assert layer.iterations == int(model.iter)


@pytest.fixture(scope="module")
def X():
    """50 x 30 non-negative low-rank data plus noise, like RcppML's tests/testthat/test_factor_net.R."""
    rng = np.random.default_rng(42)
    return np.abs(rng.normal(size=(50, 5))) @ np.abs(rng.normal(size=(5, 30))) + np.abs(rng.normal(0, 0.1, (50, 30)))


# ---------------------------------------------------------------------------------------------------------------
# a graph layer is nmf() with the same options
# ---------------------------------------------------------------------------------------------------------------


def test_single_layer_equals_nmf(X):
    with jax.enable_x64(True):
        inp = g.factor_input(X, name="X")
        res = g.fit(g.factor_net(inp, g.nmf_layer(inp, 4, name="nmf1"), g.factor_config(maxit=100, seed=42)))
        ref = jnmf.nmf(X, 4, maxit=100, seed=42)
        assert res.layers[0].W.dtype == np.float64
        _assert_same_model(res["nmf1"], ref)
        assert res.names == ("nmf1",) and res.input_names == ("X",) and res.seed == 42


def test_per_factor_configs_apply(X):
    """Layer defaults, then W()/H() overrides per side, reach the engine as nmf()'s (W, H) pairs."""
    with jax.enable_x64(True):
        inp = g.factor_input(X)
        layer = g.nmf_layer(inp, 4, L2=0.1, upper_bound=0.5, W=g.W(L1=0.05), H=g.H(L2=0.5, upper_bound=0.0))
        res = g.fit(g.factor_net(inp, layer, g.factor_config(seed=7, maxit=30)))
        ref = jnmf.nmf(X, 4, seed=7, maxit=30, L1=(0.05, 0.0), L2=(0.1, 0.5), upper_bound=(0.5, 0.0))
        _assert_same_model(res[0], ref)
        plain = jnmf.nmf(X, 4, seed=7, maxit=30)
        assert _max_diff(res[0].H, plain.h) > 1e-3  # the settings changed the fit
        assert layer.L1 == (0.05, 0.0) and layer.L2 == (0.1, 0.5) and layer.upper_bound == (0.5, 0.0)
        # nonneg=False on W (unconstrained least squares for W) as nmf(nonneg=(False, True))
        free = g.fit(g.factor_input(X).nmf_layer(3, W=g.W(nonneg=False)).factor_net(g.factor_config(seed=3)))
        _assert_same_model(free[0], jnmf.nmf(X, 3, seed=3, nonneg=(False, True)))


def test_w_target_in_graph_equals_nmf(X):
    rng = np.random.default_rng(1)
    TW = np.abs(rng.normal(size=(50, 3)))
    with jax.enable_x64(True):
        res = g.fit(g.factor_input(X).nmf_layer(3, W=g.W(target=TW, target_lambda=0.5))
                    .factor_net(g.factor_config(seed=5, maxit=40)))
        _assert_same_model(res[0], jnmf.nmf(X, 3, seed=5, maxit=40, target_W=TW, target_lambda=0.5))
        assert _max_diff(res[0].W, jnmf.nmf(X, 3, seed=5, maxit=40).w) > 1e-3


def test_h_target_in_graph_equals_nmf_and_rcppml(hawaii_ref, hawaiibirds):
    """The vignette's graph: RcppML ignores H(target=); here it gives nmf(target_H=T, target_lambda=0.10)."""
    A, T = hawaiibirds.A, hawaii_ref["target_T"]
    cfg = g.factor_config(tol=1e-4, maxit=100, seed=42, solver="rcppml")
    with jax.enable_x64(True):
        net = g.factor_input(A).nmf_layer(8, H=g.H(target=T, target_lambda=0.10)).factor_net(cfg)  # R's pipeline
        res = g.fit(net)
        ref = jnmf.nmf(A, 8, tol=1e-4, maxit=100, seed=42, target_H=T, target_lambda=0.10, solver="rcppml")
        _assert_same_model(res[0], ref)
        # and RcppML's own nmf(target_H=T, target_lambda=0.10) (fixture), within the parity tolerances of nmf()
        assert res[0].iterations == int(hawaii_ref["target010_iter"])
        np.testing.assert_allclose(res[0].H, hawaii_ref["target010_h"], rtol=0, atol=1e-5)
        np.testing.assert_allclose(res[0].W, hawaii_ref["target010_w"], rtol=0, atol=1e-5)
        # RcppML's graph returns the unguided model; the target moves the embedding far from it
        plain = g.fit(g.factor_input(A).nmf_layer(8).factor_net(cfg))
        np.testing.assert_allclose(plain[0].H, hawaii_ref["base_h"], rtol=0, atol=1e-5)
        assert _max_diff(res.embedding(), plain.embedding()) > 1e-2

        # removal (negative lambda, PROJ_ADV): the first iterations, as nmf() and RcppML
        cfg5 = g.factor_config(tol=1e-4, maxit=5, seed=42, removal="proj_adv", solver="rcppml")
        rem = g.fit(g.factor_input(A).nmf_layer(8, H=g.H(target=T, target_lambda=-0.10)).factor_net(cfg5))
        ref5 = jnmf.nmf(A, 8, tol=1e-4, maxit=5, seed=42, target_H=T, target_lambda=-0.10, removal="proj_adv",
                        solver="rcppml")
        _assert_same_model(rem[0], ref5)
        hist = np.asarray(rem[0].model.loss_history)
        expected = hawaii_ref["removal010_loss_history"][:5]
        assert np.max(np.abs(hist / expected - 1.0)) < 1e-3


# ---------------------------------------------------------------------------------------------------------------
# multi-modal: row-stacked inputs, W blocks in input order
# ---------------------------------------------------------------------------------------------------------------


def test_sparse_multimodal_equals_stacked_nmf_with_blocks_in_input_order():
    rng = np.random.default_rng(3)
    A1 = sp.random(30, 40, density=0.3, random_state=rng, format="csc")
    A2 = sp.random(20, 40, density=0.3, random_state=rng, format="csc")
    with jax.enable_x64(True):
        # names deliberately in reverse alphabetical order: RcppML splits W by sorted names
        zeta, alpha = g.factor_input(A1, name="zeta"), g.factor_input(A2, name="alpha")
        layer = g.factor_shared(zeta, alpha).nmf_layer(4, name="joint")
        res = g.fit(g.factor_net([zeta, alpha], layer, g.factor_config(seed=42)))
        ref = jnmf.nmf(sp.vstack([A1, A2], format="csc"), 4, seed=42)
        _assert_same_model(res["joint"], ref)
        blocks = res["joint"].W_blocks
        assert tuple(blocks) == ("zeta", "alpha") and res.input_names == ("zeta", "alpha")
        assert blocks["zeta"].shape == (30, 4) and blocks["alpha"].shape == (20, 4)
        np.testing.assert_array_equal(blocks["zeta"], res["joint"].W[:30])
        np.testing.assert_array_equal(blocks["alpha"], res["joint"].W[30:])
        assert not res["joint"].H_blocks
        # the same on the O(nnz k) sparse layout (auto densifies at this density)
        sparse = g.fit(g.factor_net([zeta, alpha], layer, g.factor_config(seed=42, layout="sparse")))
        _assert_same_model(sparse["joint"], jnmf.nmf(sp.vstack([A1, A2]), 4, seed=42, layout="sparse"))
        _assert_same_model(sparse["joint"], ref, tol=1e-9)

        # one dense and one sparse input: the same stack, dense content
        mixed = g.fit(g.factor_shared(g.factor_input(A1.toarray(), name="b"), g.factor_input(A2, name="a"))
                      .nmf_layer(4).factor_net(g.factor_config(seed=42)))
        _assert_same_model(mixed[0], jnmf.nmf(np.vstack([A1.toarray(), A2.toarray()]), 4, seed=42))
        assert tuple(mixed[0].W_blocks) == ("b", "a")


# ---------------------------------------------------------------------------------------------------------------
# deep, concat, add, condition: shapes of reference B.5 / B.9, and each layer is nmf() of its stated input
# ---------------------------------------------------------------------------------------------------------------


def test_deep_layers_factor_the_previous_h_transposed(X):
    inp = g.factor_input(X, name="X")
    enc = g.nmf_layer(inp, 10, name="enc")
    bot = g.nmf_layer(enc, 3, name="bot")
    res = g.fit(g.factor_net(inp, bot, g.factor_config(seed=42)))
    assert res["enc"].W.shape == (50, 10) and res["enc"].H.shape == (10, 30)
    assert res["bot"].W.shape == (30, 3) and res["bot"].H.shape == (3, 10)  # W: per-sample; H: k2 x k1
    _assert_same_model(res["bot"], jnmf.nmf(np.asarray(res["enc"].H).T, 3, seed=43))  # layer 1 → seed + 1
    assert tuple(res["bot"].H_blocks) == ("enc",) and not res["bot"].W_blocks
    assert res["bot"].sample_axis == "W" and res["enc"].sample_axis == "H"
    np.testing.assert_allclose(res["bot"].embedding(), np.asarray(res["bot"].W) * np.asarray(res["bot"].d))
    np.testing.assert_allclose(res.embedding(), (np.asarray(res["enc"].d)[:, None] * np.asarray(res["enc"].H)).T)

    # a three-layer chain (k = 6, 4, 2): the third layer factorizes H2' (k1 x k2), which has no samples
    l1 = g.nmf_layer(inp, 6, name="l1")
    l3 = l1.nmf_layer(4, name="l2").nmf_layer(2, name="l3")
    chain = g.fit(l3.factor_net(g.factor_config(seed=1)))
    assert chain["l2"].W.shape == (30, 4) and chain["l2"].H.shape == (4, 6)
    assert chain["l3"].W.shape == (6, 2) and chain["l3"].H.shape == (2, 4)
    assert chain.embedding("l2").shape == (30, 4)
    with pytest.raises(ValueError, match="'l3' has no sample embedding"):
        chain.embedding("l3")


def test_concat_add_condition_shapes_and_inputs(X):
    inp = g.factor_input(X, name="X")
    a, b = g.nmf_layer(inp, 3, name="a"), g.nmf_layer(inp, 2, name="b")
    top = g.nmf_layer(g.factor_concat(a, b), 3, name="top")
    res = g.fit(g.factor_net(inp, top, g.factor_config(seed=11)))
    assert res["top"].W.shape == (30, 3) and res["top"].H.shape == (3, 5)
    assert {k: v.shape for k, v in res["top"].H_blocks.items()} == {"a": (3, 3), "b": (3, 2)}
    stacked = np.vstack([np.asarray(res["a"].H), np.asarray(res["b"].H)]).T  # (n, k_a + k_b)
    _assert_same_model(res["top"], jnmf.nmf(stacked, 3, seed=13))
    assert _max_diff(res["a"].W, jnmf.nmf(X, 3, seed=11).w) <= TOL  # each branch reads its own input, seed + i

    c, e = g.nmf_layer(inp, 5, name="c"), g.nmf_layer(inp, 5, name="e")
    added = g.fit(g.factor_add(c, e).nmf_layer(3, name="deep").factor_net(g.factor_config(seed=2)))
    assert added.names == ("c", "e", "deep")
    assert added["deep"].W.shape == (30, 3) and added["deep"].H.shape == (3, 5)
    assert tuple(added["deep"].H_blocks) == ("c+e",)
    _assert_same_model(added["deep"], jnmf.nmf((np.asarray(added["c"].H) + np.asarray(added["e"].H)).T, 3, seed=4))

    Z = np.abs(np.random.default_rng(0).normal(size=(3, 30)))  # p x n: samples as columns
    enc = g.nmf_layer(inp, 10, name="enc")
    bot = g.nmf_layer(g.factor_condition(enc, Z, name="meta"), 3, name="bot")
    cond = g.fit(g.factor_net(inp, bot, g.factor_config(seed=42)))
    assert cond["bot"].W.shape == (30, 3) and cond["bot"].H.shape == (3, 13)
    assert {k: v.shape for k, v in cond["bot"].H_blocks.items()} == {"enc": (3, 10), "meta": (3, 3)}
    _assert_same_model(cond["bot"], jnmf.nmf(np.vstack([np.asarray(cond["enc"].H), Z]).T, 3, seed=43))

    # conditioning an input appends Z's rows to A; W gets a Z block
    on_input = g.fit(inp.condition(Z).nmf_layer(4, name="cz").factor_net(g.factor_config(seed=42)))
    assert on_input["cz"].W.shape == (53, 4)
    assert {k: v.shape for k, v in on_input["cz"].W_blocks.items()} == {"X": (50, 4), "Z1": (3, 4)}
    _assert_same_model(on_input["cz"], jnmf.nmf(np.vstack([X, Z]), 4, seed=42))


def test_diamond_is_fitted_once_and_layers_keep_build_order(X):
    inp = g.factor_input(X)
    z_enc = g.nmf_layer(inp, 6, name="z_enc")
    m_left, a_right = g.nmf_layer(z_enc, 3, name="m_left"), g.nmf_layer(z_enc, 3, name="a_right")
    out = g.nmf_layer(g.factor_concat(m_left, a_right), 2, name="b_out")
    net = g.factor_net(inp, out, g.factor_config(seed=9))
    assert [net.names[lay] for lay in net.layers] == ["z_enc", "m_left", "a_right", "b_out"]  # not alphabetical
    res = net.fit()
    assert res.names == ("z_enc", "m_left", "a_right", "b_out") and len(res) == 4
    assert res["b_out"].W.shape == (6, 2) and res["b_out"].H.shape == (2, 6)
    assert res[0] is res["z_enc"] and list(res) == list(res.layers)


def test_assess_uses_the_named_layer_default_first_built(X):
    inp = g.factor_input(X)
    bot = g.nmf_layer(g.nmf_layer(inp, 5, name="z_enc"), 3, name="a_bot")
    res = g.fit(bot.factor_net(g.factor_config(seed=42)))
    labels = np.repeat(["p", "q", "r"], 10)
    kw = dict(metrics=("nmi", "ari", "silhouette"))
    default = jnmf.assess(res, labels, **kw).metrics
    assert dict(default) == dict(jnmf.assess(res["z_enc"].model, labels, **kw).metrics)  # RcppML: 'a_bot', 5 x 3
    deep = jnmf.assess(res, labels, layer="a_bot", **kw)
    assert deep.params["n_samples"] == 30 and deep.params["n_features"] == 3
    emb = np.asarray(res["a_bot"].W) * np.asarray(res["a_bot"].d)
    assert dict(deep.metrics) == dict(jnmf.assess(emb, labels, **kw).metrics)
    assert dict(jnmf.assess(res, labels, layer=1, **kw).metrics) == dict(deep.metrics)
    assert dict(jnmf.assess(res["a_bot"], labels, **kw).metrics) == dict(deep.metrics)
    with pytest.raises(ValueError, match="only a factor-graph result has layers"):
        jnmf.assess(res["z_enc"].model, labels, layer="a_bot", **kw)
    with pytest.raises(KeyError, match="no layer named 'nope'"):
        jnmf.assess(res, labels, layer="nope", **kw)


# ---------------------------------------------------------------------------------------------------------------
# immutability, chaining, seeds
# ---------------------------------------------------------------------------------------------------------------


def test_graph_and_result_are_immutable(X):
    T = np.ones((3, 30))
    hcfg = g.H(target=T, target_lambda=0.1)
    T[:] = 5.0  # the caller's later edits do not reach the description
    assert float(hcfg.target[0, 0]) == 1.0 and not hcfg.target.flags.writeable
    inp = g.factor_input(X)
    layer = g.nmf_layer(inp, 3, H=hcfg)
    res = g.fit(g.factor_net(inp, layer, g.factor_config(seed=1, maxit=5)))
    for obj, attr in ((inp, "name"), (layer, "k"), (hcfg, "L1"), (res, "layers"), (res[0], "W"),
                      (g.factor_config(), "maxit")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, attr, None)
    with pytest.raises(TypeError):
        res[0].W_blocks["input1"] = None
    with pytest.raises(TypeError):
        res.by_name["L1"] = None


def test_chaining_and_function_forms_agree(X):
    cfg = g.factor_config(seed=42, maxit=20)
    inp = g.factor_input(X, name="X")
    fn = g.fit(g.factor_net(inp, g.nmf_layer(g.nmf_layer(inp, 4, name="a"), 2, name="b"), cfg))
    chained = g.factor_input(X, name="X").nmf_layer(4, name="a").nmf_layer(2, name="b").factor_net(cfg).fit()
    inferred = g.fit(g.factor_net(g.nmf_layer(g.nmf_layer(g.factor_input(X), 4), 2), config=cfg))  # R: |> factor_net()
    assert inferred.names == ("L1", "L2") and inferred.input_names == ("input1",)
    for other in (chained, inferred):
        for la, lb in zip(fn.layers, other.layers, strict=True):
            np.testing.assert_array_equal(la.H, lb.H)
            np.testing.assert_array_equal(la.W, lb.W)


def test_seeds_none_key_and_per_layer(X):
    inp = g.factor_input(X)
    first = g.fit(inp.nmf_layer(3).factor_net(g.factor_config(maxit=10)))
    assert isinstance(first.seed, int)
    again = g.fit(inp.nmf_layer(3).factor_net(g.factor_config(maxit=10, seed=first.seed)))
    np.testing.assert_array_equal(first[0].W, again[0].W)  # the drawn seed is recorded and reproduces the fit
    np.testing.assert_array_equal(first[0].model.w_init, jnmf.r_runif_matrix(first.seed, 50, 3).astype(np.float32))

    key = jax.random.key(0)
    keyed = g.fit(inp.nmf_layer(3).nmf_layer(2).factor_net(g.factor_config(maxit=10, seed=key)))
    _assert_same_model(keyed[0], jnmf.nmf(X, 3, maxit=10, seed=key))
    _assert_same_model(keyed[1], jnmf.nmf(np.asarray(keyed[0].H).T, 2, maxit=10, seed=jax.random.fold_in(key, 1)))

    w0 = np.full((50, 3), 0.5)
    own = g.fit(inp.nmf_layer(3, seed=w0).factor_net(g.factor_config(maxit=10, seed=1)))
    _assert_same_model(own[0], jnmf.nmf(X, 3, maxit=10, seed=w0))


# ---------------------------------------------------------------------------------------------------------------
# errors: raised at construction, naming the argument
# ---------------------------------------------------------------------------------------------------------------


def test_malformed_graphs_raise_clear_errors(X):
    inp = g.factor_input(X, name="X")
    lay = g.nmf_layer(inp, 3, name="a")
    lay2 = g.nmf_layer(inp, 4, name="b")
    cases = [
        (lambda: g.factor_input("data.csv"), TypeError, "factor_input A must be"),
        (lambda: g.factor_input(-X), ValueError, "negative values"),
        (lambda: g.factor_input(lay), TypeError, "got a graph node"),
        (lambda: g.nmf_layer(X, 3), TypeError, r"wrap data in factor_input\(A\)"),
        (lambda: g.nmf_layer("x", 3), TypeError, "input must be a graph node"),
        (lambda: g.nmf_layer(inp, 0), ValueError, "k must satisfy"),
        (lambda: g.nmf_layer(inp, 3, W=g.H(L1=0.1)), TypeError, r"W= takes W\(...\), got H\(...\)"),
        (lambda: g.nmf_layer(inp, 3, H=g.H(target=np.ones((3, 29)), target_lambda=0.1)), ValueError,
         r"H\(target=\) must have shape \(3, 30\)"),
        (lambda: g.nmf_layer(inp, 3, L1=1.5), ValueError, "L1 must be <"),
        (lambda: g.nmf_layer(inp, 3, mask=np.ones((50, 30))), TypeError, "unsupported option.*RcppML"),
        (lambda: g.H(L21=0.1), TypeError, r"H\(\): unsupported option"),
        (lambda: g.H(target_lambda=0.1), ValueError, "no target is given"),
        (lambda: g.H(target=np.ones((3, 30))), ValueError, "target_lambda is not"),
        (lambda: g.factor_config(test_fraction=0.1), TypeError, "factor_config: unsupported"),
        (lambda: g.factor_config(maxit=0), ValueError, "maxit must be >= 1"),
        (lambda: g.factor_config(seed=1.5), TypeError, "seed must be"),
        (lambda: g.factor_shared(inp), ValueError, "at least two inputs, got 1"),
        (lambda: g.factor_shared(inp, lay), TypeError, "input 2 must be a factor_input node"),
        (lambda: g.factor_shared(inp, inp), ValueError, "more than once"),
        (lambda: g.factor_shared(inp, g.factor_input(X[:, :20])), ValueError, "same number of samples"),
        (lambda: g.factor_concat(lay), ValueError, "at least two branches, got 1"),
        (lambda: g.factor_concat(), ValueError, "at least two branches, got 0"),
        (lambda: g.factor_add(lay), ValueError, "at least two branches"),
        (lambda: g.factor_concat(inp, lay), TypeError, "branch 1 must be a layer"),
        (lambda: g.factor_concat(lay, X), TypeError, "branch 2 must be a graph node"),
        (lambda: g.factor_add(lay, lay2), ValueError, r"equal k .*\[3, 4\]"),
        (lambda: g.factor_condition(lay, np.ones((3, 29))), ValueError, "Z must be p x 30"),
        (lambda: g.factor_condition(lay, np.ones((30, 3))), ValueError, "looks transposed"),
        (lambda: g.factor_condition(lay, -np.ones((3, 30))), ValueError, "non-negative"),
        (lambda: g.factor_condition(X, np.ones((3, 30))), TypeError, "node must be a graph node"),
        (lambda: g.nmf_layer(g.nmf_layer(inp, 3, H=g.H(nonneg=False)), 2), ValueError, "nonneg=False on H"),
        (lambda: g.factor_net(inp), TypeError, "output is required"),
        (lambda: g.factor_net(inp, inp), TypeError, "output must be a layer"),
        (lambda: g.factor_net(inp, g.factor_condition(lay, np.ones((3, 30)))), TypeError, "Z would not be used"),
        (lambda: g.factor_net([inp, g.factor_input(X)], lay), ValueError, "declared but the output does not"),
        (lambda: g.factor_net(inp, g.factor_shared(inp, g.factor_input(X, name="Y")).nmf_layer(2)), ValueError,
         r"depends on input\(s\) \[Input\('Y'.* not listed in inputs"),
        (lambda: g.factor_net(inp, lay, config={"maxit": 5}), TypeError, "config must come from factor_config"),
        (lambda: g.factor_net(inp, g.nmf_layer(g.nmf_layer(inp, 3, name="a"), 2, name="a")), ValueError,
         r"unique.*\['a'\]"),
        (lambda: g.fit(lay), TypeError, "expected a FactorNet"),
    ]
    for make, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            make()


def test_engine_errors_name_the_layer(X):
    inp = g.factor_input(X)
    layer = g.nmf_layer(inp, 3, name="lasso", L1=0.1)
    with pytest.raises(ValueError, match="layer 'lasso': solver='cholesky' does not support L1"):
        g.fit(g.factor_net(inp, layer, g.factor_config(solver="cholesky", maxit=5)))


def test_vignette_pipeline_snippet_runs(X):
    """The vignette's last snippet in jnmf spelling: ``factor_input(A) |> nmf_layer(k, H = H(...)) |> factor_net()``."""
    T = jnmf.compute_target(jnmf.nmf(X, 3, seed=42, maxit=20).h, np.repeat(["p", "q", "r"], 10))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no silent drops, no warnings
        net_enrich = jnmf.factor_input(X).nmf_layer(3, H=jnmf.H(target=T, target_lambda=0.10)).factor_net()
        net_remove = jnmf.factor_input(X).nmf_layer(3, H=jnmf.H(target=T, target_lambda=-0.10)).factor_net()
    assert net_enrich.layers[0].target_lambda == (0.0, 0.10)
    assert net_remove.layers[0].target_lambda == (0.0, -0.10)
    np.testing.assert_array_equal(net_enrich.layers[0].target_H, np.asarray(T))
