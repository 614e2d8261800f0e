"""TensorLy users' habits (issue 16): their CP objects, keyword names, mixed dtypes, a
short repr and a component plot."""

from __future__ import annotations

import inspect
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cptensor as ct
from cptensor.errors import CPTensorError, CPTensorTypeError
from cptensor.fit import fit_als, fit_gradient
from cptensor.keywords import PEFT_KEYWORDS, TENSORLY_KEYWORDS, check_keywords
from cptensor.testing import assert_cp_equivalent

tl = pytest.importorskip("tensorly")
from tensorly.cp_tensor import CPTensor as TLCPTensor  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SHAPE = (5, 6, 7)


@pytest.fixture(scope="module")
def model() -> ct.CPTensor:
    rng = np.random.default_rng(0)
    return ct.CPTensor(rng.random(2) + 0.5, [rng.standard_normal((n, 2)) for n in SHAPE])


@pytest.fixture(scope="module")
def fitted(model: ct.CPTensor) -> ct.CPFit:
    return fit_als(ct.reconstruct(model), 2, seed=0)


# -- every accepted form of a CP model ---------------------------------------------------

FORMS = ["cptensor", "cpfit", "tensorly", "tuple", "list", "none_weights"]


def _as_form(form: str, cp: ct.CPTensor, fitted: ct.CPFit | None = None) -> object:
    """``cp`` in the given form (for "cpfit", a CPFit holding ``cp``)."""
    if form == "cptensor":
        return cp
    if form == "cpfit":
        assert fitted is not None
        from dataclasses import replace

        return replace(fitted, cp=cp)
    if form == "tensorly":
        return TLCPTensor((cp.weights, list(cp.factors)))
    if form == "tuple":
        return (cp.weights, tuple(cp.factors))
    if form == "list":
        return [cp.weights, list(cp.factors)]
    assert form == "none_weights"
    return (None, [f * w for f, w in zip(cp.factors, [cp.weights, 1.0, 1.0])])


@pytest.mark.parametrize("form", FORMS)
def test_as_cp_accepts_every_form(form, model, fitted):
    obj = _as_form(form, model, fitted)
    cp = ct.as_cp(obj)
    assert isinstance(cp, ct.CPTensor)
    np.testing.assert_allclose(ct.reconstruct(cp), ct.reconstruct(model), atol=1e-12)
    if form in ("cptensor", "cpfit"):
        assert cp is model  # no copy of a model that is already one
    else:
        assert cp.factors[1] is obj[1][1] or form == "none_weights"  # arrays shared, not copied


@pytest.mark.parametrize("form", FORMS)
def test_core_functions_accept_every_form(form, model, fitted):
    obj = _as_form(form, model, fitted)
    dense = ct.reconstruct(model)
    np.testing.assert_allclose(ct.reconstruct(obj), dense, atol=1e-12)
    np.testing.assert_allclose(ct.reconstruct_unfolded(obj, 1), ct.unfold(dense, 1), atol=1e-12)
    assert np.isclose(ct.norm(obj), np.linalg.norm(dense))
    assert np.isclose(ct.inner(obj, dense), np.sum(dense * dense))
    assert np.isclose(ct.inner(dense, obj), np.sum(dense * dense))
    assert np.isclose(ct.inner(obj, obj), np.sum(dense * dense))
    np.testing.assert_allclose(ct.mttkrp(dense, obj, 0), ct.mttkrp(dense, ct.as_cp(obj), 0))
    idx = (np.array([0, 4]), np.array([1, 5]), np.array([6, 0]))
    np.testing.assert_allclose(ct.entries(obj, idx), dense[idx], atol=1e-12)
    np.testing.assert_allclose(
        ct.reconstruct(ct.fix_modes(obj, {2: 3})), dense[:, :, 3], atol=1e-12
    )
    for op in (ct.normalize, ct.arrange, ct.fix_signs):
        np.testing.assert_allclose(ct.reconstruct(op(obj)), dense, atol=1e-12)
    assert_cp_equivalent(obj, model)


