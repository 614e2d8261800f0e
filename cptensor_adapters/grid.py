"""The weight grid of a transformer: which projections an adapter targets, and their geometry.

A :class:`WeightGrid` lists the adapted weights (:class:`Target`), each with the layer it
belongs to, the matrix it plays (``"q"``, ``"k"``, ``"v"``, ``"o"`` for attention, or the
module's path inside its layer, e.g. ``"mlp.up_proj"``, for anything else), its shape, its
heads and how the weight is stored:

- ``"linear"``: ``torch.nn.Linear``, weight stored ``(out_features, in_features)``;
- ``"conv1d"``: the GPT-2 ``Conv1D`` of ``transformers``, weight stored transposed,
  ``(in_features, out_features)``. GPT-2's ``c_attn`` is one fused ``Conv1D`` whose output
  is ``[Q | K | V]``: it yields three targets ``"...c_attn:q"``, ``":k"`` and ``":v"``,
  each a slice of the module's output (:attr:`Target.out_offset`).

Every weight is described in the ``Linear`` orientation (``out × in``) whatever its
storage. Known architectures are found by module names: BERT/RoBERTa
(``attention.self.query|key|value``, ``attention.output.dense``), GPT-2 (``attn.c_attn``,
``attn.c_proj``) and Llama/Mistral/Qwen2 (``self_attn.q_proj|k_proj|v_proj|o_proj``, with
grouped-query attention: K and V have ``num_kv_heads`` heads). Any other ``Linear`` or
``Conv1D`` can be targeted by name (PEFT semantics: a list of names matched exactly or as a
dotted suffix, or one regular expression matched against the full module path), with the
head geometry given explicitly through ``roles`` and ``num_heads``.

The layer of a target is the first integer component of its module path
(``encoder.layer.3.attention.self.query`` is in layer 3).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from cptensor.errors import CPTensorError, CPTensorKeyError, CPTensorTypeError

__all__ = ["ATTENTION_ROLES", "Target", "WeightGrid"]

#: Matrix names of the attention projections, in grid order.
ATTENTION_ROLES: tuple[str, ...] = ("q", "k", "v", "o")

Storage = Literal["linear", "conv1d"]
Side = Literal["out", "in"]

# Suffixes of module paths that name attention projections in known architectures.
_KNOWN_ROLES: dict[str, str] = {
    # BERT / RoBERTa / MiniLM / ELECTRA ...
    "attention.self.query": "q",
    "attention.self.key": "k",
    "attention.self.value": "v",
    "attention.output.dense": "o",
    # Llama / Mistral / Qwen2 / Gemma / OPT / BART
    "self_attn.q_proj": "q",
    "self_attn.k_proj": "k",
    "self_attn.v_proj": "v",
    "self_attn.o_proj": "o",
    "self_attn.out_proj": "o",
    # GPT-2 (c_attn is fused, see _FUSED)
    "attn.c_proj": "o",
}
_FUSED: dict[str, tuple[str, ...]] = {"attn.c_attn": ("q", "k", "v")}
_ARCH_OF_SUFFIX = {
    "attention.self.query": "bert",
    "self_attn.q_proj": "llama",
    "attn.c_attn": "gpt2",
}


@dataclass(frozen=True)
class Target:
    """One adapted weight matrix, described in ``Linear`` orientation (``out × in``).

    Attributes
    ----------
    name : str
        unique name: the module path, plus ``":q"``/``":k"``/``":v"`` for the slices
        of a fused module (GPT-2 ``c_attn``).
    module : str
        path of the module that holds the weight.
    layer : int
        layer number (first integer component of the module path).
    matrix : str
        ``"q"``, ``"k"``, ``"v"``, ``"o"``, or the module path inside its layer.
    in_features, out_features : int
        shape of the weight in ``Linear`` orientation.
    heads : int
        number of heads along :attr:`head_side` (``num_kv_heads`` for K and V under
        grouped-query attention); 0 for a target without head structure.
    head_dim : int
        size of one head; 0 without head structure.
    head_side : {"out", "in"} or None
        the side the heads split naturally: ``"out"`` for Q, K, V (heads are
        output rows), ``"in"`` for O; ``None`` without head structure.
    storage : {"linear", "conv1d"}
        ``"linear"`` (weight ``out × in``) or ``"conv1d"`` (weight ``in × out``).
    out_offset : int
        first row of this target in the module's output (fused modules).

    Examples
    --------
    >>> t = Target("l.0.q", "l.0.q", 0, "q", 8, 8, heads=2, head_dim=4, head_side="out")
    >>> t.side_size("out"), t.heads_on("in")
    (8, 2)
    """

    name: str
    module: str
    layer: int
    matrix: str
    in_features: int
    out_features: int
    heads: int = 0
    head_dim: int = 0
    head_side: Side | None = None
    storage: Storage = "linear"
    out_offset: int = 0

    def __post_init__(self) -> None:
        for name in ("name", "module", "matrix"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v:
                raise CPTensorError(f"Target.{name}: expected a non-empty string, got {v!r}")
        for name, low in (
            ("layer", 0),
            ("in_features", 1),
            ("out_features", 1),
            ("heads", 0),
            ("head_dim", 0),
            ("out_offset", 0),
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise CPTensorError(
                    f"Target.{name} of {self.name!r}: expected an integer >= {low}, got {v!r}"
                )
        if self.head_side not in (None, "out", "in"):
            raise CPTensorError(
                f"Target.head_side of {self.name!r}: expected None, 'out' or 'in', got "
                f"{self.head_side!r}"
            )
        if self.storage not in ("linear", "conv1d"):
            raise CPTensorError(
                f"Target.storage of {self.name!r}: expected 'linear' or 'conv1d', got "
                f"{self.storage!r}"
            )

    def side_size(self, side: Side) -> int:
        """Size of the ``"out"`` or ``"in"`` side of the weight."""
        return self.out_features if side == "out" else self.in_features

    def heads_on(self, side: Side) -> int:
        """Number of heads of size :attr:`head_dim` along ``side`` (1 without head structure)."""
        if self.head_dim <= 0:
            return 1
        size = self.side_size(side)
        if size % self.head_dim:
            raise CPTensorError(
                f"target {self.name!r}: its {side} side has {size} features, not a multiple of "
                f"head_dim={self.head_dim}; heads cannot split it (use head_split to choose "
                "the other side)"
            )
        return size // self.head_dim

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description."""
        return asdict(self)


