"""The documentation cannot rot unnoticed.

- Every ``python scripts/NAME.py ...`` command in README.md, docs/*.md and the README files of results/ and
  saved_models/ (code blocks and inline code) parses with the argument parser that script builds: an unknown
  flag or a bad choice fails, naming file and line.
- Every relative link and image path in them resolves, and so does every ``#anchor`` into a Markdown page.
- The README stays short (at most ``README_MAX_LINES`` lines): details belong in docs/.
- Every number of the README's headline table equals the value computed from the results JSON file its row links.

Nothing here trains; only the command test imports the scripts (and so TensorFlow).
"""

import argparse
import collections
import importlib.util
import json
import re
import shlex
import statistics
from pathlib import Path
from unittest import mock

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "results" / "README.md",
             ROOT / "saved_models" / "README.md"]
README_MAX_LINES = 250

# Arguments after "--" that a script hands on to another script's parser.
FORWARDS = {"multiworker_demo": "fit"}
SCRIPT = re.compile(r"^scripts/(\w+)\.py$")
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_]\w*=")
VARIABLE = re.compile(r"\$\{?([A-Za-z_]\w*)\}?")
PLACEHOLDER = re.compile(r"invalid (?:int|float) value: '([A-Z][A-Z0-9_]*)'")
SEPARATORS = {";", "&&", "||", "|", "&"}


def rel(path):
    return path.relative_to(ROOT).as_posix()


def code_and_prose(path):
    """``(commands, prose)`` of a Markdown file: the shell lines of its fenced blocks as ``(line, text)``
    (continuation lines joined, ``NAME=value`` assignments kept for later lines), and its other lines."""
    shell, prose = [], []
    fence, pending = None, None
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            fence = None if fence is not None else line.strip()[3:].strip()
            continue
        if fence is None:
            prose.append((number, line))
            continue
        if fence not in ("", "bash", "sh", "shell", "console"):
            continue
        start, text = pending if pending else (number, "")
        text = f"{text} {line.strip()}" if text else line.strip()
        if text.endswith("\\"):
            pending = (start, text[:-1].rstrip())
            continue
        pending = None
        shell.append((start, text))
    return shell, prose


def inline_code(prose):
    """``(line, text)`` of every inline code span of the prose lines (a span may run over a line break)."""
    text = "\n".join(line for _, line in prose)
    starts = [number for number, _ in prose]
    for match in re.finditer(r"(?<!`)`([^`]+)`(?!`)", text):
        yield starts[text.count("\n", 0, match.start())], " ".join(match.group(1).split())


def script_commands(path):
    """``(line, script name, arguments)`` of every ``python scripts/NAME.py`` command of a Markdown file."""
    shell, prose = code_and_prose(path)
    variables = {}
    for number, text in [*shell, *inline_code(prose)]:
        text = VARIABLE.sub(lambda m: variables.get(m.group(1), m.group(0)), text)
        try:
            lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|")
            lexer.whitespace_split = True
            tokens = list(lexer)
        except ValueError:  # an unbalanced quote: not a shell line
            continue
        command = []
        for token in [*tokens, ";"]:
            if token not in SEPARATORS:
                command.append(token)
                continue
            if len(command) == 1 and ENV_ASSIGNMENT.match(command[0]):
                name, _, value = command[0].partition("=")
                variables[name] = value
            while command and ENV_ASSIGNMENT.match(command[0]):
                command.pop(0)
            if len(command) >= 2 and command[0] in ("python", "python3") and SCRIPT.match(command[1]):
                yield number, SCRIPT.match(command[1]).group(1), command[2:]
            command = []


_PARSERS = {}


class _Caught(Exception):
    pass


