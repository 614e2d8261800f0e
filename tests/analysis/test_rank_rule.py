"""The rank rule on LoRTA-shaped tensors: merged-mode core consistency, fit gain against the
noise floor, one rule text everywhere (issue 16)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cptensor import CPTensor, reconstruct
from cptensor.analysis import core_consistency, rank_sweep
from cptensor.analysis.diagnostics import _merged_groups
from cptensor.analysis.sweep import RULE
from cptensor.structured import BlockTensor

from ._planted import planted, small_lowrank_delta

pytest.importorskip("cptensor.fit")

FAST = {"max_iter": 100, "tol": 1e-6}
SMALL = (48, 8, 6, 4, 4)  # d × d_h × H × L × (Q, K, V, O), scaled down
PAPER = (64, 16, 12, 6, 4)
DOCS = Path(__file__).resolve().parents[2] / "docs"


def _random_cp(rng: np.random.Generator, shape: tuple[int, ...], rank: int) -> CPTensor:
    return CPTensor(rng.uniform(0.5, 2.0, rank), [rng.standard_normal((n, rank)) for n in shape])


# -- merged-mode core consistency ---------------------------------------------------------
def _kr(mats: list[np.ndarray]) -> np.ndarray:
    out = mats[0]
    for m in mats[1:]:
        out = np.einsum("ir,jr->ijr", out, m).reshape(-1, out.shape[1])
    return out


def _dense_cc(x: np.ndarray, cp: CPTensor, groups: tuple[tuple[int, ...], ...]) -> float:
    """Oracle: the least-squares Tucker core of the grouped model by one dense solve with
    the Kronecker product of the (Khatri–Rao) group factors."""
    mats = list(cp.factors)
    mats[0] = mats[0] * cp.weights
    order = [k for g in groups for k in g]
    xg = np.transpose(x, order).reshape([math.prod(x.shape[k] for k in g) for g in groups])
    big = _kr([_kr([mats[k] for k in g]) for g in groups[:1]])
    for g in groups[1:]:
        big = np.kron(big, _kr([mats[k] for k in g]))
    core = np.linalg.lstsq(big, xg.ravel(), rcond=None)[0]
    rank = cp.rank
    ident = np.zeros((rank,) * len(groups))
    ident[(np.arange(rank),) * len(groups)] = 1.0
    return float(100 * (1 - np.sum((core.reshape(ident.shape) - ident) ** 2) / rank))


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), ndim=st.integers(3, 4), rank=st.integers(1, 4))
def test_merged_equals_classic_when_every_mode_is_large(seed: int, ndim: int, rank: int) -> None:
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in rng.integers(rank, rank + 3, ndim))
    x = rng.standard_normal(shape)
    cp = _random_cp(rng, shape, rank)
    classic = core_consistency(x, cp)
    assert core_consistency(x, cp, merge_small_modes=True) == classic
    oracle = _dense_cc(x, cp, tuple((k,) for k in range(ndim)))
    assert classic == pytest.approx(oracle, rel=1e-8, abs=1e-6)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), rank=st.integers(5, 9))
def test_merged_matches_dense_oracle_above_a_mode_size(seed: int, rank: int) -> None:
    rng = np.random.default_rng(seed)
    shape = (10, 3, 4, 2, 5)
    groups = _merged_groups(shape, rank)
    assert groups is not None and len(groups) >= 3
    cp = _random_cp(rng, shape, rank)
    x = reconstruct(cp) + 0.3 * rng.standard_normal(shape)
    merged = core_consistency(x, cp, merge_small_modes=True)
    assert merged == pytest.approx(_dense_cc(x, cp, groups), rel=1e-8, abs=1e-6)


@pytest.mark.parametrize(("shape", "rank"), [(SMALL, 6), (SMALL, 16), (PAPER, 13), (PAPER, 18)])
def test_exact_cp_above_a_mode_size_measures_100(shape, rank) -> None:
    rng = np.random.default_rng(rank)
    cp = _random_cp(rng, shape, rank)
    x = reconstruct(cp)
    classic = core_consistency(x, cp)
    assert classic < 100 * min(shape) / rank + 1e-6  # the classic value's cap
    assert core_consistency(x, cp, merge_small_modes=True) == pytest.approx(100.0, abs=1e-6)


def test_merged_on_operators_and_torch_equals_dense() -> None:
    lr, x = small_lowrank_delta()
    rng = np.random.default_rng(1)
    bt = BlockTensor(
        x.shape, (0, 1, 2), lambda k: x[:, :, :, k[0], k[1]].reshape(6, 6), block_shape=(6, 6)
    )
    for rank in (3, 4, 6):
        assert len(_merged_groups(x.shape, rank)) >= 3
        cp = _random_cp(rng, x.shape, rank)
        ref = core_consistency(x, cp, merge_small_modes=True)
        oracle = _dense_cc(x, cp, _merged_groups(x.shape, rank))
        assert ref == pytest.approx(oracle, rel=1e-8, abs=1e-6)
        for op in (lr, bt):
            got = core_consistency(op, cp, merge_small_modes=True)
            assert got == pytest.approx(ref, rel=1e-8, abs=1e-6)
    torch = pytest.importorskip("torch")
    cpt = CPTensor(torch.from_numpy(cp.weights), [torch.from_numpy(f) for f in cp.factors])
    got = core_consistency(torch.from_numpy(x), cpt, merge_small_modes=True)
    assert got == pytest.approx(ref, rel=1e-8, abs=1e-6)


def test_merged_groups() -> None:
    assert _merged_groups(SMALL, 4) == tuple((k,) for k in range(5))  # nothing to merge
    assert _merged_groups((2, 2, 2, 2, 100), 3) == ((0, 1), (2, 3), (4,))  # 3 groups, not 2
    assert _merged_groups((20, 20, 4), 5) is None  # only 2 groups possible
    for shape, rank in [(SMALL, 16), (PAPER, 13), ((2, 3, 3, 5, 2, 2, 3, 2, 2, 2, 7), 6)]:
        groups = _merged_groups(shape, rank)  # the last: > 9 modes, the greedy grouping
        assert groups is not None and len(groups) >= 3
        assert sorted(k for g in groups for k in g) == list(range(len(shape)))
        assert all(math.prod(shape[k] for k in g) >= rank for g in groups)


@settings(max_examples=60, deadline=None)
@given(
    shape=st.one_of(
        st.lists(st.integers(1, 8), min_size=3, max_size=7),  # brute force
        st.lists(st.integers(1, 8), min_size=10, max_size=12),  # greedy
    ),
    rank=st.integers(1, 10),
)
def test_merged_groups_partition_the_modes(shape: list[int], rank: int) -> None:
    shape_t = tuple(shape)
    groups = _merged_groups(shape_t, rank)
    if all(s >= rank for s in shape_t):
        assert groups == tuple((k,) for k in range(len(shape_t)))
    if groups is None:
        return
    assert len(groups) >= 3
    assert sorted(k for g in groups for k in g) == list(range(len(shape_t)))
    assert all(math.prod(shape_t[k] for k in g) >= rank for g in groups)
    assert list(groups) == sorted(groups) and all(list(g) == sorted(g) for g in groups)


def test_merged_undefined_is_nan_and_bad_flag() -> None:
    rng = np.random.default_rng(0)
    cp = _random_cp(rng, (20, 20, 4), 5)
    x = reconstruct(cp)
    assert math.isnan(core_consistency(x, cp, merge_small_modes=True))
    with pytest.raises(TypeError, match="merge_small_modes must be a bool"):
        core_consistency(x, cp, merge_small_modes=1)
    big = _random_cp(rng, (20, 20, 4, 6), 5)  # merged as (0), (1), (2, 3): 4 · 6 >= 5
    with pytest.raises(ValueError, match=r"merged core \(modes grouped as .*max_core_entries"):
        core_consistency(reconstruct(big), big, merge_small_modes=True, max_core_entries=100)
    sweep = rank_sweep(x, [5], n_starts=1, seed=0, fit_kwargs=FAST)
    row = sweep.rows[0]
    assert row["cc_variant"] == "undefined" and math.isnan(row["core_consistency"])
    assert "core consistency undefined" in row["note"]
    assert "CC undefined" in row["why"]


# -- planted ranks in LoRTA-shaped tensors -----------------------------------------------
@pytest.mark.parametrize("noise", [0.0, 0.1], ids=["exact", "20dB"])
@pytest.mark.parametrize("rank", range(1, 17))
def test_planted_rank_recovered_small_lorta(rank: int, noise: float) -> None:
    x, _ = planted(rank, SMALL, rank, rho=0.4, noise=noise)
    sweep = rank_sweep(x, range(1, rank + 3), n_starts=3, seed=rank, fit_kwargs=FAST)
    assert sweep.recommended_rank == rank, [r["why"] for r in sweep.rows]
    assert sweep.rows[rank]["passes"] is False  # rank + 1
    assert [r["passes"] for r in sweep.rows].count(True) >= 1
    assert max(r["rank"] for r in sweep.rows if r["passes"]) == rank


@pytest.mark.parametrize(
    ("shape", "rank", "noise"),
    [(SMALL, 3, 0.1), (SMALL, 7, 0.0), (SMALL, 12, 0.1), (SMALL, 16, 0.0), (PAPER, 13, 0.1)],
)
def test_planted_rank_recovered_with_one_start(shape, rank, noise) -> None:
    x, _ = planted(rank, shape, rank, rho=0.4, noise=noise)
    sweep = rank_sweep(x, range(1, rank + 3), n_starts=1, seed=rank, fit_kwargs=FAST)
    assert all(math.isnan(r["stability"]) for r in sweep.rows)  # not measured
    assert sweep.recommended_rank == rank, [r["why"] for r in sweep.rows]


@pytest.mark.parametrize("rank", [5, 16])
def test_planted_rank_recovered_paper_like_lorta(rank: int) -> None:
    x, _ = planted(rank, PAPER, rank, rho=0.4, noise=0.1)
    sweep = rank_sweep(x, range(1, rank + 3), n_starts=3, seed=rank, fit_kwargs=FAST)
    assert sweep.recommended_rank == rank, [r["why"] for r in sweep.rows]


def test_exact_rank_above_gets_no_fit_gain_in_float32() -> None:
    x, _ = planted(8, SMALL, 8, noise=0.0)
    sweep = rank_sweep(x.astype(np.float32), range(1, 11), n_starts=1, seed=0)
    assert sweep.recommended_rank == 8
    assert "fit gain" in sweep.rows[8]["why"]


@pytest.mark.parametrize(("shape", "n_starts"), [(SMALL, 1), (SMALL, 3), ((10, 11, 12), 1)])
def test_gaussian_tensor_gets_no_recommendation(shape, n_starts) -> None:
    x = np.random.default_rng(7).standard_normal(shape)
    sweep = rank_sweep(x, range(1, 5), n_starts=n_starts, seed=0, fit_kwargs=FAST)
    assert sweep.recommended_rank is None, [r["why"] for r in sweep.rows]
    # the gain criterion alone rejects every rank: noise fits stay under the floor
    assert all(r["fit_gain"] < r["gain_floor"] for r in sweep.rows)


# -- one rule, one text -------------------------------------------------------------------
def _words(text: str) -> str:
    """Text without Markdown blockquote marks, whitespace collapsed."""
    return re.sub(r"\s+", " ", re.sub(r"^\s*> ?", "", text, flags=re.M)).strip()


def test_rule_text_is_the_same_everywhere(tmp_path, capsys) -> None:
    from cptensor.cli import main

    x, _ = planted(0, (6, 5, 4), 2, noise=0.01)
    sweep = rank_sweep(x, [1, 2, 3], n_starts=2, seed=0, fit_kwargs=FAST)
    assert sweep.rule == RULE
    assert json.loads(sweep.to_json())["rule"] == RULE
    path = tmp_path / "x.npy"
    np.save(path, x)
    assert main(["sweep", str(path), "--ranks", "1-3", "--starts", "2"]) == 0
    out = capsys.readouterr().out
    assert f"rule: {RULE}" in out
    for row in sweep.rows:
        assert row["why"] in out
    for page in ("tutorials/rank-sweeps.md", "reference/analysis.md"):
        assert _words(RULE) in _words((DOCS / page).read_text()), page


def test_no_other_reading_of_the_rule_is_left() -> None:
    root = DOCS.parent
    texts = [p.read_text() for p in DOCS.rglob("*.md")]
    for package in ("cptensor", "cptensor_adapters"):
        texts += [p.read_text() for p in (root / package).rglob("*.py")]
    for t in texts:
        assert "every smaller swept rank" not in t
        assert "at it and below" not in t


def test_verdicts_agree_with_recommendation_and_repr_is_one_line() -> None:
    x, _ = planted(3, (9, 8, 7), 3, noise=0.01)
    sweep = rank_sweep(x, range(1, 6), n_starts=2, seed=0, fit_kwargs=FAST)
    passing = [r["rank"] for r in sweep.rows if r["passes"]]
    assert sweep.recommended_rank == max(passing) == 3
    for r in sweep.rows:
        assert r["why"].startswith("passes" if r["passes"] else "fails: ")
    text = repr(sweep)
    assert text == "RankSweep(shape=(9, 8, 7), ranks=range(1, 6), recommended_rank=3)"
    assert "\n" not in text and "best_fit" not in text
    assert repr(rank_sweep(x, [1, 3], n_starts=1, seed=0, fit_kwargs=FAST)).endswith(
        "ranks=[1, 3], recommended_rank=3)"
    )
    # the gain threshold is a parameter: a huge factor rejects every rank
    assert sweep.recommend(gain_factor=1e9) is None
    # keys other code reads are all still there
    keys = {"rank", "best_fit", "worst_fit", "fit_spread", "core_consistency", "stability"}
    keys |= {"degeneracy", "n_iter", "converged", "seconds", "note", "passes", "why"}
    assert keys <= set(sweep.rows[0])
