"""retia.nn.hub: each known space, scaled down to the 8x8 digits, searched, frozen, trained, and its
supernet with one path active equal to the frozen model through original_state_dict_hooks."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest
import torch
from torch import nn

import retia
import retia.lightning as pl
from retia.arch import FrozenModel
from retia.datasets import DigitsDataset
from retia.nn import LayerChoice, ModelSpace, Repeat, original_state_dict_hooks
from retia.nn.hub import DARTS, MobileNetV3Space, NasBench201, ProxylessNAS

pytestmark = pytest.mark.timeout(120)

PROXYLESS: dict[str, Any] = dict(
    num_labels=10,
    base_widths=(8, 8, 16, 16, 24, 24, 32, 32, 64),
    in_channels=1,
    downsamples=(False, False, True, False, True, False, False, False),
    kernel_sizes=(3, 5),
    depth_range=(1, 2),
    zero_op=True,
)
MOBILENET: dict[str, Any] = dict(
    num_labels=10,
    base_widths=(8, 8, 8, 16, 16, 24, 24, 32, 64),
    width_multipliers=(0.5, 1.0),
    expand_ratios=(2.0, 4.0),
    kernel_sizes=(3, 5),
    stem_kernel_sizes=(3, 5),
    depth_range=(1, 2),
    stride=(1, 1, 2, 1, 2, 1, 1, 1, 1),
    dropout_rate=0.0,
    in_channels=1,
)
DARTS_DIGITS: dict[str, Any] = dict(width=8, num_cells=3, num_labels=10, in_channels=1, zero_op=True)
NASBENCH201: dict[str, Any] = dict(stem_out_channels=8, num_modules_per_stack=1, num_labels=10, in_channels=1)
SPACES = [
    pytest.param(ProxylessNAS, PROXYLESS, id="proxylessnas"),
    pytest.param(MobileNetV3Space, MOBILENET, id="mobilenetv3"),
    pytest.param(DARTS, DARTS_DIGITS, id="darts"),
    pytest.param(NasBench201, NASBENCH201, id="nasbench201"),
]


def _largest(space: ModelSpace, arch: dict[str, Any]) -> dict[str, Any]:
    """``arch`` with every ValueChoice (widths, ratios, kernels) at its largest option, the
    LayerChoices and depths as drawn: the paths the supernet runs today without mixed operations."""
    out = dict(arch)
    for label, options in space.search_space().items():
        if label.endswith(("_width_mult", "_exp", "_ks")):
            out[label] = max(options)
    return out


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_the_spaces_list_their_decisions_under_nnis_labels() -> None:
    proxyless = ProxylessNAS(**PROXYLESS).search_space()
    assert proxyless["s2_depth"] == [1, 2] and "s7_depth" not in proxyless  # the last stage: one block
    assert proxyless["s2_i0"] == ["k3e3", "k5e3", "k3e6", "k5e6"]  # a stage's first block: no zero op
    assert proxyless["s2_i1"] == ["k3e3", "k5e3", "k3e6", "k5e6", "zero"]
    assert len(proxyless) == 5 * 3 + 1 and ProxylessNAS(**PROXYLESS).size() == (2 * 4 * 5) ** 5 * 4

    mobilenet = MobileNetV3Space(**MOBILENET)
    space = mobilenet.search_space()
    assert space["stem_ks"] == [3, 5] and space["s0_i0_ks"] == [3, 5]
    assert [space[f"s{i}_width_mult"] for i in range(8)] == [[0.5, 1.0]] * 8  # one per stage
    assert space["s1_i1_exp"] == [2.0, 4.0] and space["s3_depth"] == [1, 2]
    assert space["s2_i0_se"] == ["identity", "se"] and "s1_i0_se" not in space  # per squeeze_excite
    # a stage's width is one decision: every layer of stage 2 has the width s2's multiplier gives it
    frozen = mobilenet.freeze({**mobilenet.random_sample(0), "s2_width_mult": 0.5, "s2_depth": 2})
    stage2 = cast(Any, frozen).blocks[2]
    assert [block[-1][0].out_channels for block in stage2] == [8, 8]  # 16 * 0.5
    assert stage2[1][0][0].in_channels == 8


@pytest.mark.parametrize(("space_cls", "kwargs"), SPACES)
def test_random_architectures_freeze_into_exactly_the_chosen_model(
    space_cls: type[ModelSpace], kwargs: dict[str, Any]
) -> None:
    """Three samples: the frozen model runs the digits' shape, has no choice modules left, and none of the
    supernet's parameters of an unchosen candidate or of a block beyond a chosen depth."""
    supernet = space_cls(**kwargs)
    supernet_keys = set(supernet.state_dict())
    choices = {name: m for name, m in supernet.named_modules() if isinstance(m, (LayerChoice, Repeat))}
    for seed in range(3):
        arch = supernet.random_sample(seed)
        model = supernet.freeze(arch)
        assert cast(ModelSpace, model).frozen_arch == supernet.validate(arch)
        assert model(_images(5)).shape == (5, 10)
        assert not [m for m in model.modules() if isinstance(m, LayerChoice)]
        assert all(m.spec is None for m in model.modules() if isinstance(m, Repeat))
        with original_state_dict_hooks(model):
            keys = set(model.state_dict())
        assert keys < supernet_keys
        for path, module in choices.items():
            if isinstance(module, LayerChoice):
                unchosen = [str(n) for n in module.names if n != arch[module.label]]
                assert not [k for k in keys if k.startswith(tuple(f"{path}.{n}." for n in unchosen))]
            elif module.label in arch:
                beyond = tuple(f"{path}.blocks.{i}." for i in range(arch[module.label], module.max_depth))
                assert not [k for k in keys if k.startswith(beyond)]
        own = sum(p.numel() for p in model.parameters())
        assert 0 < own < sum(p.numel() for p in supernet.parameters())