@pytest.mark.parametrize("form", FORMS)
def test_analysis_functions_accept_every_form(form, model, fitted):
    obj = _as_form(form, model, fitted)
    dense = ct.reconstruct(model)
    assert ct.score(obj, model).value == pytest.approx(1.0)
    assert ct.score(model, obj).value == pytest.approx(1.0)
    np.testing.assert_allclose(ct.congruence(obj, obj), [1.0, 1.0])
    assert ct.core_consistency(dense, obj) == pytest.approx(100.0)
    assert ct.degeneracy(obj) == pytest.approx(ct.degeneracy(model))


@pytest.mark.parametrize("form", FORMS)
def test_fits_start_from_every_form(form, model, fitted):
    x = ct.reconstruct(model) + 0.01 * np.random.default_rng(1).standard_normal(SHAPE)
    start = ct.init.random(SHAPE, 2, seed=3)
    obj = _as_form(form, start, fitted)
    want = fit_als(x, 2, init=start, max_iter=5, tol=0)
    got = fit_als(x, 2, init=obj, max_iter=5, tol=0)
    assert got.info["init"] == "given CPTensor"
    np.testing.assert_allclose(ct.reconstruct(got.cp), ct.reconstruct(want.cp), atol=1e-10)
    as_rank = fit_als(x, obj, max_iter=5, tol=0)
    np.testing.assert_allclose(ct.reconstruct(as_rank.cp), ct.reconstruct(want.cp), atol=1e-10)
    torch = pytest.importorskip("torch")
    assert torch is not None
    g_want = fit_gradient(x, 2, init=start, max_iter=3)
    g_got = fit_gradient(x, 2, init=obj, max_iter=3)
    np.testing.assert_allclose(ct.reconstruct(g_got.cp), ct.reconstruct(g_want.cp), atol=1e-10)


def test_a_fit_restarts_from_a_previous_fit_on_rescaled_data(model):
    # tiny data is fitted after an exact power-of-two rescaling, which the converted
    # start goes through as well
    x = ct.reconstruct(model) * 1e-60
    first = fit_als(x, 2, seed=0, max_iter=3, tol=0)
    want = fit_als(x, 2, init=first.cp, max_iter=50)
    assert want.info["rescaled_by"] != 1.0 and want.rel_error < 1e-6
    tl_start = TLCPTensor((first.cp.weights, list(first.cp.factors)))
    for start in (first, tl_start):
        got = fit_als(x, 2, init=start, max_iter=50)
        assert got.n_iter == want.n_iter
        np.testing.assert_allclose(got.cp.weights, want.cp.weights, rtol=1e-12)


def test_torch_tensorly_objects_are_accepted(model):
    torch = pytest.importorskip("torch")
    w = torch.as_tensor(model.weights)
    fs = [torch.as_tensor(f) for f in model.factors]
    with tl.backend_context("pytorch"):
        tl_cp = TLCPTensor((w, fs))
    out = ct.reconstruct(tl_cp)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), ct.reconstruct(model), atol=1e-12)


# -- refusals name the argument ----------------------------------------------------------

BAD = [np.ones((5, 2)), "cp", 3, [np.ones((5, 2)), np.ones((6, 2)), np.ones((7, 2))]]
BAD_IDS = ["array", "str", "int", "list_of_factors"]


@pytest.mark.parametrize("bad", BAD, ids=BAD_IDS)
def test_bad_models_are_refused_naming_the_argument(bad, model):
    dense = ct.reconstruct(model)
    calls = {
        "cp": [
            lambda: ct.reconstruct(bad),
            lambda: ct.normalize(bad),
            lambda: ct.degeneracy(bad),
            lambda: ct.core_consistency(dense, bad),
            lambda: ct.as_cp(bad),
        ],
        "a": [lambda: ct.score(bad, model)],
        "b": [lambda: ct.score(model, bad)],
        "reference": [lambda: ct.fix_signs(model, bad)],
    }
    for name, fns in calls.items():
        for fn in fns:
            with pytest.raises(CPTensorTypeError) as info:
                fn()
            msg = str(info.value)
            assert msg.startswith(f"{name} must be a cptensor.CPTensor, a CPFit"), msg
            assert "TensorLy CPTensor" in msg and "(weights, factors) pair" in msg
            assert info.value.argument == name


