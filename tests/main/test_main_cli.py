"""The ``cptensor`` command line: results, --json, --help and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from cptensor_adapters.cli import main, parse_ranks


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    rng = np.random.default_rng(0)
    fs = [rng.standard_normal((n, 2)) for n in (6, 5, 4)]
    x = np.einsum("ir,jr,kr->ijk", *fs)
    p = tmp_path_factory.mktemp("cli") / "x.npy"
    np.save(p, x)
    return p


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cptensor_adapters.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_parse_ranks():
    assert parse_ranks("1-3") == [1, 2, 3]
    assert parse_ranks("4,2,2-3") == [2, 3, 4]
    for bad in ("0-3", "a", "3-1", ""):
        with pytest.raises(Exception, match="rank"):
            parse_ranks(bad)


def test_fit_json_and_out(planted, tmp_path, capsys):
    out = tmp_path / "cp.npz"
    assert main(["fit", str(planted), "--rank", "2", "--out", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["shape"] == [6, 5, 4] and doc["rel_error"] < 1e-6
    z = np.load(out)
    assert sorted(z.files) == ["factor_0", "factor_1", "factor_2", "fit", "rel_error", "weights"]
    assert z["factor_1"].shape == (5, 2)


def test_fit_text(planted, capsys):
    assert main(["fit", str(planted), "--rank", "1"]) == 0
    assert "rank-1 CP of a (6, 5, 4) tensor: fit" in capsys.readouterr().out


def test_sweep_json_and_plot(planted, tmp_path, capsys):
    code = main(
        [
            "sweep",
            str(planted),
            "--ranks",
            "1-3",
            "--starts",
            "2",
            "--json",
            "--out",
            str(tmp_path / "s"),
        ]
    )
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert [r["rank"] for r in doc["rows"]] == [1, 2, 3]
    assert doc["recommended_rank"] == 2
    assert (tmp_path / "s" / "sweep.png").stat().st_size > 0


@pytest.mark.parametrize("sub", [None, "analyze", "analyze-adapter", "fit", "sweep", "demo"])
def test_help_explains_every_option(sub, capsys):
    argv = ["--help"] if sub is None else [sub, "--help"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "usage: cptensor" in text
    if sub is not None:
        from cptensor_adapters.cli import build_parser

        sp = build_parser()._subparsers._group_actions[0].choices[sub]
        for action in sp._actions:
            assert action.help, f"{sub}: option {action.option_strings or action.dest} lacks help"


def _bad(capsys, argv, pattern):
    """Exit status 2, exactly one error line (the last one), no traceback."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and err.splitlines()[-1] == errors[0], err
    assert "Traceback" not in err
    assert pattern in errors[0], err


def test_errors_are_one_line(planted, tmp_path, capsys):
    _bad(capsys, ["fit", str(tmp_path / "missing.npy"), "--rank", "2"], "no such file")
    txt = tmp_path / "notes.npy"
    txt.write_text("hello, not a tensor")
    _bad(capsys, ["fit", str(txt), "--rank", "2"], "not a tensor")
    vec = tmp_path / "vec.npy"
    np.save(vec, np.arange(5.0))
    _bad(capsys, ["sweep", str(vec)], "at least 2 modes")
    _bad(capsys, ["fit", str(planted), "--rank", "0"], "positive integer")
    _bad(capsys, ["fit", str(planted), "--rank", "50"], "out of range")
    _bad(capsys, ["sweep", str(planted), "--ranks", "0-3"], "positive integers")
    _bad(capsys, ["sweep", str(planted), "--ranks", "1-100"], "out of range")
    _bad(
        capsys,
        ["analyze-adapter", str(tmp_path), "--out", str(tmp_path / "o")],
        "lacks adapter_config.json",
    )
    _bad(
        capsys,
        ["demo", "--glue-dir", str(tmp_path), "--out", str(tmp_path / "d")],
        "lacks train.tsv",
    )


def test_different_architectures(tmp_path, tiny_bert_pair, capsys):
    from transformers import BertModel

    from .conftest import tiny_bert_config

    BertModel(tiny_bert_config(layers=3)).save_pretrained(tmp_path / "three")
    _bad(
        capsys,
        ["analyze", str(tiny_bert_pair[0]), str(tmp_path / "three"), "--out", str(tmp_path / "o")],
        "different architectures",
    )


def test_usage_error_exit_code(capsys):
    assert main(["fit"]) == 2
    assert "required" in capsys.readouterr().err
    assert main([]) == 2


def test_subprocess_exit_code_and_one_line_error(tmp_path):
    bad = run_cli("fit", str(tmp_path / "missing.npy"), "--rank", "2")
    assert bad.returncode == 2
    assert bad.stdout == ""
    assert bad.stderr.strip().splitlines() == [
        f"cptensor fit: error: {tmp_path / 'missing.npy'}: no such file"
    ]