def script_parser(name):
    """The ``argparse`` parser that ``scripts/NAME.py`` builds, caught when its ``main`` asks it to parse."""
    if name not in _PARSERS:
        spec = importlib.util.spec_from_file_location(f"docs_check_{name}", ROOT / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        caught = []

        def catch(parser, args=None, namespace=None):
            caught.append(parser)
            raise _Caught

        with mock.patch.object(argparse.ArgumentParser, "parse_args", catch):
            try:
                module.main([])
            except _Caught:
                pass
        assert caught, f"scripts/{name}.py: main() parsed no arguments with argparse"
        _PARSERS[name] = caught[0]
    return _PARSERS[name]


def parse_error(parser, args):
    """``None`` if ``args`` parse, else argparse's message. Flags must be spelled out (no abbreviations); a
    placeholder value (``--seed S``) that a typed option refuses is read as a number."""
    def error(message):
        raise ValueError(message)

    args = list(args)
    for _ in range(len(args) + 1):
        try:
            with mock.patch.object(parser, "error", error), mock.patch.object(parser, "exit", error), \
                    mock.patch.object(parser, "allow_abbrev", False):  # docs spell flags out
                parser.parse_args(args)
            return None
        except ValueError as e:
            placeholder = PLACEHOLDER.search(str(e))
            if not placeholder or placeholder.group(1) not in args:
                return str(e) or "--help"
            args[args.index(placeholder.group(1))] = "1"
    return "too many placeholders"


def test_every_script_command_in_the_docs_parses():
    problems, checked = [], collections.Counter()
    for path in DOC_FILES:
        for number, name, args in script_commands(path):
            if not (ROOT / "scripts" / f"{name}.py").exists():
                problems.append(f"{rel(path)}:{number}: scripts/{name}.py does not exist")
                continue
            parts = [(name, args)]
            if name in FORWARDS and "--" in args:
                cut = args.index("--")
                parts = [(name, args[:cut]), (FORWARDS[name], args[cut + 1:])]
            for script, part in parts:
                message = parse_error(script_parser(script), part)
                checked[script] += 1
                if message is not None:
                    problems.append(f"{rel(path)}:{number}: python scripts/{name}.py {shlex.join(args)}: {message}")
    assert not problems, "commands in the docs that their script refuses:\n" + "\n".join(problems)
    # The extraction found the commands (a broken extractor would pass by finding none).
    assert sum(checked.values()) >= 60 and {"fit", "reproduce", "tune", "bench", "evaluate"} <= set(checked)


def test_shell_lines_are_read_as_a_shell_would():
    doc = ROOT / "tests" / "doc_fixture.md"  # never written: only the text is parsed
    text = ("```bash\nCOMMON=\"--dataset mnist --epochs 1\"\npython scripts/tune.py $COMMON --out runs/a \\\n"
            "    --max-trials 2   # a comment\npip install -e . && TF_X=1 python scripts/fit.py --seed S\n"
            "```\nInline: `python scripts/fit.py --mixer\nbernoulli` and `scripts/fit.py` alone.\n")
    with mock.patch.object(Path, "read_text", return_value=text):
        found = list(script_commands(doc))
    assert found == [(3, "tune", ["--dataset", "mnist", "--epochs", "1", "--out", "runs/a", "--max-trials", "2"]),
                     (5, "fit", ["--seed", "S"]), (7, "fit", ["--mixer", "bernoulli"])]
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int)
    parser.add_argument("--mixer", choices=["mixup", "bernoulli"])
    assert parse_error(parser, ["--seed", "S"]) is None
    assert "unrecognized arguments: --sed" in parse_error(parser, ["--sed", "1"])
    assert "unrecognized arguments: --mix" in parse_error(parser, ["--mix", "mixup"])  # no abbreviations
    assert "invalid choice: 'bernouli'" in parse_error(parser, ["--mixer", "bernouli"])


def github_anchors(path):
    """The anchors GitHub gives the headings of a Markdown file."""
    anchors, seen = set(), collections.Counter()
    _, prose = code_and_prose(path)
    for _, line in prose:
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-")
            anchors.add(slug if not seen[slug] else f"{slug}-{seen[slug]}")
            seen[slug] += 1
    return anchors


