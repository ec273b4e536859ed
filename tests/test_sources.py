"""Tests of rflens.sources: model specs, seeded construction and safe weight loading."""

from __future__ import annotations

import random
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from rflens.errors import ModelSourceError, WeightsError
from rflens.sources import describe, load_model, load_weights, parse_model_args

FACTORY_SOURCE = textwrap.dedent(
    """
    import torch.nn as nn

    NOT_CALLABLE = 3


    def make(width=4, depth=1):
        layers = [nn.Conv2d(3, width, 3), nn.BatchNorm2d(width), nn.ReLU(), nn.Dropout(0.5)]
        for _ in range(depth - 1):
            layers += [nn.Conv2d(width, width, 3), nn.ReLU()]
        return nn.Sequential(*layers)


    def not_a_model():
        return 42


    def broken():
        raise ValueError("boom inside the factory")
    """
)


class Tiny(torch.nn.Module):
    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, width, 3)
        self.bn = torch.nn.BatchNorm2d(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


@pytest.fixture
def factory_file(tmp_path: Path) -> Path:
    path = tmp_path / "net.py"
    path.write_text(FACTORY_SOURCE)
    return path


def params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_params(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# --- parse_model_args ------------------------------------------------------------------------------------


def test_parse_model_args_parses_literals_and_falls_back_to_strings() -> None:
    items = [
        "width=32",
        "ratio=0.5",
        "flag=True",
        "nothing=None",
        "pool=(2, 2)",
        "dims=[1, 2]",
        "name='quoted'",
        "act=relu",
        "expr=a=b",
        " spaced = 3 ",
        "empty=",
    ]
    assert parse_model_args(items) == {
        "width": 32,
        "ratio": 0.5,
        "flag": True,
        "nothing": None,
        "pool": (2, 2),
        "dims": [1, 2],
        "name": "quoted",
        "act": "relu",
        "expr": "a=b",
        "spaced": 3,
        "empty": "",
    }
    assert parse_model_args([]) == {}


@pytest.mark.parametrize("item", ["width", "=3", "  =3"])
def test_parse_model_args_rejects_malformed_items(item: str) -> None:
    with pytest.raises(ModelSourceError, match="malformed") as info:
        parse_model_args(["depth=2", item])
    assert repr(item) in str(info.value)


def test_parse_model_args_rejects_duplicate_keys() -> None:
    with pytest.raises(ModelSourceError, match="width"):
        parse_model_args(["width=2", "width=3"])


# --- spec forms ------------------------------------------------------------------------------------------


def test_torchvision_spec_passes_model_args() -> None:
    model = load_model("torchvision:resnet18", model_args={"num_classes": 10})
    assert type(model).__name__ == "ResNet"
    assert model.fc.out_features == 10
    assert not model.training


@pytest.mark.parametrize("name", ["fcn_resnet50", "fasterrcnn_mobilenet_v3_large_fpn", "lraspp_mobilenet_v3_large"])
def test_torchvision_detection_and_segmentation_build_offline(name, monkeypatch) -> None:
    """Their builders fetch ImageNet backbone weights by default: rflens never downloads (a download fails)."""
    import torch.hub

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    model = load_model(f"torchvision:{name}", device="meta")
    assert isinstance(model, torch.nn.Module)
    with pytest.raises(ModelSourceError, match="without downloading weights.*weights_backbone refused"):
        load_model(f"torchvision:{name}", model_args={"weights_backbone": "DEFAULT"}, device="meta")


def test_timm_spec_passes_model_args() -> None:
    model = load_model("timm:resnet10t", model_args={"num_classes": 7})
    assert model.get_classifier().out_features == 7
    assert not model.training


def test_file_spec_calls_factory_with_model_args(factory_file: Path) -> None:
    model = load_model(f"{factory_file}:make", model_args=parse_model_args(["width=6", "depth=2"]))
    assert isinstance(model, torch.nn.Sequential)
    assert model[0].out_channels == 6
    assert len(model) == 6
    assert not model.training and not model[1].training


def test_file_spec_can_import_neighbours_without_leaking_sys_path(tmp_path: Path) -> None:
    helper = "rflens_test_sources_helper"
    (tmp_path / f"{helper}.py").write_text("WIDTH = 5\n")
    (tmp_path / "net.py").write_text(
        f"import torch.nn as nn\nfrom {helper} import WIDTH\n\n"
        "def make():\n    return nn.Conv2d(1, WIDTH, 1)\n"
    )
    before = list(sys.path)
    try:
        model = load_model(f"{tmp_path / 'net.py'}:make")
    finally:
        sys.modules.pop(helper, None)
    assert model.out_channels == 5
    assert sys.path == before


def test_two_files_with_the_same_name_do_not_shadow_each_other(tmp_path: Path) -> None:
    for width in (2, 3):
        folder = tmp_path / f"w{width}"
        folder.mkdir()
        source = f"import torch.nn as nn\n\ndef make():\n    return nn.Conv2d(1, {width}, 1)\n"
        (folder / "model.py").write_text(source)
    assert load_model(f"{tmp_path / 'w2' / 'model.py'}:make").out_channels == 2
    assert load_model(f"{tmp_path / 'w3' / 'model.py'}:make").out_channels == 3


def test_module_instance_is_returned_as_is_in_eval_mode() -> None:
    model = Tiny().train()
    assert load_model(model) is model
    assert not model.training and not model.bn.training


def test_module_instance_rejects_model_args() -> None:
    with pytest.raises(ModelSourceError, match="width"):
        load_model(Tiny(), model_args={"width": 3})


def test_describe() -> None:
    assert describe("timm:resnet10t") == "timm:resnet10t"
    assert describe("models/net.py:make") == "models/net.py:make"
    assert describe(Tiny()) == "Tiny"


# --- seeded construction ---------------------------------------------------------------------------------


def test_same_seed_same_parameters_different_seed_different(factory_file: Path) -> None:
    spec = f"{factory_file}:make"
    a, b, c = load_model(spec, seed=1), load_model(spec, seed=1), load_model(spec, seed=2)
    assert_same_params(a, b)
    assert not torch.equal(a[0].weight, c[0].weight)


def test_zoo_construction_is_seeded() -> None:
    assert_same_params(load_model("timm:resnet10t", seed=3), load_model("timm:resnet10t", seed=3))


def test_meta_build_has_the_same_architecture_without_storage(factory_file: Path) -> None:
    built = load_model(f"{factory_file}:make", model_args={"depth": 2})
    meta = load_model(f"{factory_file}:make", model_args={"depth": 2}, device="meta")
    assert all(t.is_meta for t in meta.state_dict().values()) and not meta.training
    assert {k: v.shape for k, v in meta.state_dict().items()} == {k: v.shape for k, v in built.state_dict().items()}
    assert not torch.empty(1).is_meta  # the default device is restored
    assert load_model("timm:resnet10t", device="meta").conv1[0].weight.is_meta
    with pytest.raises(WeightsError, match="meta"):
        load_model(f"{factory_file}:make", weights="w.safetensors", device="meta")


def test_global_rng_state_is_untouched(factory_file: Path) -> None:
    torch.manual_seed(1234)
    expected = torch.rand(5)
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    load_model(f"{factory_file}:make", seed=0)
    load_model("torchvision:resnet18")
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(torch.rand(5), expected)


# --- spec errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["keras:resnet50", "resnet18", "models/net:make"])
def test_unknown_spec_form_lists_accepted_forms(spec: str) -> None:
    with pytest.raises(ModelSourceError) as info:
        load_model(spec)
    message = str(info.value)
    assert spec in message
    assert "torchvision:NAME" in message and "timm:NAME" in message and "file.py:factory" in message


def test_python_file_without_factory_name(factory_file: Path) -> None:
    with pytest.raises(ModelSourceError, match="names no factory"):
        load_model(str(factory_file))


def test_spec_of_wrong_type() -> None:
    with pytest.raises(ModelSourceError, match="int"):
        load_model(42)  # type: ignore[arg-type]


@pytest.mark.parametrize("zoo", ["torchvision", "timm"])
def test_unknown_model_name_suggests_close_names(zoo: str) -> None:
    with pytest.raises(ModelSourceError, match=f"unknown {zoo} model 'resnet5'") as info:
        load_model(f"{zoo}:resnet5")
    assert "did you mean" in str(info.value)
    assert "resnet50" in str(info.value)


def test_unknown_model_name_without_close_names() -> None:
    with pytest.raises(ModelSourceError, match="unknown torchvision model") as info:
        load_model("torchvision:qqqqqqqqqqqq")
    assert "did you mean" not in str(info.value)


@pytest.mark.parametrize("zoo", ["torchvision", "timm"])
def test_missing_zoo_package_says_how_to_install(zoo: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == zoo or m.startswith(f"{zoo}.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, zoo, None)
    with pytest.raises(ModelSourceError, match=r'pip install "rflens\[zoo\]"'):
        load_model(f"{zoo}:resnet18")


def test_bad_zoo_model_args_are_named() -> None:
    with pytest.raises(ModelSourceError, match="bogus_arg") as info:
        load_model("torchvision:resnet18", model_args={"bogus_arg": 1})
    assert isinstance(info.value.__cause__, TypeError)


def test_bad_factory_model_args_are_named(factory_file: Path) -> None:
    with pytest.raises(ModelSourceError, match="'make'.*rejected model args.*nope") as info:
        load_model(f"{factory_file}:make", model_args={"nope": 1})
    assert isinstance(info.value.__cause__, TypeError)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match="not found") as info:
        load_model(f"{tmp_path / 'absent.py'}:make")
    assert "absent.py" in str(info.value)


@pytest.mark.parametrize("factory", ["missing", "NOT_CALLABLE", ""])
def test_missing_or_non_callable_factory(factory_file: Path, factory: str) -> None:
    with pytest.raises(ModelSourceError) as info:
        load_model(f"{factory_file}:{factory}")
    message = str(info.value)
    assert repr(factory) in message and "net.py" in message
    assert "make" in message  # lists what the file does offer


def test_factory_returning_non_module(factory_file: Path) -> None:
    with pytest.raises(ModelSourceError, match="'not_a_model'.*returned int, not a torch.nn.Module"):
        load_model(f"{factory_file}:not_a_model")


def test_factory_raising_is_chained_and_named(factory_file: Path) -> None:
    with pytest.raises(ModelSourceError, match="'broken'.*ValueError.*boom") as info:
        load_model(f"{factory_file}:broken")
    assert isinstance(info.value.__cause__, ValueError)


def test_file_that_fails_to_import(tmp_path: Path) -> None:
    path = tmp_path / "bad.py"
    path.write_text("def make(:\n")
    with pytest.raises(ModelSourceError, match="importing .*bad.py failed") as info:
        load_model(f"{path}:make")
    assert isinstance(info.value.__cause__, SyntaxError)


@pytest.mark.parametrize("spec", ["model.onnx", "path/to/Model.ONNX"])
def test_missing_onnx_file(spec: str) -> None:
    pytest.importorskip("onnx")
    with pytest.raises(ModelSourceError, match="ONNX file not found"):
        load_model(spec)


# --- weights ---------------------------------------------------------------------------------------------


def saved_tiny(tmp_path: Path, seed: int = 7) -> tuple[dict[str, torch.Tensor], Path]:
    torch.manual_seed(seed)
    state = params(Tiny())
    path = tmp_path / "tiny.pt"
    torch.save(state, path)
    return state, path


def assert_loaded(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    loaded = model.state_dict()
    assert loaded.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(loaded[k], v), k


def test_safetensors_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(7)
    state = params(Tiny())
    path = tmp_path / "tiny.safetensors"
    save_file(state, str(path))
    model = Tiny()
    load_weights(model, path)
    assert_loaded(model, state)


def test_torch_save_round_trip(tmp_path: Path) -> None:
    state, path = saved_tiny(tmp_path)
    model = Tiny()
    load_weights(model, str(path))
    assert_loaded(model, state)


def test_load_model_loads_weights_after_seeded_init(tmp_path: Path, factory_file: Path) -> None:
    source = load_model(f"{factory_file}:make", seed=5)
    path = tmp_path / "net.pt"
    torch.save(source.state_dict(), path)
    model = load_model(f"{factory_file}:make", seed=6, weights=path)
    assert_same_params(model, source)
    assert not model.training


def test_load_model_loads_weights_into_instance(tmp_path: Path) -> None:
    state, path = saved_tiny(tmp_path)
    model = load_model(Tiny(), weights=path)
    assert_loaded(model, state)


def test_dataparallel_prefix_is_stripped(tmp_path: Path) -> None:
    state, _ = saved_tiny(tmp_path)
    path = tmp_path / "dp.pt"
    torch.save({f"module.{k}": v for k, v in state.items()}, path)
    model = Tiny()
    load_weights(model, path)
    assert_loaded(model, state)


@pytest.mark.parametrize("key", ["state_dict", "model", "model_state_dict"])
def test_wrapped_state_dict(tmp_path: Path, key: str) -> None:
    state, _ = saved_tiny(tmp_path)
    path = tmp_path / "wrapped.pt"
    torch.save({key: state, "epoch": 3, "optimizer": {"lr": torch.tensor(0.1)}}, path)
    model = Tiny()
    load_weights(model, path)
    assert_loaded(model, state)


def test_missing_weights_file(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="not found"):
        load_weights(Tiny(), tmp_path / "absent.pt")


# An untrusted pickle: loading it the unsafe way calls _trip, which records the call and writes a file.
TRIPPED: list[str] = []


def _trip(marker: str) -> dict:
    TRIPPED.append(marker)
    Path(marker).write_text("arbitrary code ran")
    return {}


class ReduceTrap:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (_trip, (self.marker,))


class SetstateTrap:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __setstate__(self, state: dict) -> None:
        _trip(state["marker"])


@pytest.mark.parametrize("trap", [ReduceTrap, SetstateTrap])
def test_untrusted_pickle_is_refused_without_running_code(tmp_path: Path, trap: type) -> None:
    state, _ = saved_tiny(tmp_path)
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": state, "extra": trap(str(marker))}, path)
    TRIPPED.clear()

    with pytest.raises(WeightsError) as info:
        load_weights(Tiny(), path)
    message = str(info.value)
    assert "untrusted" in message and "arbitrary Python objects" in message
    assert "state_dict" in message  # suggests re-saving a plain state dict
    assert TRIPPED == [] and not marker.exists()

    # The trap is live: loading the same file the unsafe way does run the code.
    torch.load(path, weights_only=False)
    assert TRIPPED == [str(marker)] and marker.exists()
    TRIPPED.clear()


def test_pickled_whole_module_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "whole.pt"
    torch.save(Tiny(), path)
    with pytest.raises(WeightsError, match="untrusted.*pickles") as info:
        load_weights(Tiny(), path)
    assert "Tiny" in str(info.value)


def test_random_bytes_are_reported_as_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "noise.pt"
    path.write_bytes(random.Random(0).randbytes(4096))
    with pytest.raises(WeightsError, match="corrupt") as info:
        load_weights(Tiny(), path)
    assert "untrusted" not in str(info.value)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_truncated_checkpoint_is_reported_as_corrupt(tmp_path: Path, suffix: str) -> None:
    torch.manual_seed(0)
    state = params(Tiny(width=64))
    path = tmp_path / f"whole{suffix}"
    if suffix == ".pt":
        torch.save(state, path)
    else:
        save_file(state, str(path))
    data = path.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="corrupt, truncated"):
        load_weights(Tiny(width=64), cut)


def test_empty_file_is_reported_as_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    with pytest.raises(WeightsError, match="corrupt"):
        load_weights(Tiny(), path)


@pytest.mark.parametrize("payload", [[torch.zeros(1)], {"weight": 3}, torch.zeros(2)])
def test_file_that_is_not_a_state_dict(tmp_path: Path, payload: object) -> None:
    path = tmp_path / "odd.pt"
    torch.save(payload, path)
    with pytest.raises(WeightsError, match="does not hold a state dict"):
        load_weights(Tiny(), path)


def test_missing_and_unexpected_keys_are_named(tmp_path: Path) -> None:
    state, _ = saved_tiny(tmp_path)
    del state["bn.running_var"]
    state["head.weight"] = torch.zeros(2)
    path = tmp_path / "keys.pt"
    torch.save(state, path)
    with pytest.raises(WeightsError) as info:
        load_weights(Tiny(), path)
    message = str(info.value)
    assert "missing keys (1): bn.running_var" in message
    assert "unexpected keys (1): head.weight" in message


def test_shape_mismatch_is_named(tmp_path: Path) -> None:
    _, path = saved_tiny(tmp_path)
    with pytest.raises(WeightsError, match=r"conv.weight: file \(4, 3, 3, 3\) vs model \(5, 3, 3, 3\)"):
        load_weights(Tiny(width=5), path)


def test_long_key_lists_are_capped(tmp_path: Path) -> None:
    path = tmp_path / "many.pt"
    torch.save({f"extra{i}": torch.zeros(1) for i in range(9)} | params(Tiny()), path)
    listed = r"unexpected keys \(9\): extra0, extra1, extra2, extra3, extra4, \.\.\."
    with pytest.raises(WeightsError, match=listed):
        load_weights(Tiny(), path)