def test_analyze_checkpoints(tiny_bert_pair, tmp_path, capsys):
    base_dir, tuned_dir, _, _ = tiny_bert_pair
    assert (
        main(
            [
                "analyze",
                str(base_dir),
                str(tuned_dir),
                "--out",
                str(tmp_path / "r"),
                "--ranks",
                "1-2",
                "--starts",
                "1",
                "--json",
            ]
        )
        == 0
    )
    doc = json.loads(capsys.readouterr().out)
    assert doc["shape"] == [16, 4, 4, 2, 4] and len(doc["cp"]) == 2
    assert (tmp_path / "r" / "report.md").is_file()


def test_analyze_real_minilm_adapter(minilm_lora, tmp_path, capsys):
    adapter_dir, _, base_dir = minilm_lora
    assert (
        main(
            [
                "analyze-adapter",
                str(adapter_dir),
                "--base-config",
                str(base_dir),
                "--out",
                str(tmp_path / "r"),
                "--ranks",
                "1,2",
                "--starts",
                "1",
                "--max-iter",
                "20",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "delta as 1 CP tensor(s) (Q, K, V, O (384, 32, 12, 6, 4))" in out
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    assert len(rep["per_matrix"]) == 24
    assert all(p["numerical"] == 4 for p in rep["per_matrix"])


@pytest.fixture(scope="module")
def saved_lorta(tmp_path_factory):
    """A tiny BERT with a LoRTA r=2 adapter (random factors: ΔW ≠ 0) saved by save_adapter:
    (adapter_dir, model)."""
    import torch
    from transformers import BertModel

    import cptensor_adapters as cpa

    from .conftest import tiny_bert_config

    torch.manual_seed(0)
    model = cpa.attach(BertModel(tiny_bert_config()), cpa.AdapterConfig(r=2, init="random"))
    path = cpa.save_adapter(model, tmp_path_factory.mktemp("lorta") / "adapter")
    return path, model


def test_analyze_own_adapter(saved_lorta, tmp_path, capsys):
    adapter_dir, model = saved_lorta
    argv = ["analyze-adapter", str(adapter_dir), "--out", str(tmp_path / "r"), "--ranks", "1-2"]
    assert main([*argv, "--starts", "1", "--max-iter", "200", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["shape"] == [16, 4, 4, 2, 4] and doc["title"] == "LoRTA adapter's delta"
    assert doc["cp"][1]["energy_captured_pct"] > 99.9  # a rank-2 LoRTA adapter: CP rank <= 2
    assert len(doc["per_matrix"]) == 8 and all(p["numerical"] <= 2 for p in doc["per_matrix"])
    # the analysed norm is the dense truth's
    import cptensor_adapters as cpa

    norm = np.sqrt(sum(float((w.double() ** 2).sum()) for w in cpa.delta_weights(model).values()))
    assert doc["norm"] == pytest.approx(norm, rel=1e-5)
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    assert rep["shape"] == doc["shape"]
    assert (
        "# Tensor rank of the LoRTA adapter's delta" in (tmp_path / "r" / "report.md").read_text()
    )
    # text output names the format it read
    assert main([*argv[:4], "--out", str(tmp_path / "t"), "--ranks", "1", "--starts", "1"]) == 0
    cap = capsys.readouterr()
    assert "cptensor_adapters 'lorta' adapter" in cap.out
    assert (tmp_path / "t" / "report.md").is_file()


def test_analyze_adapter_bad_directories(saved_lorta, tmp_path, capsys):
    import shutil

    src = saved_lorta[0]
    out = ["--out", str(tmp_path / "o")]

    def broken(name, config=None, weights=None):
        d = tmp_path / name
        shutil.copytree(src, d)
        if config is not None:
            (d / "adapter_config.json").write_text(config)
        if weights is not None:
            (d / "adapter_model.safetensors").write_bytes(weights)
        return str(d)

    _bad(capsys, ["analyze-adapter", broken("json", config="{oops"), *out], "not valid JSON")
    _bad(
        capsys,
        ["analyze-adapter", broken("unknown", config='{"r": 4}'), *out],
        "unknown adapter format",
    )
    _bad(
        capsys,
        ["analyze-adapter", broken("weights", weights=b"\x00garbage"), *out],
        "not a valid safetensors file",
    )
    meta = json.loads((src / "adapter_config.json").read_text())
    meta["grid"]["targets"][0]["out_features"] = 99
    _bad(
        capsys,
        ["analyze-adapter", broken("grid", config=json.dumps(meta)), *out],
        "adapter_config.json",
    )
    assert not (tmp_path / "o").exists()  # nothing written on failure


def _npy_declaring(path, shape: tuple[int, ...]) -> None:
    header = f"{{'descr': '<f8', 'fortran_order': False, 'shape': {shape}, }}"
    header += " " * (118 - len(header)) + "\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode())


def test_crafted_inputs_and_outputs_are_one_line_errors(planted, tmp_path, capsys):
    """Each was a traceback (BadZipFile, _ArrayMemoryError, FileExistsError after the whole
    computation) or a list built before validation (--ranks 1-100000000)."""
    bad_zip = tmp_path / "bad.npz"
    bad_zip.write_bytes(b"PK\x03\x04 not really a zip")
    _bad(capsys, ["fit", str(bad_zip), "--rank", "1"], "not a tensor")
    huge = tmp_path / "huge.npy"
    _npy_declaring(huge, (100000, 100000, 100000))
    _bad(capsys, ["fit", str(huge), "--rank", "1"], "the header declares shape (100000")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    _bad(capsys, ["sweep", str(planted), "--out", str(a_file)], "exists and is not a directory")
    _bad(capsys, ["fit", str(planted), "--rank", "1", "--out", str(a_file / "cp")], "not a dir")
    _bad(capsys, ["fit", str(planted), "--rank", "1", "--out", str(tmp_path)], "is a directory")
    _bad(capsys, ["sweep", str(planted), "--ranks", "1-100000000"], "more than 1024 ranks")


def test_a_closed_pipe_is_not_an_error(planted, monkeypatch, capsys):
    """`cptensor ... --json | head -1`: the reader goes away; no BrokenPipeError traceback."""
    import os

    read_end, write_end = os.pipe()
    os.close(read_end)
    closed = os.fdopen(write_end, "w")
    monkeypatch.setattr(sys, "stdout", closed)
    try:
        status = main(["sweep", str(planted), "--ranks", "1-2", "--json", "--quiet"])
    finally:
        monkeypatch.undo()
        try:
            closed.close()
        except BrokenPipeError:
            pass
    assert status == 141
    assert "Traceback" not in capsys.readouterr().err


def test_a_bug_keeps_its_traceback(planted, monkeypatch):
    """Only the library's own error type (and file errors) become one-line messages; a plain
    ValueError or KeyError from a bug propagates (it used to exit 2 without a traceback)."""
    import cptensor.cli as cli

    for exc in (ValueError("a bug"), KeyError("bug"), IndexError("bug")):

        def broken(args, exc=exc):
            raise exc

        monkeypatch.setattr(cli, "_cmd_fit", broken)
        with pytest.raises(type(exc)):
            main(["fit", str(planted), "--rank", "1"])


@pytest.mark.parametrize("entry", ["cptensor_adapters.cli", "cptensor"])
def test_cp_commands_run_without_torch(planted, tmp_path, entry):
    """fit and sweep need only NumPy/SciPy: with torch's import blocked they still run, from
    the console script's module and from python -m cptensor."""
    code = (
        "import runpy, sys\n"
        "class NoTorch:  # any 'import torch' fails, as where torch is not installed\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'torch':\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        f"sys.argv = ['cptensor', 'sweep', {str(planted)!r}, '--ranks', '1-2', '--json',\n"
        f"            '--starts', '1', '--out', {str(tmp_path / 'sw')!r}]\n"
        f"runpy.run_module({entry!r}, run_name='__main__')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["rows"][0]["rank"] == 1
    assert "torch" not in proc.stderr
    assert (tmp_path / "sw" / "sweep.json").is_file()


def _tiny_gqa_llama(seed: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        vocab_size=64,
    )
    return LlamaForCausalLM(cfg)


def test_analyze_gqa_checkpoints(tmp_path, capsys):
    """A Llama pair with grouped-query attention: a full report over its two CP tensors
    (Q with O over 4 heads, K with V over 2), read from checkpoints with no model built."""
    _tiny_gqa_llama(0).save_pretrained(tmp_path / "base")
    _tiny_gqa_llama(1).save_pretrained(tmp_path / "tuned")
    argv = ["analyze", str(tmp_path / "base"), str(tmp_path / "tuned"), "--ranks", "1-2"]
    assert main([*argv, "--out", str(tmp_path / "r"), "--starts", "1", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [g["matrices"] for g in doc["groups"]] == ["Q, O", "K, V"]
    assert [g["shape"] for g in doc["groups"]] == [[32, 8, 4, 2, 2], [32, 8, 2, 2, 2]]
    assert len(doc["sweeps"]) == 2 and len(doc["per_matrix"]) == 8
    assert "grouped-query attention" in " ".join(doc["notes"])
    assert (tmp_path / "r" / "report.md").is_file()


def test_analyze_gqa_adapter(tmp_path, capsys):
    """A LoRTA adapter on a GQA model: its own two CP tensors, recovered exactly at rank r."""
    import cptensor_adapters as cpa

    model = cpa.attach(_tiny_gqa_llama(0), cpa.AdapterConfig(r=2, init="random", seed=3))
    path = cpa.save_adapter(model, tmp_path / "adapter")
    argv = ["analyze-adapter", str(path), "--out", str(tmp_path / "r"), "--ranks", "1-2"]
    assert main([*argv, "--starts", "2", "--max-iter", "300", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [g["shape"] for g in doc["groups"]] == [[32, 8, 4, 2, 2], [32, 8, 2, 2, 2]]
    assert doc["cp"][1]["energy_captured_pct"] > 99.9  # rank 2 in each tensor: the adapter itself
