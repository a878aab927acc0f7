import logging

import pytest
from otpserve import telemetry


@pytest.fixture(autouse=True)
def _clean_handlers():
    yield
    for handler in telemetry.list_handlers():
        if handler.id.startswith("test-"):
            telemetry.detach(handler.id)


def test_attached_handler_receives_event_measurements_metadata_and_config():
    seen = []
    telemetry.attach("test-a", ("app", "thing", "done"), lambda *args: seen.append(args), config={"k": 1})
    telemetry.execute(("app", "thing", "done"), {"duration": 0.5}, {"who": "x"})
    telemetry.execute(("app", "other"), {"duration": 1.0}, {})
    assert seen == [(("app", "thing", "done"), {"duration": 0.5}, {"who": "x"}, {"k": 1})]


def test_attach_many_and_detach():
    seen = []
    telemetry.attach_many("test-many", [("a", "1"), ("a", "2")], lambda e, m, md, c: seen.append(e))
    telemetry.execute(("a", "1"), {}, {})
    telemetry.execute(("a", "2"), {}, {})
    assert telemetry.detach("test-many") is True
    telemetry.execute(("a", "1"), {}, {})
    assert seen == [("a", "1"), ("a", "2")]
    assert telemetry.detach("test-many") is False


def test_handler_ids_are_unique():
    telemetry.attach("test-dup", ("a",), lambda *a: None)
    with pytest.raises(ValueError, match="test-dup"):
        telemetry.attach("test-dup", ("b",), lambda *a: None)


def test_raising_handler_is_detached_and_logged_without_breaking_the_caller_or_other_handlers(caplog):
    seen = []

    def bad(*_):
        raise ZeroDivisionError("handler bug")

    telemetry.attach("test-bad", ("ev",), bad)
    telemetry.attach("test-good", ("ev",), lambda e, m, md, c: seen.append(m["n"]))
    with caplog.at_level(logging.ERROR, logger="otpserve.telemetry"):
        telemetry.execute(("ev",), {"n": 1}, {})
        telemetry.execute(("ev",), {"n": 2}, {})
    assert seen == [1, 2]
    assert [h.id for h in telemetry.list_handlers(("ev",))] == ["test-good"]
    assert "test-bad" in caplog.text and "handler bug" in caplog.text


def test_span_emits_start_and_stop_with_duration():
    seen = []
    telemetry.attach_many("test-span", [("job", s) for s in ("start", "stop", "exception")], lambda *a: seen.append(a))
    with telemetry.span(("job",), {"id": 7}) as extra:
        extra["rows"] = 3
    assert [e for e, *_ in seen] == [("job", "start"), ("job", "stop")]
    assert seen[1][1]["duration"] >= 0 and seen[1][2] == {"id": 7, "rows": 3}


def test_span_emits_exception_and_reraises():
    seen = []
    telemetry.attach("test-span-exc", ("job", "exception"), lambda *a: seen.append(a))
    with pytest.raises(KeyError), telemetry.span(("job",), {"id": 8}):
        raise KeyError("missing")
    ((_, measurements, metadata, _),) = seen
    assert metadata["kind"] == "KeyError" and isinstance(metadata["reason"], KeyError)
    assert measurements["duration"] >= 0
