"""The patch table's one mechanism on classes of its own: wrap, call through, unwrap exactly."""

from __future__ import annotations

import inspect

import pytest
import wrapt
from opentelemetry.instrumentation.utils import unwrap as otel_unwrap

from corevital_otel import patching


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
CLASSMETHOD = patching.PatchTarget(__name__, "Base", "build", "test: a classmethod")
MISSING = patching.PatchTarget(__name__, "Child", "absent", "test: an attribute that does not exist")


def _shout(wrapped, instance, args, kwargs):
    return str(wrapped(*args, **kwargs)).upper()


@pytest.fixture(autouse=True)
def _unwrapped():
    yield
    for target in (INHERITED, OWN, CLASSMETHOD):
        patching.unwrap(target)


def test_wrapped_calls_go_through_the_wrapper_with_the_instance_bound():
    assert patching.wrap(INHERITED, _shout) and patching.wrap(OWN, _shout)
    assert Child().greet("ada") == "HELLO ADA"
    assert Child.greet(Child(), "bob") == "HELLO BOB"  # called through the class: still bound
    assert Child().own() == "1"
    assert isinstance(vars(Child)["greet"], wrapt.FunctionWrapper)
    assert inspect.signature(Child.greet) == inspect.signature(Base.greet)
    assert set(patching.installed()) == {INHERITED, OWN}


def test_unwrap_restores_exactly_what_the_class_held():
    own = vars(Child)["own"]
    build = vars(Base)["build"]
    patching.wrap(INHERITED, _shout)
    patching.wrap(OWN, _shout)
    patching.wrap(CLASSMETHOD, _shout)
    assert Base.build() == "BASE" and Child.build() == "CHILD"
    for target in (INHERITED, OWN, CLASSMETHOD):
        patching.unwrap(target)
    assert "greet" not in vars(Child)  # it was inherited: nothing is left behind
    assert vars(Child)["own"] is own and vars(Base)["build"] is build
    assert Child().greet("ada") == "hello ada" and patching.installed() == ()


def test_wrapping_again_replaces_the_wrapper_and_keeps_the_original():
    own = vars(Child)["own"]
    patching.wrap(OWN, _shout)
    patching.wrap(OWN, lambda wrapped, instance, args, kwargs: wrapped(*args, **kwargs) + 1)
    assert Child().own() == 2  # one wrapper, not two stacked
    assert patching.original(OWN) is own
    patching.unwrap(OWN)
    assert vars(Child)["own"] is own


def test_a_target_this_library_lacks_is_skipped():
    assert patching.wrap(MISSING, _shout) is False
    assert patching.installed() == ()


def test_opentelemetry_unwrap_recognises_the_wrapper():
    own = vars(Child)["own"]
    patching.wrap(OWN, _shout)
    otel_unwrap(Child, "own")
    assert vars(Child)["own"] is own
    assert patching.installed() == ()  # the table sees that its wrapper is gone
    patching.unwrap(OWN)  # and leaves the restored attribute alone
    assert vars(Child)["own"] is own


def test_wrap_all_covers_exactly_the_table():
    with pytest.raises(ValueError, match="exactly the table"):
        patching.wrap_all({patching.GENERATE: _shout})
