"""Config round trip and bad input: every error names the argument, the value and what was
expected."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import cptensor_adapters as cpa
from cptensor_adapters import AdapterConfig, Layout

from ._models import bert_config


def test_config_json_round_trip():
    cfg = AdapterConfig(
        r=3,
        alpha=6,
        dropout=0.1,
        layout=Layout(("out", "in", "layer"), ("matrix",)),
        targets=["q", "v"],
        head_split={"q": "in"},
        init="random",
        seed=4,
        factor_dtype="float32",
        modules_to_save=["classifier"],
    )
    data = json.loads(cfg.to_json())
    assert data["layout"] == {
        "name": "custom",
        "modes": ["out", "in", "layer"],
        "groups": ["matrix"],
    }
    back = AdapterConfig.from_json(cfg.to_json())
    assert back == cfg and back.resolved_layout == cfg.resolved_layout
    assert AdapterConfig(layout=Layout.resolve("lora")).layout == "lora"
    assert cfg.replace(r=5).r == 5 and cfg.r == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"r": 0}, r"r: expected an integer >= 1, got 0"),
        ({"r": -2}, r"r: expected an integer >= 1, got -2"),
        ({"r": 2.5}, r"r: expected an integer >= 1, got 2.5"),
        ({"alpha": float("nan")}, r"alpha: expected a finite number"),
        ({"dropout": 1.0}, r"dropout: expected a probability in \[0, 1\), got 1.0"),
        ({"layout": "loRTA"}, r"layout: unknown layout 'loRTA'; expected one of"),
        ({"layout": {"modes": ["out", "in", "tensor"]}}, r"unknown axis 'tensor'"),
        ({"layout": {"axes": ["out"]}}, r"needs 'modes'"),
        ({"head_split": "both"}, r"head_split: expected 'auto', 'out', 'in'"),
        ({"head_split": {"q": "up"}}, r"head_split: sides must be 'out' or 'in'"),
        ({"init": "zeros"}, r"init: expected one of \('default', 'reference', 'scaled', "),
        ({"factor_dtype": "float8"}, r"factor_dtype: expected None or one of"),
        ({"modules_to_save": "classifier"}, r"modules_to_save: expected a list"),
        ({"roles": {"wq": "query"}}, r"roles: values must be one of"),
        ({"num_heads": 0}, r"num_heads: expected None or an integer >= 1, got 0"),
        ({"targets": 3}, r"targets: expected None, a regex string or a list"),
    ],
)
def test_bad_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdapterConfig(**kwargs)


def test_unknown_config_field():
    with pytest.raises(ValueError, match=r"unknown fields \['rank'\]"):
        AdapterConfig.from_dict({"rank": 4})


def test_unknown_target_names(tiny):
    with pytest.raises(
        ValueError, match=r"targets: \['qurey'\] match no module.*'attention.self.query'"
    ):
        cpa.attach(tiny("bert"), AdapterConfig(targets=["query", "qurey"]))
    with pytest.raises(ValueError, match=r"regular expression 'nothing.*' matches no"):
        cpa.attach(tiny("bert"), AdapterConfig(targets="nothing.*"))
    with pytest.raises(ValueError, match=r"invalid regular expression"):
        cpa.attach(tiny("bert"), AdapterConfig(targets="(unclosed"))


def test_model_without_known_attention_lists_what_it_found():
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    with pytest.raises(
        ValueError, match=r"found no attention projection.*Weight modules found: '0', '2'"
    ):
        cpa.attach(net, AdapterConfig())
    m = cpa.attach(net, AdapterConfig(r=2, targets=["0", "2"], init="random"))
    assert cpa.parameter_report(m)["default"].groups == 2  # different shapes: two groups


def test_loading_into_other_geometry(tiny, tmp_path):
    import transformers

    m = cpa.attach(tiny("bert"), AdapterConfig(r=2))
    cpa.save_adapter(m, tmp_path)
    wider = transformers.BertModel(bert_config(hidden_size=48))
    with pytest.raises(
        ValueError,
        match=r"other geometry: hidden_size: file 32, model 48; head_dim: file 8, model 12",
    ):
        cpa.load_adapter(wider, tmp_path)
    deeper = transformers.BertModel(bert_config(num_hidden_layers=3))
    with pytest.raises(
        ValueError, match=r"num_layers: file 2, model 3; targets only in model: 'encoder.layer.2"
    ):
        cpa.load_adapter(deeper, tmp_path)
    with pytest.raises(ValueError, match=r"other geometry: architecture: file bert, model gpt2"):
        cpa.load_adapter(tiny("gpt2"), tmp_path)
    assert not hasattr(deeper, "cp_adapters")  # nothing half-attached


def test_bad_names_and_state(tiny, tmp_path):
    m = cpa.attach(tiny("bert"), AdapterConfig(r=2))
    with pytest.raises(ValueError, match=r"already has an adapter 'default'"):
        cpa.attach(m, AdapterConfig(r=2))
    with pytest.raises(ValueError, match=r"name: expected a non-empty string"):
        cpa.attach(m, AdapterConfig(r=2), name="a.b")
    with pytest.raises(KeyError, match=r"no adapter\(s\) \['nope'\]"):
        cpa.set_active(m, "nope")
    with pytest.raises(KeyError, match=r"no adapter 'nope'"):
        cpa.delta_weights(m, "nope")
    with pytest.raises(ValueError, match=r"has no adapters"):
        cpa.merge(tiny("bert"))
    with pytest.raises(TypeError, match=r"config: expected an AdapterConfig"):
        cpa.attach(tiny("bert"), {"r": 2})
    with pytest.raises(ValueError, match=r"modules_to_save: \['classifer'\] match no module"):
        cpa.attach(tiny("bert"), AdapterConfig(modules_to_save=["classifer"]))
    with pytest.raises(ValueError, match=r"contains adapter targets"):
        cpa.attach(tiny("bert"), AdapterConfig(modules_to_save=["attention"]))
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    with pytest.raises(ValueError, match=r"is not a cptensor_adapters adapter"):
        cpa.load_adapter(tiny("bert"), tmp_path)


def test_weights_on_several_devices_are_refused(tiny):
    m = tiny("bert")
    m.encoder.layer[1].to("meta")  # weights now on cpu and meta
    with pytest.raises(ValueError, match=r"several devices \['cpu', 'meta'\]"):
        cpa.attach(m, AdapterConfig())


def test_factors_live_where_the_weights_are(tiny):
    with torch.device("meta"):
        m = cpa.attach(copy.deepcopy(tiny("bert")).to("meta"), AdapterConfig(r=2))
    assert {p.device.type for p in m.cp_adapters.parameters()} == {"meta"}