@pytest.mark.parametrize(("space_cls", "kwargs"), SPACES)
def test_a_sampled_architecture_trains_on_digits_above_chance(
    space_cls: type[ModelSpace], kwargs: dict[str, Any], tmp_path: Path
) -> None:
    """random sample -> fixed_arch (inside fit, as a worker builds it) -> 2 epochs of Classification:
    10 classes, chance is 0.1; these reach 0.72 to 0.88 (seeds 0 to 2), so 0.5 leaves a margin."""
    arch = space_cls(**kwargs).random_sample(0)
    evaluator = pl.Classification(
        learning_rate=1e-2,
        train_dataloaders=pl.DataLoader(
            retia.trace(DigitsDataset)("train", flatten=False), batch_size=64, shuffle=True
        ),
        val_dataloaders=pl.DataLoader(retia.trace(DigitsDataset)("val", flatten=False), batch_size=512),
        max_epochs=2,
    )
    torch.manual_seed(0)
    result = evaluator.evaluate(FrozenModel(space_cls, arch, kwargs=kwargs), output_dir=tmp_path / "run")
    final = cast(dict[str, float], result.final)
    assert final["val_acc"] > 0.5, final


def _check_activated_supernet_equals_frozen(
    space_cls: type[ModelSpace], kwargs: dict[str, Any], arch: dict[str, Any]
) -> None:
    """supernet.activate(arch) and space.freeze(arch) loaded from it through original_state_dict_hooks give
    the same outputs (batch norms' running statistics included), and the frozen weights load back."""
    torch.manual_seed(1)
    supernet = space_cls(**kwargs)
    supernet.activate(arch)
    with torch.no_grad():
        for p in supernet.parameters():  # weights no initialization gives, so a wrong mapping shows
            p.add_(torch.randn_like(p) * 0.1)
        supernet.train()
        supernet(_images(32, seed=2))  # running statistics of this path
    supernet.eval()
    x = _images(6)
    expected = supernet(x)

    model = supernet.freeze(arch).eval()
    with original_state_dict_hooks(model):
        model.load_state_dict(supernet.state_dict())
    torch.testing.assert_close(model(x), expected)

    fresh = space_cls(**kwargs).eval()
    fresh.activate(arch)
    with original_state_dict_hooks(model):
        missing, unexpected = fresh.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and missing  # the unchosen candidates are the missing ones
    torch.testing.assert_close(fresh(x), expected)