def links(path):
    """``(line, target)`` of every Markdown link and image outside code."""
    _, prose = code_and_prose(path)
    for number, line in prose:
        line = re.sub(r"`[^`]*`", "", line)
        for match in re.finditer(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", line):
            yield number, match.group(1)


def test_every_relative_link_and_image_resolves():
    problems, checked = [], 0
    for path in DOC_FILES:
        for number, target in links(path):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            checked += 1
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            if not linked.exists():
                problems.append(f"{rel(path)}:{number}: {target}: no such file")
            elif anchor and linked.suffix == ".md" and anchor not in github_anchors(linked):
                problems.append(f"{rel(path)}:{number}: {target}: no heading with that anchor in {rel(linked)}")
    assert not problems, "links in the docs that lead nowhere:\n" + "\n".join(problems)
    assert checked >= 20


# The headline table: row labels as the README writes them, and the key of the table rows they name:
# (mixer, k) for AMR, ("bvae", beta) for Table 4's beta-VAE.
LABELS = {"none": ("none", 2), "ACAI": ("acai", 2), "mixup": ("mixup", 2), "Bernoulli": ("bernoulli", 2),
          "triplet": ("mixup", 3), "mixup k=3": ("mixup", 3), "Bernoulli k=3": ("bernoulli", 3),
          "beta-VAE 100": ("bvae", 100.0), "beta-VAE 110": ("bvae", 110.0)}
LABEL = "(" + "|".join(map(re.escape, LABELS)) + ")"
NUMBER = r"[+-]?\d+\.\d\d\d?"
MEAN_STD = re.compile(rf"^{LABEL} ({NUMBER})(?: ± ({NUMBER}))?(?: \((\d+)\))?$")
REPORT = re.compile(rf"^(?:report: )?{LABEL} (\S.*)$")
GAP = re.compile(rf"^{LABEL} minus {LABEL} ({NUMBER}) \(({NUMBER}) to ({NUMBER})\): (ahead|behind|open)$")
SOURCE = re.compile(r"\]\((results/[^)#]+\.json)(?:#([^)]*))?\)")
# Column name (or a cell's "NAME: " prefix) -> (key of the gap entries, run key by split, scale, digits).
METRICS = {"online": ("online_probe", lambda split: "test_probe_accuracy" if split == "test" else
                      "best_val_probe_accuracy", 100, 2),
           "post-hoc": ("linear_eval", lambda split: f"linear_eval_{split}_accuracy", 100, 2),
           "k-NN": ("knn", lambda split: f"knn_{split}_accuracy", 100, 2),
           "FactorVAE": ("factorvae", lambda split: "factorvae_score", 1, 3)}
CELL_PREFIX = re.compile(r"^(shape|FactorVAE): ")


def row_key(row):
    """The ``LABELS`` key of a row of a table's JSON (Table 4's rows keep their settings under ``setting``)."""
    setting = row.get("setting", row)
    return ("bvae", setting["beta_kl"]) if setting.get("model") == "bvae" else (setting["mixer"], setting["k"])


def gap_name(rows, a, b):
    """How a table's JSON names the gap of row ``a`` minus row ``b`` (``LABELS`` keys)."""
    if a in rows and b in rows and "row" in rows[a]:
        return f"{rows[a]['row']} minus {rows[b]['row']}"
    return f"{a[0]}-k{a[1]} minus {b[0]}-k{b[1]}"


def headline_table(lines):
    """``(header cells, [(line number, cells)])`` of the README's headline table (header names "paper experiment")."""
    start = next(i for i, line in enumerate(lines) if line.startswith("|") and "paper experiment" in line)
    header = [cell.strip() for cell in lines[start].strip("|").split("|")]
    rows = []
    for i in range(start + 2, len(lines)):
        if not lines[i].startswith("|"):
            break
        rows.append((i + 1, [cell.strip() for cell in lines[i].strip("|").split("|")]))
    return start, header, rows


def metric_of(column):
    return next(((name, value) for name, value in METRICS.items() if name in column), (None, None))[1]


def check_headline_row(header, cells, data, filters):
    """Messages for every number of one headline row that differs from ``data`` (a table's JSON), and how
    many numbers were checked."""
    def matches(entry):
        return all(str(entry.get(key)) == value for key, value in filters.items())

    rows = {row_key(r): r for r in data["rows"] if matches(r) and r.get("runs")}
    problems, checked = [], 0
    for column, cell in zip(header, cells):
        metric = metric_of(column)
        kind = "gap" if "gap" in column else "report" if "report" in column else "metric" if metric else None
        if kind is None or cell.startswith("–"):
            continue
        # "shape: ..." names the label of a row's accuracies; "FactorVAE: ..." gives that metric instead.
        prefix = CELL_PREFIX.match(cell)
        if prefix:
            metric = METRICS.get(prefix.group(1), metric)
            cell = cell[prefix.end():]
        for item in (part.strip() for part in cell.split(";")):
            pattern = {"gap": GAP, "report": REPORT, "metric": MEAN_STD}[kind]
            found = pattern.match(item)
            if not found:
                problems.append(f"{column}: {item!r} is not in the form the test reads ({pattern.pattern})")
                continue
            checked += 1
            row = rows.get(LABELS[found.group(1)])
            if row is None and kind != "gap":
                problems.append(f"{column}: {item!r}: the JSON has no finished row {LABELS[found.group(1)]}")
                continue
            if kind == "report":
                expected = f"{found.group(1)} {row['report']}"
            elif kind == "metric":
                split = "test" if row["runs"][0].get("test_probe_accuracy") is not None else "val"
                _, key_of, scale, digits = metric
                values = [scale * run[key_of(split)] for run in row["runs"]]
                expected = f"{found.group(1)} {statistics.mean(values):.{digits}f}"
                expected += f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else ""
                expected += f" ({len(values)})" if found.group(4) else ""
            else:
                name = gap_name(rows, LABELS[found.group(1)], LABELS[found.group(2)])
                gap = next((g for g in data.get("gaps", []) if g["rows"] == name and matches(g)), None)
                if gap is None or gap[metric[0]]["ci95"] is None:
                    problems.append(f"{column}: {item!r}: the JSON has no such gap with an interval")
                    continue
                g, digits = gap[metric[0]], metric[3]
                expected = (f"{found.group(1)} minus {found.group(2)} {g['mean']:+.{digits}f} "
                            f"({g['ci95'][0]:+.{digits}f} to {g['ci95'][1]:+.{digits}f}): {g['verdict']}")
            if kind == "report":
                item = item.removeprefix("report: ")
            if item != expected:
                problems.append(f"{column}: README says {item!r}, the JSON gives {expected!r}")
    return problems, checked


def test_the_headline_numbers_equal_the_results_json_they_cite():
    lines = (ROOT / "README.md").read_text().splitlines()
    start, header, rows = headline_table(lines)
    # It is the first results table a reader meets.
    earlier_tables = [line for line in lines[:start] if line.startswith("|")]
    assert not any(re.search(r"±|\d\.\d\d", line) for line in earlier_tables), \
        "a results table comes before the headline table"
    assert len(rows) >= 3 and rows[0][1][0].startswith("Table 1")
    problems, checked = [], 0
    for number, cells in rows:
        sources = SOURCE.findall(" ".join(cells))
        if not sources and "results to come" in " ".join(cells):
            # An experiment whose runs are not in yet: it may give no number at all.
            if any(re.search(r"\d\.\d", cell) for cell in cells[2:]):
                problems.append(f"README.md:{number}: a row with results to come gives numbers without a JSON file")
            continue
        if len(sources) != 1:
            problems.append(f"README.md:{number}: a headline row must link exactly one results JSON file")
            continue
        path, selection = sources[0]
        filters = dict(part.split("=", 1) for part in selection.split("&") if part)
        data = json.loads((ROOT / path).read_text())
        row_problems, row_checked = check_headline_row(header, cells, data, filters)
        problems += [f"README.md:{number}: {p}" for p in row_problems]
        checked += row_checked
        if not row_checked:
            problems.append(f"README.md:{number}: no number of this row could be checked")
    assert not problems, "headline numbers that differ from their results JSON:\n" + "\n".join(problems)
    assert checked >= 30


@pytest.mark.parametrize("cell, problem", [
    ("mixup 94.63 ± 0.49 (6)", "README says 'mixup 94.63 ± 0.49 (6)', the JSON gives 'mixup 94.62 ± 0.49 (6)'"),
    ("mixup 94.62 ± 0.49 (5)", "the JSON gives 'mixup 94.62 ± 0.49 (6)'"),
    ("mixup about 94.6", "is not in the form the test reads"),
])
def test_an_edited_headline_number_is_caught(cell, problem):
    data = json.loads((ROOT / "results" / "table1_mnist-whiten.json").read_text())
    problems, _ = check_headline_row(["online probe (seeds)"], [cell], data, {})
    assert len(problems) == 1 and problem in problems[0]
    gap_problems, _ = check_headline_row(
        ["post-hoc gap to none, 95% interval"], ["mixup minus none +0.49 (+0.02 to +0.96): open"], data, {})
    assert gap_problems and "the JSON gives 'mixup minus none +0.49 (+0.02 to +0.96): ahead'" in gap_problems[0]


def test_table4_cells_are_read_with_their_metric():
    def run(score, accuracy):
        return {"factorvae_score": score, "linear_eval_test_accuracy": accuracy, "test_probe_accuracy": accuracy}

    data = {"rows": [
        {"row": "none (AE + GAN)", "setting": {"mixer": "none", "k": 2}, "runs": [run(0.70, 0.44), run(0.72, 0.45)]},
        {"row": "beta-VAE, beta 100", "setting": {"model": "bvae", "beta_kl": 100.0},
         "runs": [run(0.40, 0.39), run(0.40, 0.40)]}],
        "gaps": [{"rows": "beta-VAE, beta 100 minus none (AE + GAN)",
                  "factorvae": {"mean": -0.31, "ci95": [-0.437, -0.183], "verdict": "behind"}}]}
    header = ["FactorVAE score (seeds)", "post-hoc linear", "gap to none, 95% interval (post-hoc; Table 4: FactorVAE)"]
    cells = ["none 0.710 ± 0.014 (2); beta-VAE 100 0.400 ± 0.000 (2)", "shape: none 44.50 ± 0.71; beta-VAE 100 39.50 ± 0.71",
             "FactorVAE: beta-VAE 100 minus none -0.310 (-0.437 to -0.183): behind"]
    assert check_headline_row(header, cells, data, {}) == ([], 5)
    cells[0] = "none 0.710 ± 0.014 (2); beta-VAE 110 0.400 ± 0.000 (2)"
    cells[2] = "FactorVAE: beta-VAE 100 minus none -0.310 (-0.437 to -0.183): open"
    problems, _ = check_headline_row(header, cells, data, {})
    assert len(problems) == 2 and "no finished row ('bvae', 110.0)" in problems[0]
    assert "the JSON gives 'beta-VAE 100 minus none -0.310 (-0.437 to -0.183): behind'" in problems[1]


def test_the_readme_stays_short():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move details to docs/"
