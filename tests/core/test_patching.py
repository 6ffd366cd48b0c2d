"""The patch table's one mechanism on classes of its own: wrap, call through, unwrap exactly."""

from __future__ import annotations

import inspect

import pytest
import torch

from corevital_otel import patching
from tests.support.tiny_models import build_model, prompt_batch


class Base:
    def greet(self, name: str) -> str:
        return f"hello {name}"

    @classmethod
    def build(cls) -> str:
        return cls.__name__


class Child(Base):
    def own(self) -> int:
        return 1


INHERITED = patching.PatchTarget(__name__, "Child", "greet", "test: an inherited method")
OWN = patching.PatchTarget(__name__, "Child", "own", "test: a method of the class itself")
CLASSMETHOD = patching.PatchTarget(__name__, "Base", "build", "test: a classmethod (refused)")
MISSING = patching.PatchTarget(__name__, "Child", "absent", "test: an attribute that does not exist")


def _shout(wrapped, instance, args, kwargs):
    return str(wrapped(*args, **kwargs)).upper()


@pytest.fixture(autouse=True)
def _unwrapped():
    yield
    for target in (INHERITED, OWN):
        patching.unwrap(target)


def test_wrapped_calls_go_through_the_wrapper_with_the_instance_bound():
    assert patching.wrap(INHERITED, _shout) and patching.wrap(OWN, _shout)
    assert Child().greet("ada") == "HELLO ADA"
    assert Child.greet(Child(), "bob") == "HELLO BOB"  # called through the class: still bound
    assert Child().own() == "1"
    assert vars(Child)["greet"].__wrapped__ is Base.greet
    assert inspect.signature(Child.greet) == inspect.signature(Base.greet)
    assert set(patching.installed()) == {INHERITED, OWN}


def test_unwrap_restores_exactly_what_the_class_held():
    own = vars(Child)["own"]
    patching.wrap(INHERITED, _shout)
    patching.wrap(OWN, _shout)
    for target in (INHERITED, OWN):
        patching.unwrap(target)
    assert "greet" not in vars(Child)  # it was inherited: nothing is left behind
    assert vars(Child)["own"] is own
    assert Child().greet("ada") == "hello ada" and patching.installed() == ()


def test_wrapping_again_replaces_the_wrapper_and_keeps_the_original():
    own = vars(Child)["own"]
    patching.wrap(OWN, _shout)
    patching.wrap(OWN, lambda wrapped, instance, args, kwargs: wrapped(*args, **kwargs) + 1)
    assert Child().own() == 2  # one wrapper, not two stacked
    assert patching.original(OWN) is own
    patching.unwrap(OWN)
    assert vars(Child)["own"] is own


def test_a_direct_proxy_is_installed_as_made_and_unwrapped_exactly():
    """``Direct``: the proxy its maker returns is the class attribute itself, no wrapper frame around it."""
    originals = []

    def make_proxy(original):
        originals.append(original)

        def proxy(self, name):
            return original(self, name) + "!"

        return proxy

    patching.wrap(INHERITED, patching.Direct(make_proxy))
    assert originals == [Base.greet]
    assert Child().greet("ada") == "hello ada!"
    assert vars(Child)["greet"].__name__ == "proxy" and patching.installed() == (INHERITED,)
    patching.unwrap(INHERITED)
    assert "greet" not in vars(Child) and Child().greet("ada") == "hello ada"


def test_a_target_this_library_lacks_is_skipped():
    assert patching.wrap(MISSING, _shout) is False
    assert patching.installed() == ()


def test_a_target_that_is_no_plain_method_is_refused():
    build = vars(Base)["build"]
    with pytest.raises(TypeError, match="not a plain method"):
        patching.wrap(CLASSMETHOD, _shout)
    assert vars(Base)["build"] is build and patching.installed() == ()


def test_another_wrapper_installed_over_ours_is_left_in_place():
    patching.wrap(OWN, _shout)
    theirs = vars(Child)["own"]

    def foreign(self):
        return theirs(self)

    Child.own = foreign
    assert patching.installed() == ()  # the table sees that its wrapper is no longer the attribute
    patching.unwrap(OWN)
    assert vars(Child)["own"] is foreign
    del Child.own
    Child.own = theirs.__wrapped__


def test_a_forward_compiled_while_instrumented_runs_its_own_graph(instrumented, caplog):
    """torch.compile traces into the attention wrapper (a plain function, not a proxy it would look through)
    and finds the model's own function there: no graph break, no guard on the capture's state (tracing
    into the session made dynamo recompile at every step until it gave up), the same tokens; the span says
    the attention rows were not seen."""
    ids, mask = prompt_batch(batch=2, length=6, pad_first=2)
    settings = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, cache_implementation="static")
    expected = build_model("llama").generate(input_ids=ids, attention_mask=mask, **settings)
    telemetry = instrumented(capture_mode="full")
    model = build_model("llama")
    model.forward = torch.compile(model.forward, backend="eager")
    try:
        for _ in range(2):
            assert torch.equal(model.generate(input_ids=ids, attention_mask=mask, **settings), expected)
    finally:
        torch._dynamo.reset()
    assert not [record.message for record in caplog.records if "recompile" in record.getMessage()]
    for span in telemetry.generation_spans():
        lost = span.attributes.get("corevital.capture.lost", ())
        assert any(reason.startswith("attention: ") for reason in lost), lost
        assert span.attributes["corevital.steps.count"] == 6


def test_wrap_all_covers_exactly_the_table():
    with pytest.raises(ValueError, match="exactly the table"):
        patching.wrap_all({patching.GENERATE: _shout})