@pytest.mark.parametrize(("space_cls", "kwargs"), SPACES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_supernet_with_one_path_active_equals_the_frozen_model(
    space_cls: type[ModelSpace], kwargs: dict[str, Any], seed: int
) -> None:
    """LayerChoices (kernel x expansion, zero op, squeeze-excite) and depths drawn at random, every
    ValueChoice at its largest option (the layers run unsliced); random values are the next test."""
    space = space_cls(**kwargs)
    arch = _largest(space, space.random_sample(seed))
    _check_activated_supernet_equals_frozen(space_cls, kwargs, arch)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_mobilenetv3_supernet_runs_any_width_kernel_and_ratio_as_the_frozen_model(seed: int) -> None:
    """Random widths, kernels and expansion ratios: the supernet runs each as a slice of its largest."""
    arch = MobileNetV3Space(**MOBILENET).random_sample(seed)
    _check_activated_supernet_equals_frozen(MobileNetV3Space, MOBILENET, arch)


def test_a_frozen_mobilenetv3_uses_the_chosen_kernel_ratio_and_squeeze_excite() -> None:
    space = MobileNetV3Space(**MOBILENET)
    arch = {**space.random_sample(3), "s2_depth": 1, "s2_width_mult": 1.0, "s1_width_mult": 1.0}
    arch.update({"s2_i0_exp": 2.0, "s2_i0_ks": 3, "s2_i0_se": "se", "stem_ks": 5})
    model = cast(Any, space.freeze(arch))
    block = model.blocks[2][0]
    assert block[0][0].out_channels == 16  # make_divisible(8 * 2.0)
    assert block[1][0].kernel_size == (3, 3) and block[1][0].padding == (1, 1)
    assert type(block[2]).__name__ == "SqueezeExcite"
    assert model.stem[0].kernel_size == (5, 5)
    arch["s2_i0_se"] = "identity"
    assert isinstance(cast(Any, space.freeze(arch)).blocks[2][0][2], nn.Identity)


def test_bad_arguments_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="base_widths needs 9 entries"):
        ProxylessNAS(base_widths=(8, 8))
    with pytest.raises(ValueError, match="squeeze_excite needs 6 entries"):
        MobileNetV3Space(squeeze_excite=("none",))
    with pytest.raises(ValueError, match=r"1 <= min <= max"):
        MobileNetV3Space(depth_range=(0, 2))