def _first_int(path: str) -> int | None:
    for part in path.split("."):
        if part.isdigit():
            return int(part)
    return None


def _relative_to_layer(path: str) -> str:
    parts = path.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            rest = parts[i + 1 :]
            return ".".join(rest) if rest else path
    return path


def _is_conv1d(module: nn.Module) -> bool:
    # transformers.pytorch_utils.Conv1D without importing transformers
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "weight")


def _weight_shape(module: nn.Module) -> tuple[int, int, Storage]:
    """(out_features, in_features, storage) of a supported module."""
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features, "linear"
    if _is_conv1d(module):
        w = module.weight
        return int(w.shape[1]), int(w.shape[0]), "conv1d"
    raise CPTensorTypeError(f"unsupported module type {type(module).__name__}")


#: Module names of GPT-2's ``Conv1D`` projections (weights stored ``in × out``); how
#: :meth:`WeightGrid.from_shapes` tells their storage from a checkpoint's tensor names.
_CONV1D_NAMES = frozenset({"c_attn", "c_proj", "c_fc"})


@dataclass(frozen=True)
class _Weight:
    """A weight matrix as discovery sees it: path, ``Linear``-oriented shape, storage."""

    path: str
    out_features: int
    in_features: int
    storage: Storage


#: Name of the class attribute by which adapter modules tell the grid what they are.
WRAPPER_ROLE = "cp_adapter_role"


