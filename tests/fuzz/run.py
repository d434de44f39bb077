"""Run one fuzz target under atheris (coverage-guided, libFuzzer), for a while. Not run in CI.

    .venv/bin/pip install -e '.[fuzz]'
    .venv/bin/python tests/fuzz/run.py manifest                 # 10 minutes
    .venv/bin/python tests/fuzz/run.py packet_udp --seconds 60
    .venv/bin/python tests/fuzz/run.py config -- -jobs=2        # more libFuzzer flags after --

Targets: packet_udp, packet_tcp, manifest, config (tests/fuzz/targets.py says what each
asserts). The run starts from the committed seeds in tests/fuzz/corpus/TARGET and writes the
inputs it finds to a work folder (``--work``, default a new temporary folder, printed), so the
committed corpus changes only when someone copies a small, interesting input into it. A
failure stops the run (libFuzzer saves the input as ``crash-<sha1>``); with ``--keep-going``
the run carries on instead, and saves the first three inputs of each distinct failure (the
exception type and the line it was raised at) as ``failure-<n>-<sha1>`` beside a ``.txt`` with
the traceback, so one run reports everything it meets. Any input replays with ``run.py TARGET
--replay FILE``. (libFuzzer's own fork mode cannot be used: it starts argv[0] as a program.)
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
import tempfile
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import atheris

REPO = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).resolve().parent / "corpus"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target")
    parser.add_argument("--seconds", type=int, default=600)
    parser.add_argument("--work", type=Path)
    parser.add_argument("--keep-going", action="store_true")
    parser.add_argument("--replay", type=Path, help="run the target once over this file")
    parser.add_argument("libfuzzer", nargs="*", help="flags for libFuzzer, after --")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    # A malformed packet is logged as a warning, thousands of times a second here; an internal
    # error is logged at ERROR (and fails the target, which checks the handler's error count).
    logging.basicConfig(level=logging.ERROR)
    # Coverage is what guides the search: instrument kdns and the DNS library it parses with.
    with atheris.instrument_imports(include=["kdns", "dnslib"]):
        from tests.fuzz.targets import TARGETS
    target = TARGETS[args.target]
    if args.replay:
        try:
            target(args.replay.read_bytes())
        except Exception:
            traceback.print_exc()
            return 1
        print("no failure")
        return 0
    work = args.work or Path(tempfile.mkdtemp(prefix=f"kdns-fuzz-{args.target}-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"fuzzing {args.target} for {args.seconds} s; new inputs and failures in {work}")
    flags = [
        f"-max_total_time={args.seconds}",
        f"-artifact_prefix={work}/",
        "-max_len=4096",
        "-timeout=20",
        "-rss_limit_mb=1024",
    ]
    if args.keep_going:
        target = collecting(target, work)
    argv = [sys.argv[0], *flags, *args.libfuzzer, str(work / "corpus"), str(CORPUS / args.target)]
    (work / "corpus").mkdir(exist_ok=True)
    atheris.Setup(argv, target)
    atheris.Fuzz()
    return 0


def collecting(target: Callable[[bytes], None], work: Path) -> Callable[[bytes], None]:
    """`target`, saving each distinct failure's first inputs instead of stopping the run."""
    seen: Counter[tuple[str, str, int | None]] = Counter()

    def run(data: bytes) -> None:
        try:
            target(data)
        except Exception as exc:
            where = traceback.extract_tb(exc.__traceback__)[-1]
            key = (type(exc).__name__, where.filename, where.lineno)
            seen[key] += 1
            if seen[key] > 3:
                return
            n = len(seen)
            name = f"failure-{n}-{hashlib.sha1(data).hexdigest()}"
            (work / name).write_bytes(data)
            (work / f"{name}.txt").write_text(traceback.format_exc())
            print(f"FAILURE {n}: {key[0]} at {key[1]}:{key[2]}: {exc!s:.200} -> {name}", flush=True)

    return run


if __name__ == "__main__":
    sys.exit(main())