def test_a_choice_kept_only_inside_an_expression_beyond_a_repeats_depth_may_be_given() -> None:
    """An expansion ratio lives only in ``make_divisible(c * ratio)``, a conv's width; in a block beyond
    the chosen depth its label is no typo (NNI's arch dicts carry it). It was refused as unknown."""
    import retia.nn as rnn

    class Net(ModelSpace):
        def __init__(self) -> None:
            super().__init__()
            self.body = Repeat(
                lambda i: rnn.Linear(4, 4 * rnn.ValueChoice([1, 2], label=f"r{i}") // 2), (1, 2), label="d"
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.body(x)
            return out

    model = Net().freeze({"d": 1, "r0": 2, "r1": 1})
    assert model(torch.zeros(1, 4)).shape == (1, 4)
    with pytest.raises(retia.errors.InvalidArchitectureError, match="unknown label"):
        Net().freeze({"d": 1, "r0": 2, "rx": 1})


def _every_parameter_gets_a_gradient(model: nn.Module) -> None:
    model.train()
    model(_images(4)).sum().backward()
    assert [name for name, p in model.named_parameters() if p.grad is None] == []


@pytest.mark.parametrize(("space_cls", "kwargs"), SPACES)
def test_a_frozen_model_has_no_parameter_its_architecture_does_not_use(
    space_cls: type[ModelSpace], kwargs: dict[str, Any]
) -> None:
    for seed in range(3):
        _every_parameter_gets_a_gradient(space_cls(**kwargs).freeze(space_cls(**kwargs).random_sample(seed)))


def _darts_arch(normal: list[tuple[str, int]], reduce: list[tuple[str, int]]) -> dict[str, Any]:
    """A DARTS genotype (per cell kind, (op, input) for ops 0 and 1 of nodes 2..5) as NNI's hub's
    arch dict: ``normal/op_2_0``, ``normal/input_2_0`` (inputs as one-element lists, as NNI exports)."""
    arch: dict[str, Any] = {}
    for kind, genotype in (("normal", normal), ("reduce", reduce)):
        for i, (op, inp) in enumerate(genotype):
            arch[f"{kind}/op_{i // 2 + 2}_{i % 2}"] = op
            arch[f"{kind}/input_{i // 2 + 2}_{i % 2}"] = [inp]
    return arch


# DARTS-V2, the paper's searched cells (NNI's hub loads it as 'darts-v2')
DARTS_V2 = _darts_arch(
    [("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1)]
    + [("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
    [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1)]
    + [("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)],
)


def test_darts_lists_nnis_labels_and_loads_an_nni_arch_dict_in_every_cell() -> None:
    space = DARTS(**DARTS_DIGITS)
    search = space.search_space()
    assert len(search) == 2 * 4 * 2 * 2  # normal and reduce, 4 nodes, 2 ops, an op and an input each
    assert search["normal/op_2_0"][0] == "none" and len(search["reduce/op_5_1"]) == 8
    assert search["reduce/input_5_1"] == [0, 1, 2, 3, 4]
    assert "none" not in DARTS(width=8, num_cells=3).search_space()["normal/op_2_0"]  # NNI's DARTS_OPS
    model = cast(Any, space.freeze(DARTS_V2))
    cells = [cell for stage in model.stages for cell in stage]
    assert [cell.label for cell in cells] == ["normal", "reduce", "reduce"]
    for cell in cells:  # every cell of a kind runs that kind's choice, NNI's shared labels
        assert type(cell.ops[2][0]).__name__ == ("SepConv" if cell.label == "normal" else "MaxPool2d")
    reduce_op = cells[1].ops[0][0]  # max_pool_3x3 on predecessor 0: stride 2 in a reduction cell
    assert isinstance(reduce_op, nn.MaxPool2d) and reduce_op.stride == 2
    assert model(_images(3)).shape == (3, 10)
    _check_activated_supernet_equals_frozen(DARTS, DARTS_DIGITS, DARTS_V2)


def test_a_frozen_darts_leaves_out_what_no_chosen_op_reads() -> None:
    """Every op on predecessor 0 (the cell before last): the middle cell's output is read by no
    cell, so it is not built, nor any cell's conversion of its last predecessor; the supernet,
    which runs them, still gives the frozen model's output, and the weights map both ways."""
    only_first = [("sep_conv_3x3", 0)] * 8
    arch = _darts_arch(only_first, only_first)
    model = cast(Any, DARTS(**DARTS_DIGITS).freeze(arch))
    assert type(model.stages[1][0]).__name__ == "_Unused" and not list(model.stages[1].parameters())
    assert all(cell.preprocessor.pre1 is None for cell in (model.stages[0][0], model.stages[2][0]))
    _every_parameter_gets_a_gradient(model)
    _check_activated_supernet_equals_frozen(DARTS, DARTS_DIGITS, arch)


def test_nasbench201_shares_one_decision_per_edge_across_every_cell() -> None:
    kwargs = {**NASBENCH201, "num_modules_per_stack": 2}
    space = NasBench201(**kwargs)
    assert space.search_space() == {
        f"cell/{j}_{t}": ["none", "skip_connect", "conv_1x1", "conv_3x3", "avg_pool_3x3"]
        for t in range(1, 4)
        for j in range(t)
    }
    arch = {"cell/0_1": "conv_3x3", "cell/0_2": "none", "cell/1_2": "avg_pool_3x3"}
    arch.update({"cell/0_3": "skip_connect", "cell/1_3": "conv_1x1", "cell/2_3": "conv_3x3"})  # NNI's form
    model = cast(Any, space.freeze(arch))
    cells = [m for m in model.cells if type(m).__name__ == "NasBench201Cell"]
    assert len(cells) == 6 and len(model.cells) == 8  # two residual reduction blocks between stacks
    assert [cell.layers[0][0][1].kernel_size for cell in cells] == [(3, 3)] * 6
    assert model(_images(3)).shape == (3, 10)
    _check_activated_supernet_equals_frozen(NasBench201, kwargs, arch)


def test_the_cell_spaces_refuse_bad_arguments_saying_why() -> None:
    with pytest.raises(ValueError, match="searched width or depth"):
        DARTS(width=cast(Any, (16, 24)))
    with pytest.raises(ValueError, match="width must be even"):
        DARTS(width=7)
    with pytest.raises(ValueError, match="num_modules_per_stack must be an int >= 1"):
        NasBench201(num_modules_per_stack=0)