def suffix_match(path: str, key: str) -> bool:
    """Whether module ``path`` is ``key`` or ends with ``"." + key`` (PEFT's name rule)."""
    return path == key or path.endswith("." + key)


def iter_weight_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Yield ``(path, module)`` for every ``Linear``/``Conv1D`` of ``model``, seeing through
    adapter wrappers (their base layer is reported under the wrapper's path) and skipping the
    factor store and ``modules_to_save`` wrappers.

    The adapter classes say what they are with a class attribute :data:`WRAPPER_ROLE`
    (``"wraps"``: report ``base_layer``; ``"skip"``: not a target), so the grid needs no
    import of the module classes."""
    skip: list[str] = []
    for path, module in model.named_modules():
        if any(path == s or path.startswith(s + ".") for s in skip):
            continue
        role = getattr(type(module), WRAPPER_ROLE, None)
        if role == "wraps":
            skip.append(path)
            yield path, module.base_layer
        elif role == "skip":
            skip.append(path)
        elif isinstance(module, nn.Linear) or _is_conv1d(module):
            yield path, module


def _config_int(config: Any, *names: str) -> int | None:
    """The first of ``names`` that ``config`` (a transformers config or a ``config.json``
    dict) sets to a positive integer."""
    for n in names:
        v = config.get(n) if isinstance(config, Mapping) else getattr(config, n, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


@dataclass(frozen=True)
class WeightGrid:
    """The adapted weights of a model and their geometry.

    Attributes
    ----------
    architecture : str
        ``"bert"``, ``"gpt2"``, ``"llama"`` or ``"custom"``.
    targets : tuple of Target
        the adapted weights, ordered by layer then matrix (q, k, v, o, others).
    hidden_size : int or None
        model width ``d`` (``None`` if unknown).
    num_heads : int or None
        attention heads ``H`` (``None`` without attention targets).
    num_kv_heads : int or None
        key/value heads (``< num_heads`` under grouped-query attention).
    head_dim : int or None
        ``d_h``.

    Examples
    --------
    >>> from transformers import BertConfig, BertModel
    >>> model = BertModel(BertConfig(hidden_size=32, num_hidden_layers=2,
    ...                              num_attention_heads=4, intermediate_size=64))
    >>> grid = WeightGrid.from_model(model)
    >>> grid.architecture, grid.num_layers, grid.matrices, grid.num_heads, grid.head_dim
    ('bert', 2, ('q', 'k', 'v', 'o'), 4, 8)
    >>> grid.targets[0].name
    'encoder.layer.0.attention.self.query'
    """

    architecture: str
    targets: tuple[Target, ...]
    hidden_size: int | None = None
    num_heads: int | None = None
    num_kv_heads: int | None = None
    head_dim: int | None = None
    _by_name: dict[str, Target] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {t.name: t for t in self.targets})

    # ------------------------------------------------------------------ queries
    @property
    def layers(self) -> tuple[int, ...]:
        """Distinct layer numbers of the targets, sorted."""
        return tuple(sorted({t.layer for t in self.targets}))

    @property
    def num_layers(self) -> int:
        """Number of distinct adapted layers ``L``."""
        return len(self.layers)

    @property
    def matrices(self) -> tuple[str, ...]:
        """Distinct matrix names, attention roles first (q, k, v, o)."""
        return ordered_matrices(t.matrix for t in self.targets)

    @property
    def modules(self) -> tuple[str, ...]:
        """Distinct module paths holding the targets, in order of first appearance."""
        return tuple(dict.fromkeys(t.module for t in self.targets))

    def __len__(self) -> int:
        return len(self.targets)

    def __iter__(self) -> Iterator[Target]:
        return iter(self.targets)

    def __getitem__(self, name: str) -> Target:
        try:
            return self._by_name[name]
        except KeyError:
            raise CPTensorKeyError(f"no target named {name!r} in this grid") from None

    def targets_of(self, module: str) -> tuple[Target, ...]:
        """The targets held by one module (three for a fused GPT-2 ``c_attn``)."""
        return tuple(t for t in self.targets if t.module == module)

    # ------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description (what :meth:`from_dict` reads back).

        Examples
        --------
        >>> g = WeightGrid("custom", (Target("w", "w", 0, "w", 3, 2),))
        >>> WeightGrid.from_dict(g.to_dict()) == g
        True
        """
        return {
            "architecture": self.architecture,
            "hidden_size": self.hidden_size,
            "num_heads": self.num_heads,
            "num_kv_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "targets": [t.to_dict() for t in self.targets],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WeightGrid:
        """Inverse of :meth:`to_dict`; every field is checked for type and range.

        Raises
        ------
        ValueError
            a missing key or a value of the wrong type or range, named.
        """
        if not isinstance(data, Mapping):
            raise CPTensorError(f"grid: expected a mapping, got {type(data).__name__}")
        arch = data.get("architecture")
        if not isinstance(arch, str):
            raise CPTensorError(f"grid.architecture: expected a string, got {arch!r}")
        targets = data.get("targets")
        if not isinstance(targets, list) or not all(isinstance(t, Mapping) for t in targets):
            raise CPTensorError("grid.targets: expected a list of objects")
        sizes = {}
        for key in ("hidden_size", "num_heads", "num_kv_heads", "head_dim"):
            v = data.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise CPTensorError(f"grid.{key}: expected None or an integer >= 1, got {v!r}")
            sizes[key] = v
        fields_ = {f for f in Target.__dataclass_fields__}
        built = []
        for t in targets:
            unknown = sorted(set(t) - fields_)
            if unknown:
                raise CPTensorError(f"grid.targets: unknown fields {unknown[:5]}")
            try:
                built.append(Target(**t))
            except TypeError as exc:  # a required field missing
                raise CPTensorError(f"grid.targets: {exc}") from None
        names = [t.name for t in built]
        if len(set(names)) != len(names):
            raise CPTensorError("grid.targets: target names are not unique")
        return cls(architecture=arch, targets=tuple(built), **sizes)

    def differences(
        self, other: WeightGrid, *, labels: tuple[str, str] = ("self", "other")
    ) -> list[str]:
        """Human-readable list of what differs between two grids (empty if they match).

        Examples
        --------
        >>> a = WeightGrid("custom", (Target("w", "w", 0, "w", 3, 2),), hidden_size=2)
        >>> b = WeightGrid("custom", (Target("w", "w", 0, "w", 4, 2),), hidden_size=4)
        >>> a.differences(b, labels=("file", "model"))
        ['hidden_size: file 2, model 4', "target 'w': in_features file 3, model 4"]
        """
        la, lb = labels
        out = [
            f"{attr}: {la} {va}, {lb} {vb}" for attr, va, vb in _changed(self, other, _GRID_FIELDS)
        ]
        names_a = [t.name for t in self.targets]
        names_b = [t.name for t in other.targets]
        only_a = [n for n in names_a if n not in other._by_name]
        only_b = [n for n in names_b if n not in self._by_name]
        if only_a:
            out.append(f"targets only in {la}: {_preview(only_a)}")
        if only_b:
            out.append(f"targets only in {lb}: {_preview(only_b)}")
        for t in self.targets:
            u = other._by_name.get(t.name)
            if u is None:
                continue
            out += [
                f"target {t.name!r}: {attr} {la} {va}, {lb} {vb}"
                for attr, va, vb in _changed(t, u, _TARGET_FIELDS)
            ]
        return out

    # ---------------------------------------------------------------- discovery
    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        targets: str | Sequence[str] | None = None,
        *,
        roles: Mapping[str, str] | None = None,
        num_heads: int | None = None,
        num_kv_heads: int | None = None,
        head_dim: int | None = None,
    ) -> WeightGrid:
        """Find the targets of ``model`` and their geometry.

        Parameters
        ----------
        model : torch.nn.Module
            a ``torch.nn.Module`` (adapter wrappers already in it are seen through).
        targets : str or list of str, optional
            ``None`` for the attention projections Q, K, V, O of a known
            architecture; a list whose entries are matrix names (``"q"``, ``"k"``,
            ``"v"``, ``"o"``) or module names matched exactly or as a dotted suffix
            (``"query"``, ``"mlp.up_proj"``); or one string, a regular expression
            matched against full module paths (``re.fullmatch``), as in PEFT.
        roles : mapping of str to str, optional
            for other architectures, module-name suffix → ``"q"|"k"|"v"|"o"``: these
            modules are attention projections with heads.
        num_heads : int, optional
            number of attention heads; default from ``model.config``
            (``num_attention_heads``/``n_head``); an explicit value wins.
        num_kv_heads : int, optional
            number of key/value heads; default ``num_key_value_heads`` of
            the config, else ``num_heads``.
        head_dim : int, optional
            size of one head; default ``head_dim`` of the config, else hidden
            size over ``num_heads``.

        Returns
        -------
        WeightGrid
            The grid.

        Raises
        ------
        ValueError
            no attention projection found (the message lists the modules it
            found), a target name that matches nothing, a shape that contradicts the
            head geometry, or two targets with the same layer and matrix.
        TypeError
            ``targets`` of the wrong type.

        Examples
        --------
        >>> from transformers import LlamaConfig, LlamaModel
        >>> cfg = LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
        ...                   num_key_value_heads=2, intermediate_size=64, vocab_size=50)
        >>> grid = WeightGrid.from_model(LlamaModel(cfg), targets=["k", "up_proj"])
        >>> [(t.matrix, t.out_features, t.heads) for t in grid]
        [('k', 16, 2), ('mlp.up_proj', 64, 0)]
        """
        weights = [_Weight(path, *_weight_shape(mod)) for path, mod in iter_weight_modules(model)]
        return cls._discover(
            weights,
            getattr(model, "config", None),
            targets,
            roles=roles,
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            head_dim=head_dim,
        )

    @classmethod
    def from_shapes(
        cls,
        shapes: Mapping[str, Sequence[int]],
        config: Any = None,
        targets: str | Sequence[str] | None = None,
        *,
        orientation: Literal["stored", "linear"] = "stored",
        roles: Mapping[str, str] | None = None,
        num_heads: int | None = None,
        num_kv_heads: int | None = None,
        head_dim: int | None = None,
    ) -> WeightGrid:
        """The grid of a model known only by its weights' names and shapes (a checkpoint's
        header, an adapter's factors) and its ``config.json``: no model is instantiated.

        Discovery is that of :meth:`from_model`, on the same module paths: the grid of a
        checkpoint equals the grid of the model it was saved from.

        Parameters
        ----------
        shapes : mapping of str to shape
            Tensor name → shape. Names are module paths with an optional ``.weight``;
            tensors that are not 2-D, and names ending in anything but ``.weight`` once a
            ``.weight`` name is present for them, are ignored. GPT-2's ``c_attn``,
            ``c_proj`` and ``c_fc`` are ``Conv1D`` modules (weights stored ``in × out``).
        config : mapping or transformers config, optional
            The model's config (``config.json`` as a dict): heads, key/value heads, hidden
            size and head size, as :meth:`from_model` reads ``model.config``.
        targets : str or list of str, optional
            As in :meth:`from_model`.
        orientation : {"stored", "linear"}
            ``"stored"``: shapes as the checkpoint stores the weights (``Conv1D``
            transposed); ``"linear"``: shapes already ``(out, in)``, as LoRA factors give
            them (``B.shape[0], A.shape[1]``).
        roles, num_heads, num_kv_heads, head_dim
            As in :meth:`from_model`.

        Returns
        -------
        WeightGrid

        Raises
        ------
        CPTensorError
            As :meth:`from_model`; ``orientation`` not one of the two values.

        Examples
        --------
        >>> cfg = {"num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 32}
        >>> names = {f"model.layers.{l}.self_attn.{m}_proj.weight": (16 if m in "kv" else 32, 32)
        ...          for l in range(2) for m in "qkvo"}
        >>> grid = WeightGrid.from_shapes(names, cfg)
        >>> grid.architecture, grid.num_layers, grid.num_kv_heads, grid.targets[1].out_features
        ('llama', 2, 2, 16)
        """
        if orientation not in ("stored", "linear"):
            raise CPTensorError(f"orientation: expected 'stored' or 'linear', got {orientation!r}")
        weights: dict[str, _Weight] = {}
        for name, shape in shapes.items():
            path = name.removesuffix(".weight")
            if len(shape) != 2:
                continue
            if path in weights:
                raise CPTensorError(f"shapes: {path!r} is given twice (with and without .weight)")
            storage: Storage = "conv1d" if path.rsplit(".", 1)[-1] in _CONV1D_NAMES else "linear"
            rows, cols = (int(shape[0]), int(shape[1]))
            if storage == "conv1d" and orientation == "stored":
                rows, cols = cols, rows
            weights[path] = _Weight(path, rows, cols, storage)
        return cls._discover(
            list(weights.values()),
            config,
            targets,
            roles=roles,
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            head_dim=head_dim,
        )

    @classmethod
    def _discover(
        cls,
        weights: Sequence[_Weight],
        config: Any,
        targets: str | Sequence[str] | None,
        *,
        roles: Mapping[str, str] | None,
        num_heads: int | None,
        num_kv_heads: int | None,
        head_dim: int | None,
    ) -> WeightGrid:
        """The grid of ``weights`` (what :meth:`from_model` and :meth:`from_shapes` find)."""
        if targets is not None and not isinstance(targets, (str, list, tuple)):
            raise CPTensorTypeError(
                f"targets: expected None, a regex string or a list of names, got "
                f"{type(targets).__name__}"
            )
        if isinstance(targets, (list, tuple)):
            bad = [t for t in targets if not isinstance(t, str) or not t]
            if bad or not targets:
                raise CPTensorError(
                    "targets: expected a non-empty list of non-empty strings, got "
                    f"{list(targets)!r}"
                )
        role_map: dict[str, str] = dict(_KNOWN_ROLES)
        if roles:
            for k, v in roles.items():
                if v not in ATTENTION_ROLES:
                    raise CPTensorError(
                        f"roles: {k!r} maps to {v!r}; expected one of {list(ATTENTION_ROLES)}"
                    )
                role_map[k] = v
        H = num_heads or _config_int(config, "num_attention_heads", "n_head", "num_heads")
        H_kv = num_kv_heads or _config_int(config, "num_key_value_heads", "num_kv_heads") or H
        d = _config_int(config, "hidden_size", "n_embd", "d_model")
        d_h = head_dim or _config_int(config, "head_dim")
        if d_h is None and H and d and d % H == 0:
            d_h = d // H

        # 1. classify every weight: attention role(s) or generic
        entries: list[tuple[str, _Weight, tuple[str, ...] | None]] = []
        arch = "custom"
        for mod in weights:
            path = mod.path
            roles_here: tuple[str, ...] | None = None
            for suffix, fused in _FUSED.items():
                if suffix_match(path, suffix) and mod.storage == "conv1d":
                    roles_here = fused
                    arch = _ARCH_OF_SUFFIX.get(suffix, arch)
            if roles_here is None:
                for suffix, role in role_map.items():
                    if suffix_match(path, suffix):
                        roles_here = (role,)
                        if suffix in _ARCH_OF_SUFFIX:
                            arch = _ARCH_OF_SUFFIX[suffix]
                        break
            entries.append((path, mod, roles_here))
        attention = [e for e in entries if e[2] is not None]

        # 2. select
        selected: list[tuple[str, _Weight, tuple[str, ...] | None]] = []
        if targets is None:
            if not attention:
                raise CPTensorError(
                    "WeightGrid.from_model: found no attention projection this library knows "
                    "(BERT/RoBERTa query/key/value/attention.output.dense, GPT-2 c_attn/c_proj, "
                    "Llama-style q_proj/k_proj/v_proj/o_proj). Weight modules found: "
                    f"{_preview(_suffixes([p for p, _, _ in entries]), 12)}. Pass targets=[...] "
                    "(and roles=/num_heads= for attention geometry)."
                )
            selected = attention
        elif isinstance(targets, str):
            try:
                pattern = re.compile(targets)
            except re.error as exc:
                raise CPTensorError(
                    f"targets: invalid regular expression {targets!r}: {exc}"
                ) from None
            selected = [e for e in entries if pattern.fullmatch(e[0])]
            if not selected:
                raise CPTensorError(
                    f"targets: regular expression {targets!r} matches no Linear/Conv1D module; "
                    f"module paths found: {_preview([p for p, _, _ in entries], 8)}"
                )
        else:
            chosen: dict[str, set[str] | None] = {}
            unmatched = []
            for key in targets:
                if key in ATTENTION_ROLES:
                    hits = [e for e in attention if e[2] is not None and key in e[2]]
                    for path, _, _ in hits:
                        prev = chosen.get(path, set())
                        if prev is not None:
                            prev.add(key)
                            chosen[path] = prev
                else:
                    hits = [e for e in entries if suffix_match(e[0], key)]
                    for path, _, rs in hits:
                        chosen[path] = set(rs) if rs is not None else None
                if not hits:
                    unmatched.append(key)
            if unmatched:
                raise CPTensorError(
                    f"targets: {unmatched!r} match no module (names match a module path exactly "
                    f"or as a dotted suffix; 'q','k','v','o' need a known attention layout or "
                    f"roles=). Candidates: {_preview(_suffixes([p for p, _, _ in entries]), 12)}"
                )
            selected = [
                (p, m, None if chosen[p] is None else tuple(r for r in rs or () if r in chosen[p]))
                for p, m, rs in entries
                if p in chosen
            ]

        # 3. geometry (head size from a Q or O weight when no config gives it)
        if d_h is None and H:
            for _, mod, rs in attention:
                out_f, in_f = mod.out_features, mod.in_features
                assert rs is not None
                if rs == ("q",) and out_f % H == 0:
                    d_h = out_f // H
                elif rs == ("o",) and in_f % H == 0:
                    d_h = in_f // H
                if d_h is not None:
                    d = d or (in_f if rs == ("q",) else out_f)
                    break
        found: list[Target] = []
        for path, mod, rs in selected:
            out_f, in_f, storage = mod.out_features, mod.in_features, mod.storage
            layer = _first_int(path)
            layer = 0 if layer is None else layer
            if rs is None:
                found.append(
                    Target(
                        path, path, layer, _relative_to_layer(path), in_f, out_f, storage=storage
                    )
                )
                continue
            if H is None or d_h is None:
                raise CPTensorError(
                    f"target {path!r} is an attention projection but the head geometry is "
                    "unknown: pass num_heads= (and num_kv_heads=, head_dim= if they differ)"
                )
            fused = len(_fused_roles(mod)) > 1
            offset = 0
            for role in _fused_roles(mod) if fused else rs:
                heads = H_kv if role in ("k", "v") else H
                size = heads * d_h
                if role == "o":
                    if in_f != H * d_h:
                        raise CPTensorError(
                            f"target {path!r} (o): in_features={in_f}, expected num_heads*head_dim"
                            f" = {H}*{d_h} = {H * d_h}; pass num_heads=/head_dim= explicitly"
                        )
                    found.append(
                        Target(
                            path,
                            path,
                            layer,
                            "o",
                            in_f,
                            out_f,
                            heads=H,
                            head_dim=d_h,
                            head_side="in",
                            storage=storage,
                        )
                    )
                    continue
                if not fused and out_f != size:
                    raise CPTensorError(
                        f"target {path!r} ({role}): out_features={out_f}, expected "
                        f"{'num_kv_heads' if role in 'kv' else 'num_heads'}*head_dim = "
                        f"{heads}*{d_h} = {size}; pass num_heads=/num_kv_heads=/head_dim= "
                        "explicitly"
                    )
                if role in rs:
                    name = f"{path}:{role}" if fused else path
                    found.append(
                        Target(
                            name,
                            path,
                            layer,
                            role,
                            in_f,
                            size,
                            heads=heads,
                            head_dim=d_h,
                            head_side="out",
                            storage=storage,
                            out_offset=offset,
                        )
                    )
                offset += size
            if fused and offset != out_f:
                raise CPTensorError(
                    f"target {path!r}: fused output has {out_f} features, expected "
                    f"{offset} (q, k, v of {H}, {H_kv}, {H_kv} heads of {d_h})"
                )
        seen: dict[tuple[int, str], str] = {}
        for t in found:
            key = (t.layer, t.matrix)
            if key in seen:
                raise CPTensorError(
                    f"targets {seen[key]!r} and {t.name!r} both map to layer {t.layer}, matrix "
                    f"{t.matrix!r}; name targets so that each (layer, matrix) is one weight"
                )
            seen[key] = t.name
        found.sort(key=lambda t: (t.layer, *_matrix_order(t.matrix)))
        has_heads = any(t.heads for t in found)
        return cls(
            architecture=arch if has_heads else "custom",
            targets=tuple(found),
            hidden_size=d,
            num_heads=H if has_heads else None,
            num_kv_heads=H_kv if has_heads else None,
            head_dim=d_h if has_heads else None,
        )


# What WeightGrid.differences compares: of the two grids, and of each target both have.
_GRID_FIELDS = (
    "architecture",
    "hidden_size",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "num_layers",
)
_TARGET_FIELDS = (
    "layer",
    "matrix",
    "in_features",
    "out_features",
    "heads",
    "head_dim",
    "storage",
    "out_offset",
)


def _changed(a: Any, b: Any, attrs: Sequence[str]) -> list[tuple[str, Any, Any]]:
    """``(attribute, value in a, value in b)`` for each of ``attrs`` on which ``a`` and ``b``
    differ, in the order of ``attrs``."""
    values = ((attr, getattr(a, attr), getattr(b, attr)) for attr in attrs)
    return [(attr, va, vb) for attr, va, vb in values if va != vb]


def _fused_roles(w: _Weight) -> tuple[str, ...]:
    for suffix, fused in _FUSED.items():
        if suffix_match(w.path, suffix) and w.storage == "conv1d":
            return fused
    return ()


def _matrix_order(matrix: str) -> tuple[int, str]:
    """Sort key of matrix names: the attention roles q, k, v, o first, then by name."""
    rank = ATTENTION_ROLES.index(matrix) if matrix in ATTENTION_ROLES else len(ATTENTION_ROLES)
    return rank, matrix


def ordered_matrices(names: Iterator[str] | Sequence[str]) -> tuple[str, ...]:
    """Distinct matrix names in grid order: q, k, v, o first, then the others by name."""
    return tuple(sorted(dict.fromkeys(names), key=_matrix_order))


def _suffixes(paths: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(_relative_to_layer(p) for p in paths))


def _preview(items: Sequence[str], n: int = 5) -> str:
    items = list(items)
    more = f" ... (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(repr(i) for i in items[:n]) + more


def module_weight(module: nn.Module) -> torch.Tensor:
    """The weight tensor of a supported module (``Linear`` or ``Conv1D``)."""
    _weight_shape(module)
    return module.weight  # type: ignore[return-value]
