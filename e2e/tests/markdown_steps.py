"""The steps a guide marks for testing: an HTML comment `<!-- guide: KIND ARGS -->` right before
a fenced block. Kinds:

    file PATH            write the block to PATH
    run                  run the block (bash -euo pipefail); its output is checked by an
                         `expect` / `expect-contains` block right after it, if any
    start NAME READY     start the block's one command in the background; READY (an http://
                         URL answering 200, or tcp://host:port accepting) says it is up
    expect               the previous run's standard output, exactly (trailing blanks ignored)
    expect-contains      lines that must each appear in the previous run's standard output
    not run (WHY)        shown to the reader, not run (the test does it its own way)
    picture              not a command (a diagram)
    fragment             a piece of a file shown on its own (the whole file is a `file` step)

Every fenced block in the guide must carry one marker, so that no command is left untested
by oversight.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

MARKER = re.compile(r"^<!-- guide: (?P<kind>[\w-]+(?: run)?)(?P<args>.*?) -->$")
FENCE = re.compile(r"^(?P<fence>```+)(?P<lang>[\w-]*)\s*$")
KINDS = {"file", "run", "start", "expect", "expect-contains", "not run", "picture", "fragment"}


@dataclass
class Step:
    kind: str
    args: list[str]
    text: str
    line: int  # 1-based line of the block's opening fence, for messages
    expect: Step | None = None  # for `run`: the expect block after it


def steps(path: Path) -> list[Step]:
    lines = path.read_text().splitlines()
    out: list[Step] = []
    pending: tuple[str, list[str]] | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        marker = MARKER.match(line)
        fence = FENCE.match(line)
        if marker:
            kind = marker["kind"]
            assert kind in KINDS, f"{path}:{i + 1}: unknown guide marker {kind!r}"
            pending = (kind, marker["args"].split())
        elif fence:
            end = next((j for j in range(i + 1, len(lines)) if lines[j] == fence["fence"]), None)
            assert end is not None, f"{path}:{i + 1}: unclosed fence"
            assert pending is not None, f"{path}:{i + 1}: a fenced block without a `<!-- guide: ... -->` marker"
            kind, args = pending
            text = "\n".join(lines[i + 1:end]) + "\n"
            step = Step(kind, args, text, i + 1)
            if kind.startswith("expect"):
                assert out and out[-1].kind == "run", f"{path}:{i + 1}: {kind} must follow a run block"
                out[-1].expect = step
            else:
                out.append(step)
            pending = None
            i = end
        elif line.strip() and pending is not None:
            raise AssertionError(f"{path}:{i + 1}: text between a guide marker and its block")
        i += 1
    return out


def mismatch(step: Step, stdout: str) -> str | None:
    """Why `stdout` is not what the run step's expect block says, or None."""
    expect = step.expect
    if expect is None:
        return None
    if expect.kind == "expect":
        want = [l.rstrip() for l in expect.text.rstrip("\n").splitlines()]
        got = [l.rstrip() for l in stdout.rstrip("\n").splitlines()]
        if want != got:
            return "expected:\n" + "\n".join(want) + "\ngot:\n" + "\n".join(got)
        return None
    missing = [l for l in expect.text.splitlines() if l.strip() and l.strip() not in stdout]
    if missing:
        return "missing from the output:\n" + "\n".join(missing) + "\ngot:\n" + stdout
    return None