def test_bad_start_is_refused_naming_init_and_rank(model):
    x = ct.reconstruct(model)
    with pytest.raises(CPTensorTypeError, match=r"^init must be one of \('svd'.*got int"):
        fit_als(x, 2, init=5)
    with pytest.raises(CPTensorError, match=r"^init must be one of .*got 'svdd'"):
        fit_als(x, 2, init="svdd")
    with pytest.raises(CPTensorTypeError, match=r"^rank must be a positive int or a CP model"):
        fit_als(x, np.ones((5, 2)))


def test_a_malformed_model_of_an_accepted_form_names_the_argument(model):
    bad_pair = (None, [np.ones((5, 2), dtype=int), np.ones((6, 2))])
    with pytest.raises(CPTensorTypeError, match=r"^a: factors\[0\] has dtype int"):
        ct.score(bad_pair, model)
    ragged = (None, [np.ones((5, 2)), np.ones((6, 3))])
    with pytest.raises(CPTensorError, match=r"^init: factors\[1\] has 3 columns"):
        fit_als(ct.reconstruct(model), 2, init=ragged)


# -- TensorLy's and PEFT's keyword names -------------------------------------------------


def test_the_issue_s_message_word_for_word():
    with pytest.raises(CPTensorTypeError) as info:
        fit_als(np.ones((2, 3, 4)), 1, n_iter_max=10)
    assert str(info.value) == (
        "fit_als() got an unexpected keyword 'n_iter_max' (TensorLy's name): use max_iter=..."
    )
    assert isinstance(info.value, TypeError) and info.value.argument == "n_iter_max"


FITS = {"fit_als": fit_als, "fit_gradient": fit_gradient}


@pytest.mark.parametrize("owner", sorted(FITS))
@pytest.mark.parametrize("name", sorted(TENSORLY_KEYWORDS))
def test_each_tensorly_keyword_gets_its_hint(owner, name):
    fn = FITS[owner]
    params = inspect.signature(fn).parameters
    if name in params:
        return  # the same name here (tol, mask, init, ...): not an unexpected keyword
    hint = TENSORLY_KEYWORDS[name]
    with pytest.raises(CPTensorTypeError) as info:
        fn(np.ones((2, 3, 4)), 1, **{name: 1})
    msg = str(info.value)
    assert msg.startswith(f"{owner}() got an unexpected keyword {name!r} (TensorLy's name): ")
    if hint.use is None:
        assert "no equivalent here: " + hint.note in msg
    elif hint.use in params:
        assert f"use {hint.use}=..." in msg
    else:
        assert f"{owner}() does not take" in msg or "does not take either" in msg
    assert info.value.argument == name


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (
            lambda: ct.init.random((2, 3), 1, random_state=0),
            "init.random() got an unexpected keyword 'random_state' (TensorLy's name): "
            "use seed=...",
        ),
        (
            lambda: ct.init.orthogonal((2, 3), 1, random_state=0),
            "init.orthogonal() got an unexpected keyword 'random_state'",
        ),
        (
            lambda: ct.init.svd(np.ones((2, 3)), 1, random_state=0),
            "init.svd() got an unexpected keyword 'random_state' (TensorLy's name): use seed=",
        ),
        (
            lambda: ct.init.random((2, 3), 1, full=True),
            "init.random() got an unexpected keyword 'full' (TensorLy's name): no equivalent "
            "here: call cptensor.reconstruct",
        ),
        (
            lambda: ct.init.random((2, 3), 1, n_iter_max=3),
            "init.random() got an unexpected keyword 'n_iter_max' (TensorLy's name): it means "
            "max_iter=, which init.random() does not take either",
        ),
        (
            lambda: ct.init.svd(np.ones((2, 3)), 1, tol=1e-3),
            "init.svd() got an unexpected keyword 'tol' (TensorLy's name): init.svd() does "
            "not take it (fit_als and fit_gradient take tol=)",
        ),
        (
            lambda: fit_als(np.ones((2, 3)), 1, maxiter=3),
            "fit_als() got an unexpected keyword 'maxiter'; did you mean max_iter=? (it "
            "takes: x, rank, init, seed, max_iter,",
        ),
    ],
)
def test_init_functions_and_typos(call, expected):
    with pytest.raises(CPTensorTypeError) as info:
        call()
    assert str(info.value).startswith(expected), str(info.value)


