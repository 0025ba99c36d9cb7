"""Suite-wide settings: one intra-op thread in the test process and in the CLI subprocesses it
starts (tests are small-op bound, and pytest-xdist already runs one worker per core), deterministic
seeds per test, and the legacy ONNX exporter as the default for tests that export only as a means
(CLI, bench, docs, API).

torch's dynamo exporter, the product default, costs 2-35x more per export (docs/deployment.md §6.1)
and would put the suite far over its 10 minutes. The tests of the exporter itself name
``dynamo`` explicitly (tests/exporters/test_onnx.py, the opset and pipeline tests), and
tests/exporters/test_default_exporter.py checks that dynamo is the default without the variable.
"""

import os
import re

import pytest
import torch

os.environ.setdefault("US3L_ONNX_EXPORTER", "torchscript")  # inherited by the CLI subprocesses too
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True, scope="session")
def _single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def validate_manifest():
    """``check(path)``: a fleet manifest against the JSON Schema the package ships (every manifest the
    suite writes goes through it), plus the rule that it names no absolute path of this machine."""
    import json

    import jsonschema

    from us3l.fleet import schema

    validator = jsonschema.Draft202012Validator(schema())

    def check(path) -> dict:
        text = open(path, encoding="utf-8").read()
        data = json.loads(text)
        errors = sorted(validator.iter_errors(data), key=lambda e: list(e.path))
        assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)
        folder = os.path.dirname(os.path.abspath(path))
        assert folder not in text and os.path.expanduser("~") + "/" not in text, "an absolute path in the manifest"
        return data

    return check


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# A heartbeat line (us3l.core.heartbeat: "<stage path>: [count, ]m:ss elapsed[, eta m:ss][; message]").
# On a loaded machine a command's start-up (imports, loading a checkpoint) can outlast the heartbeat's
# quiet start, so one such line may precede a bad-input error; the error itself must still be one line.
_PROGRESS_LINE = re.compile(r"^[^:]+: (?:[^;]*, )?\d+:\d\d(?::\d\d)? elapsed(?:, eta \d+:\d\d(?::\d\d)?)?(?:; .*)?$")


def _message_lines(text: str) -> list[str]:
    return [ln for ln in text.strip().splitlines() if ln.strip() and not _PROGRESS_LINE.match(ln.strip())]


@pytest.fixture
def message_lines():
    """The non-empty lines of a command's output that are not heartbeat progress lines."""
    return _message_lines


# ---------------------------------------------------------------------------- progress in CI logs
# In a pipe (a CI log) pytest's dots arrive a line at a time, minutes apart, and say nothing of where
# the suite is. There, one plain line per finished test file says which file, how many of its tests
# passed, failed or were skipped, how long it took, and how far the run is (US3L_TEST_PROGRESS=1
# forces these lines on a terminal, 0 turns them off). Works with and without pytest-xdist: the
# controller counts the reports the workers send.


class _FileProgress:
    def __init__(self, config) -> None:
        self.config = config
        self.total: dict[str, int] = {}
        self.seen: dict[str, dict[str, int]] = {}
        self.started: dict[str, float] = {}
        self.done_tests = 0
        self.all_tests = 0

    def _expect(self, nodeids) -> None:
        if self.total:
            return  # every xdist worker sends the same collection
        for nodeid in nodeids:
            path = nodeid.split("::", 1)[0]
            self.total[path] = self.total.get(path, 0) + 1
        self.all_tests = sum(self.total.values())

    def pytest_collection_modifyitems(self, session, config, items) -> None:
        self._expect([item.nodeid for item in items])

    def pytest_xdist_node_collection_finished(self, node, ids) -> None:
        self._expect(ids)

    def pytest_runtest_logreport(self, report) -> None:
        import time as _time

        path = report.nodeid.split("::", 1)[0]
        self.started.setdefault(path, _time.monotonic())
        counts = self.seen.setdefault(path, {"passed": 0, "failed": 0, "skipped": 0})
        if report.when == "call" or (report.when == "setup" and report.outcome != "passed") or \
                (report.when == "teardown" and report.outcome == "failed"):
            counts[report.outcome if report.outcome in counts else "failed"] += 1
        if report.when != "teardown":
            return
        self.done_tests += 1
        finished = sum(v for k, v in counts.items())
        if path in self.total and finished >= self.total[path] and not counts.get("_reported"):
            counts["_reported"] = 1
            spent = _time.monotonic() - self.started[path]
            parts = [f"{counts[k]} {k}" for k in ("passed", "failed", "skipped") if counts[k]]
            pct = 100 * self.done_tests / max(self.all_tests, 1)
            writer = self.config.pluginmanager.get_plugin("terminalreporter")
            if writer is not None:
                tw = getattr(writer, "_tw", None)
                if tw is not None and getattr(tw, "width_of_current_line", 0):
                    tw.line()  # after a line of dots
                writer.write_line(f"[{pct:3.0f}%] {path}: {', '.join(parts)} in {spent:.1f} s")


def pytest_configure(config) -> None:
    import sys as _sys

    wanted = os.environ.get("US3L_TEST_PROGRESS")
    on = wanted == "1" or (wanted != "0" and not _sys.stdout.isatty())
    is_worker = hasattr(config, "workerinput")
    if on and not is_worker:
        config.pluginmanager.register(_FileProgress(config), "us3l-file-progress")
