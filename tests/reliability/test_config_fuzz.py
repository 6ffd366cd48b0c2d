"""Fuzzed configuration: any value of any COREVITAL_* variable or instrument() keyword either configures a
valid option or raises ConfigError naming the variable/keyword, at instrument() time, and nothing else."""

from __future__ import annotations

import math
import string
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers.generation.utils import GenerationMixin

import corevital_otel
from corevital_otel import ConfigError, Options
from corevital_otel.config import (
    CAPTURE_MODES,
    CONTENT_MODES,
    ENVIRONMENT_VARIABLES,
    MAX_BLOCK_STEPS,
    resolve_options,
)

FUZZ = settings(max_examples=150, deadline=None, database=None)

# Words a valid value is made of, per option: fuzzing around them reaches the accepting paths too.
_WORDS = {
    "capture_mode": CAPTURE_MODES,
    "capture_content": (*CONTENT_MODES, "true", "false"),
    "intervene": ("nan", "repetition", "risk"),  # offered by the built-in plugins
    "disabled_plugins": ("logits", "health", "risk"),
}
_BOOLEAN_WORDS = ("true", "false", "1", "0", "yes", "no", "on", "off")


def _words(option: str) -> tuple[str, ...]:
    if Options.model_fields[option].annotation is bool:
        return _BOOLEAN_WORDS
    return _WORDS.get(option, ("0", "1", "0.5", "32", "-1", "1e3"))


def _near_valid(option: str) -> st.SearchStrategy[str]:
    """Valid words, mangled: case, surrounding whitespace, separators, a stray character."""
    word = st.sampled_from(_words(option))
    cased = st.tuples(word, st.sampled_from([str.lower, str.upper, str.title])).map(lambda wf: wf[1](wf[0]))
    joined = st.lists(cased, min_size=1, max_size=3).map(",".join)
    padded = st.tuples(
        st.sampled_from(["", " ", "\t", ",", "_"]), joined, st.sampled_from(["", " ", ",", "x"])
    )
    return padded.map("".join)


_ANY_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
_ASCII = st.text(alphabet=string.printable, max_size=20)


def _assert_valid(option: str, value: Any) -> None:
    """The resolved value of ``option`` is one the rest of the product can rely on."""
    if option == "capture_mode":
        assert value in CAPTURE_MODES
    elif option == "capture_content":
        assert value in CONTENT_MODES
    elif option == "intervene":
        # which policies exist is checked by instrument() against what the loaded plugins offer
        assert isinstance(value, frozenset) and all(isinstance(name, str) and name for name in value)
    elif option == "disabled_plugins":  # names are checked against the installed plugins by instrument()
        assert isinstance(value, frozenset) and all(isinstance(name, str) for name in value)
    elif option == "intervention_risk_threshold":
        assert isinstance(value, float) and math.isfinite(value) and 0.0 < value <= 1.0
    elif option in ("prompt_max_tokens", "max_step_events", "max_span_kib"):
        assert type(value) is int and value >= 0
    elif option == "block_steps":
        assert type(value) is int and 1 <= value <= MAX_BLOCK_STEPS
    elif option == "model_name":  # None: derived from the model; else a name or a function of the model
        assert value is None or callable(value) or (isinstance(value, str) and value == value.strip() != "")
    else:
        assert type(value) is bool, option


@pytest.mark.parametrize("option", sorted(ENVIRONMENT_VARIABLES))
@FUZZ
@given(data=st.data())
def test_any_environment_value_is_valid_or_a_config_error_naming_the_variable(option, data):
    variable = ENVIRONMENT_VARIABLES[option]
    raw = data.draw(st.one_of(_near_valid(option), _ANY_TEXT, _ASCII), label=variable)
    try:
        resolved = resolve_options({}, {variable: raw})
    except ConfigError as error:
        assert variable in str(error) and repr(raw) in str(error)
        return
    value = getattr(resolved, option)
    _assert_valid(option, value)
    if not raw.strip():
        assert value == getattr(Options(), option)  # an empty variable means "not set"


_KEYWORDS = sorted(Options.model_fields)
_ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**6), max_value=10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    _ANY_TEXT,
    st.lists(st.one_of(_ASCII, st.integers(), st.none()), max_size=3),
    st.frozensets(_ASCII, max_size=3),
    st.dictionaries(_ASCII, st.integers(), max_size=2),
    st.builds(object),
)


@pytest.mark.parametrize("keyword", _KEYWORDS)
@FUZZ
@given(value=_ANY_VALUE)
def test_any_keyword_value_is_accepted_or_a_config_error_naming_the_keyword(keyword, value):
    try:
        resolved = resolve_options({keyword: value}, {})
    except ConfigError as error:
        assert str(error).startswith(f"{keyword}=")
        return
    if keyword in ENVIRONMENT_VARIABLES:
        _assert_valid(keyword, getattr(resolved, keyword))


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    option=st.sampled_from(sorted(ENVIRONMENT_VARIABLES)),
    raw=st.one_of(st.text(alphabet=string.ascii_letters + string.digits + " ,.-", max_size=12), _ASCII),
)
def test_instrument_accepts_or_fails_naming_the_variable_before_patching(option, raw):
    variable = ENVIRONMENT_VARIABLES[option]
    original = GenerationMixin.__dict__["generate"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(variable, raw)
        try:
            corevital_otel.instrument(builtin_plugins=False)
        except ConfigError as error:
            assert variable in str(error)
            assert not corevital_otel.is_instrumented()
            assert GenerationMixin.__dict__["generate"] is original
            return
        assert corevital_otel.is_instrumented()
        corevital_otel.uninstrument()
        assert GenerationMixin.__dict__["generate"] is original


@pytest.mark.parametrize("names", [{"logitz"}, {" logits"}, {""}, {"logits", "no-such-plugin"}], ids=repr)
def test_a_misspelt_plugin_to_disable_is_a_config_error(names, monkeypatch):
    """Disabling a plugin by a name nothing carries would leave the misbehaving plugin running."""
    with pytest.raises(ConfigError, match="COREVITAL_DISABLED_PLUGINS"):
        corevital_otel.instrument(disabled_plugins=names)
    assert not corevital_otel.is_instrumented()
    monkeypatch.setenv("COREVITAL_DISABLED_PLUGINS", "logits,logitz")
    with pytest.raises(ConfigError, match="COREVITAL_DISABLED_PLUGINS.*logitz"):
        corevital_otel.instrument()
    assert not corevital_otel.is_instrumented()


@pytest.mark.parametrize("plugins", [["logits"], [None], [object()], 5, "a-string"], ids=repr)
def test_a_plugin_that_is_no_plugin_is_a_config_error(plugins):
    with pytest.raises(ConfigError, match="^plugins"):
        corevital_otel.instrument(plugins=plugins, builtin_plugins=False)
    assert not corevital_otel.is_instrumented()


def test_plugin_settings_from_the_environment_fail_at_instrument_time(tmp_path, monkeypatch):
    """COREVITAL_BASELINE is read by the baseline plugin; a path that does not exist is as invalid as any
    other value and must fail instrument(), not only be reported on every span afterwards."""
    monkeypatch.setenv("COREVITAL_BASELINE", str(tmp_path / "missing-baseline.json"))
    with pytest.raises(ConfigError, match="COREVITAL_BASELINE"):
        corevital_otel.instrument()