def test_keyword_checks_keep_signatures_and_positional_errors():
    assert "max_iter" in inspect.signature(fit_als).parameters
    assert fit_als.__doc__ and fit_als.__name__ == "fit_als"
    with pytest.raises(TypeError, match="positional"):  # Python's own message, untouched
        ct.init.random((2, 3), 1, None)


@pytest.mark.parametrize("name", sorted(PEFT_KEYWORDS))
def test_each_peft_keyword_gets_its_hint(name):
    accepted = ["r", "alpha", "dropout", "targets", "init", "modules_to_save", "layout"]
    hint = PEFT_KEYWORDS[name]
    if name in accepted:
        check_keywords("AdapterConfig", [name], accepted, PEFT_KEYWORDS)  # accepted: no error
        return
    with pytest.raises(CPTensorTypeError) as info:
        check_keywords("AdapterConfig", [name], accepted, PEFT_KEYWORDS)
    msg = str(info.value)
    assert msg.startswith(f"AdapterConfig() got an unexpected keyword {name!r} (PEFT's name): ")
    assert (f"use {hint.use}=..." in msg) if hint.use else ("no equivalent here" in msg)


def test_the_docs_keyword_table_covers_the_mapping():
    page = (ROOT / "docs" / "from-tensorly.md").read_text()
    for name, hint in TENSORLY_KEYWORDS.items():
        assert f"| `{name}` |" in page, f"{name} missing from the keyword table"
        if hint.use is not None:
            assert f"| `{name}` | `{hint.use}` |" in page, name


# -- mixed dtypes in from_tensorly -------------------------------------------------------


def test_from_tensorly_promotes_mixed_float_dtypes_numpy():
    w = np.ones(2, dtype=np.float32)
    fs = [np.ones((3, 2)), np.ones((4, 2), dtype=np.float32)]
    cp = ct.CPTensor.from_tensorly((w, fs))
    assert cp.dtype == np.float64 and cp.weights.dtype == np.float64
    assert all(f.dtype == np.float64 for f in cp.factors)
    assert cp.factors[0] is fs[0]  # already the result dtype: not copied
    assert w.dtype == np.float32 and fs[1].dtype == np.float32  # inputs untouched
    assert ct.as_cp((w, fs)).dtype == np.float64


def test_from_tensorly_promotes_tensorly_pytorch_construction():
    torch = pytest.importorskip("torch")
    fs = [torch.randn(3, 2, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)]
    w = torch.ones(2)  # float32: torch's default dtype
    with tl.backend_context("pytorch"):
        tl_cp = TLCPTensor((w, fs))
        expected = tl.cp_to_tensor(tl_cp)
    cp = ct.CPTensor.from_tensorly(tl_cp)
    assert cp.dtype == torch.float64 and cp.weights.dtype == torch.float64
    assert w.dtype == torch.float32
    np.testing.assert_allclose(ct.reconstruct(cp).numpy(), expected.numpy(), atol=1e-12)
    half = ct.CPTensor.from_tensorly((torch.ones(2, dtype=torch.float16), [torch.ones(3, 2)]))
    assert half.dtype == torch.float32


def test_from_tensorly_still_refuses_ints_and_mixed_backends():
    torch = pytest.importorskip("torch")
    with pytest.raises(CPTensorTypeError, match=r"weights has dtype int64"):
        ct.CPTensor.from_tensorly((np.ones(2, dtype=np.int64), [np.ones((3, 2))]))
    with pytest.raises(CPTensorTypeError, match="different backends"):
        ct.CPTensor.from_tensorly((np.ones(2), [torch.ones(3, 2, dtype=torch.float64)]))
    with pytest.raises(CPTensorTypeError, match="cp must be a TensorLy CPTensor"):
        ct.CPTensor.from_tensorly(np.ones((3, 2)))


# -- short reprs -------------------------------------------------------------------------


