"""Runs CPython's own `test_asyncio` against oxio and against the stdlib loop, and compares.

Each target runs in its own subprocess per loop, under pytest with a per-test timeout (a hang
is a failure). A test that passes on the stdlib loop must pass on oxio, unless it is listed in
`expected_failures.txt` with its reason; a listed test that passes is an error too (strict).

    python tests/conformance/run.py [--only NAME ...] [--jobs N]
"""

import argparse
import collections
import concurrent.futures
import os
import pathlib
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

HERE = pathlib.Path(__file__).resolve().parent
TIMEOUT_PER_TEST = 30
TIMEOUT_PER_TARGET = 900

# Modules that take the loop from the event-loop policy: run as they are.
POLICY_MODULES = [
    "test_base_events",
    "test_context",
    "test_futures",
    "test_futures2",
    "test_locks",
    "test_pep492",
    "test_protocols",
    "test_queues",
    "test_runners",
    "test_ssl",
    "test_sslproto",
    "test_streams",
    "test_taskgroups",
    "test_subprocess",
    "test_tasks",
    "test_threads",
    "test_timeouts",
    "test_transports",
    "test_unix_events",
    "test_waitfor",
]
# Loop-parametrized mixins, bound to the loop under test in cpython_mixins.py.
MIXIN_CLASSES = [
    "EventLoopTests",
    "SockTests",
    "SendfileTests",
    "StartServerTests",
    "BufferedProtocolTests",
    "StartTLSTests",
    "SubprocessEventsTests",
]


def targets():
    for module in POLICY_MODULES:
        yield module, ["--pyargs", f"test.test_asyncio.{module}"]
    for cls in MIXIN_CLASSES:
        yield cls, [f"{HERE / 'cpython_mixins.py'}::{cls}"]


def run_target(name, args, loop):
    with tempfile.TemporaryDirectory() as tmp:
        report = pathlib.Path(tmp) / "report.xml"
        env = dict(os.environ, OXIO_CONFORMANCE_LOOP=loop)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "-c",
            str(HERE / "pytest.ini"),
            "-p",
            "oxio_conformance_plugin",
            f"--timeout={TIMEOUT_PER_TEST}",
            f"--junitxml={report}",
            "-x" if False else "-q",
            *args,
        ]
        try:
            proc = subprocess.run(
                cmd, env=env, cwd=tmp, capture_output=True, text=True, timeout=TIMEOUT_PER_TARGET
            )
            output = proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as exc:
            output = f"target timed out after {TIMEOUT_PER_TARGET}s\n{exc.stdout or ''}"
        outcomes = parse_report(report) if report.exists() else {}
        if not outcomes:
            # The run crashed before writing a report: count the whole target as one error.
            outcomes = {f"{name}::<collection>": "error"}
        return outcomes, output


def parse_report(path):
    outcomes = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        test_id = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        kinds = {child.tag for child in case}
        if "error" in kinds:
            outcome = "error"
        elif "failure" in kinds:
            outcome = "fail"
        elif "skipped" in kinds:
            outcome = "skip"
        else:
            outcome = "pass"
        outcomes[test_id] = outcome
    return outcomes


def load_expected_failures():
    expected = {}
    path = HERE / "expected_failures.txt"
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        test_id, _, reason = line.partition(" ")
        expected[test_id] = reason.strip(" #")
    return expected


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", nargs="*", help="run only these targets")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--verbose", action="store_true", help="print failing output")
    parser.add_argument(
        "--write-expected",
        action="store_true",
        help="print the expected-failure lines for every current divergence",
    )
    opts = parser.parse_args()

    chosen = [(n, a) for n, a in targets() if not opts.only or n in opts.only]
    results = {}
    with concurrent.futures.ThreadPoolExecutor(opts.jobs) as pool:
        futures = {
            pool.submit(run_target, name, args, loop): (name, loop)
            for name, args in chosen
            for loop in ("asyncio", "oxio")
        }
        for future in concurrent.futures.as_completed(futures):
            results[futures[future]] = future.result()

    expected = load_expected_failures()
    problems = []
    divergences = []
    header = f"{'target':<24} {'loop':<8} {'pass':>5} {'fail':>5} {'error':>5} {'skip':>5}"
    print(header)
    print("-" * len(header))
    for name, _ in chosen:
        for loop in ("asyncio", "oxio"):
            counts = collections.Counter(results[(name, loop)][0].values())
            print(
                f"{name:<24} {loop:<8} {counts['pass']:>5} {counts['fail']:>5} "
                f"{counts['error']:>5} {counts['skip']:>5}"
            )
        reference = results[(name, "asyncio")][0]
        ours, output = results[(name, "oxio")]
        for test_id, outcome in sorted(reference.items()):
            got = ours.get(test_id, "missing")
            listed = test_id in expected
            if outcome == "pass" and got != "pass":
                divergences.append(test_id)
                if not listed:
                    problems.append(f"{test_id}: passes on asyncio, {got} on oxio")
            elif listed and got == "pass":
                problems.append(f"{test_id}: listed as an expected failure but passes (XPASS)")
        if opts.verbose and any(o != "pass" for o in ours.values()):
            print(output[-6000:])

    print()
    print(f"{len(divergences)} divergences ({len(divergences) - len(problems)} expected)")
    if opts.write_expected:
        for test_id in divergences:
            print(f"{test_id}  # {expected.get(test_id, 'TODO: reason')}")
    for problem in problems:
        print("CONFORMANCE:", problem)
    passed = sum(
        1
        for (n, loop), (outcomes, _) in results.items()
        if loop == "oxio"
        for o in outcomes.values()
        if o == "pass"
    )
    failed = len(problems)
    print(f"conformance: {passed} passed, {failed} failed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