def test_cpfit_repr_is_one_short_line_without_arrays():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 30, 40))
    result = fit_als(x, 4, seed=0, max_iter=60, tol=0)
    assert len(result.history) == 60
    text = repr(result)
    assert str(result) == text and "\n" not in text and len(text) < 160
    assert text.startswith("CPFit(method='als', rank=4, shape=(20, 30, 40), fit=")
    assert f"n_iter={result.n_iter}, converged=False)" in text
    assert "array" not in text and "history" not in text and "[" not in text
    grad = fit_gradient(x, 2, seed=0, max_iter=2)
    assert repr(grad).startswith("CPFit(method='gradient', rank=2,")


def test_cptensor_repr_is_short_without_arrays():
    torch = pytest.importorskip("torch")
    big = ct.init.random((500, 400, 300), 50, seed=0)
    text = repr(big)
    assert "\n" not in text and len(text) < 120 and "array" not in text
    assert "shape=(500, 400, 300), rank=50" in text
    assert "tensor(" not in repr(ct.init.random((5, 4), 2, like=torch.ones(1)))


# -- the component plot ------------------------------------------------------------------


def _render(fig: object) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)  # the Agg backend, no pyplot state
    return buf.getvalue()


@pytest.mark.parametrize("form", ["cptensor", "tensorly", "cpfit"])
def test_components_plot_has_one_axes_per_mode_and_one_line_per_component(form, fitted):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    cp = ct.CPTensor(np.array([3.0, 1.0, 2.0]), [np.eye(n)[:, :3] * 2 for n in (4, 5, 6, 7)])
    fig = ct.plot.components(_as_form(form, cp, fitted))
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 4
    assert [len(ax.get_lines()) for ax in fig.axes] == [3, 3, 3, 3]
    assert [len(line.get_xdata()) for line in fig.axes[3].get_lines()] == [7, 7, 7]
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["0: λ = 48", "1: λ = 16", "2: λ = 32"]  # normalized: 2⁴ per weight
    assert _render(fig).startswith(b"\x89PNG")
    raw = ct.plot.components(cp, normalize=False, max_components=2, mode_names=list("abcd"))
    assert [len(ax.get_lines()) for ax in raw.axes] == [2, 2, 2, 2]
    assert [ax.get_title() for ax in raw.axes] == ["a", "b", "c", "d"]
    assert [t.get_text() for t in raw.axes[0].get_legend().get_texts()] == [
        "0: λ = 3",
        "1: λ = 1",
    ]


def test_components_plot_from_the_method_and_torch():
    pytest.importorskip("matplotlib")
    torch = pytest.importorskip("torch")
    cp = ct.init.random((4, 5), 2, like=torch.ones(1, dtype=torch.float64), seed=0)
    fig = cp.plot(mode_names=["rows", "cols"])
    assert [ax.get_title() for ax in fig.axes] == ["rows", "cols"]
    np.testing.assert_allclose(
        np.linalg.norm(fig.axes[0].get_lines()[0].get_ydata()), 1.0, rtol=1e-12
    )


def test_components_plot_refuses_bad_options():
    pytest.importorskip("matplotlib")
    cp = ct.init.random((4, 5), 2, seed=0)
    with pytest.raises(CPTensorError, match=r"^mode_names has 1 names, expected one per mode"):
        ct.plot.components(cp, mode_names=["a"])
    with pytest.raises(CPTensorTypeError, match=r"^max_components must be an int"):
        ct.plot.components(cp, max_components=1.5)
    with pytest.raises(CPTensorError, match=r"^max_components must be >= 1"):
        ct.plot.components(cp, max_components=0)
    with pytest.raises(CPTensorTypeError, match=r"^cp must be a cptensor.CPTensor"):
        ct.plot.components(np.ones((4, 2)))


def test_components_plot_without_matplotlib_says_what_to_install(monkeypatch):
    cp = ct.init.random((4, 5), 2, seed=0)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails
    with pytest.raises(ImportError, match=r"needs the optional 'matplotlib' package"):
        ct.plot.components(cp)


def test_importing_cptensor_imports_neither_matplotlib_nor_tensorly():
    code = "import sys, cptensor; print('matplotlib' in sys.modules, 'tensorly' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["False", "False"]
