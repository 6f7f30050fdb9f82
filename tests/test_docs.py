"""The documentation cannot rot unnoticed.

- Every ``python scripts/NAME.py ...`` command in README.md, docs/*.md and the README files of results/ and
  saved_models/ (code blocks and inline code) parses with the argument parser that script builds: an unknown
  flag or a bad choice fails, naming file and line. It then goes through the script's own checks, the path of a
  real start, up to where the script would start training or writing (``STARTS``), with its data folders (``DIR``)
  made empty in a scratch folder.
- Every code fence of those files is closed, and none opens right where a block closed (a stray fence).
- Every relative link and image path in them resolves, and so does every ``#anchor`` into a Markdown page.
- The README stays short (at most ``README_MAX_LINES`` lines): details belong in docs/.
- Every number of the README's headline table, the recipe its rows state, every number of the README's prose
  (``PROSE_CLAIMS``, or declared no result in ``PROSE_NOT_RESULTS``) and every number of the result tables of
  ``RESULT_DOCS`` equals the value computed from the results JSON file it cites.
- Every table JSON file of results/ is what ``scripts/reproduce.py --table-only`` rebuilds from the runs recorded
  in ``results/finished_runs.jsonl`` (``NOT_REBUILT`` names those it cannot, and why).

Nothing here trains.
"""

import argparse
import collections
import contextlib
import importlib
import importlib.util
import io
import json
import re
import shlex
import shutil
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


_MODULES = {}


def script_module(name):
    """``scripts/NAME.py`` imported as a module (once)."""
    if name not in _MODULES:
        spec = importlib.util.spec_from_file_location(f"docs_check_{name}", ROOT / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _MODULES[name] = module
    return _MODULES[name]


def script_parser(name):
    """The ``argparse`` parser that ``scripts/NAME.py`` builds, caught when its ``main`` asks it to parse."""
    if name not in _PARSERS:
        module = script_module(name)
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
    return filled_args(parser, args)[1]


def filled_args(parser, args):
    """``(args with numeric placeholders read as 1, None)`` if they parse, else ``(args, argparse's message)``."""
    def error(message):
        raise ValueError(message)

    args = list(args)
    for _ in range(len(args) + 1):
        try:
            with mock.patch.object(parser, "error", error), mock.patch.object(parser, "exit", error), \
                    mock.patch.object(parser, "allow_abbrev", False):  # docs spell flags out
                parser.parse_args(args)
            return args, None
        except ValueError as e:
            placeholder = PLACEHOLDER.search(str(e))
            if not placeholder or placeholder.group(1) not in args:
                return args, str(e) or "--help"
            args[args.index(placeholder.group(1))] = "1"
    return args, "too many placeholders"


def doc_commands():
    """``(file, line, script name, arguments)`` of every script command of ``DOC_FILES``."""
    for path in DOC_FILES:
        for number, name, args in script_commands(path):
            yield path, number, name, args


def command_parts(name, args):
    """``[(script, arguments)]``: the command's own, and those after ``--`` that it hands on (``FORWARDS``)."""
    if name in FORWARDS and "--" in args:
        cut = args.index("--")
        return [(name, args[:cut]), (FORWARDS[name], args[cut + 1:])]
    return [(name, args)]


def test_every_script_command_in_the_docs_parses():
    problems, checked = [], collections.Counter()
    for path, number, name, args in doc_commands():
        if not (ROOT / "scripts" / f"{name}.py").exists():
            problems.append(f"{rel(path)}:{number}: scripts/{name}.py does not exist")
            continue
        for script, part in command_parts(name, args):
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


# --------------------------------------------------------------------------- commands start as a real start does
class _Started(Exception):
    """Raised where a script would start its work: every check before it passed."""


class _Refused(Exception):
    """Raised by a stand-in that checked what the script hands on (multiworker_demo's fit.py) and found it refused."""


def _stop(*args, **kwargs):
    raise _Started


def _launch_fit(out, fit_args, workers=2, timeout=None):
    """multiworker_demo's ``launch``: each worker runs fit.py with these arguments; they must start."""
    problem = start_problem("fit", ["--strategy", "multiworker", "--out", out, *fit_args])
    if problem:
        raise _Refused(f"fit.py {shlex.join(fit_args)}: {problem}")
    raise _Started


# Where each script starts training or writing once its checks have passed: (module, attribute) replaced by a
# stand-in that stops the command there ("script": the script's own namespace).
STARTS = {
    "fit": {("script", "run"): _stop},
    "reproduce": {("amr_keras.tables", "train_missing"): _stop, ("amr_keras.tables.accuracy", "write_tables"): _stop,
                  ("amr_keras.tables.table4", "draw_traversals"): _stop,
                  ("amr_keras.tables.table4", "write_table"): _stop},
    "tune": {("amr_keras.search.run", "FolderLock"): _stop},
    "evaluate": {("script", "evaluate_saved"): _stop, ("amr_keras.disentanglement", "factorvae_saved"): _stop},
    "export": {("script", "export_run"): _stop, ("script", "add_linear_head"): _stop},
    "interpolate": {("script", "make_figures"): _stop},
    "bench": {("script", "bench_keras_in_subprocess"): _stop, ("script", "bench_keras"): _stop,
              ("script", "bench_torch"): _stop, ("script", "bench_pipeline"): _stop},
    "multiworker_demo": {("script", "launch"): _launch_fit},
}


def start_problem(name, args):
    """``None`` if ``python scripts/NAME.py ARGS`` passes every check of the script and reaches ``STARTS``
    (or ends without error, e.g. ``--dry-run``); else what the script said."""
    module = script_module(name)
    err = io.StringIO()
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
            stack.enter_context(contextlib.redirect_stderr(err))
            stack.enter_context(mock.patch("signal.signal"))  # tune.py --workers sets a SIGTERM handler
            for (where, attribute), stand_in in STARTS.get(name, {}).items():
                target = module if where == "script" else importlib.import_module(where)
                stack.enter_context(mock.patch.object(target, attribute, stand_in))
            code = module.main(list(args))
    except _Started:
        return None
    except _Refused as e:
        return str(e)
    except SystemExit as e:
        code = e.code
    except Exception as e:  # noqa: BLE001 - any other failure is the answer
        return f"{type(e).__name__}: {e}"
    if code in (0, None):
        return None
    said = [line for line in err.getvalue().splitlines() if line.strip()]
    return f"exit status {code}: {said[-1] if said else '(nothing on stderr)'}"


DATA_FLAGS = ("--data-dir", "--tfds-data-dir")
DATA_PLACEHOLDER = re.compile(r"\bDIR\d*\b")
# A --config file the docs pass is the best_hyperparameters.json of a search (tune.py writes it).
SEARCH_RESULT = ROOT / "results" / "search_mnist_sample_best_hyperparameters.json"


def with_inputs(args, data):
    """``args`` with ``DIR`` placeholders replaced by folders under ``data``, and the inputs a user brings made in
    the working folder: each data folder (empty), an ``--attributes`` table and a ``--config`` file (a search's
    result)."""
    args = [DATA_PLACEHOLDER.sub(lambda m: str(data / m.group(0)), arg) for arg in args]
    for flag, value in zip(args, args[1:]):
        if flag in DATA_FLAGS:
            Path(value.partition("=")[2] if "=" in value else value).mkdir(parents=True, exist_ok=True)
        elif flag == "--attributes":  # an attribute table the user has
            Path(value).parent.mkdir(parents=True, exist_ok=True)
            Path(value).write_text("file,attribute\n")
        elif flag == "--config" and not Path(value).exists():
            Path(value).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(SEARCH_RESULT, value)
    return args


def test_every_script_command_in_the_docs_passes_the_scripts_own_checks(tmp_path, monkeypatch):
    work = tmp_path / "work" / "here"  # two levels down: "../x" in a command stays in tmp_path
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    problems, checked = [], collections.Counter()
    for path, number, name, args in doc_commands():
        args = with_inputs(args, tmp_path / "data")
        filled = [filled_args(script_parser(script), part) for script, part in command_parts(name, args)]
        message = next((m for _, m in filled if m), None)
        args = filled[0][0] + (["--", *filled[1][0]] if len(filled) > 1 else [])
        message = message or start_problem(name, args)
        checked[name] += 1
        if message is not None:
            problems.append(f"{rel(path)}:{number}: python scripts/{name}.py {shlex.join(args)}: {message}")
    assert not problems, "commands in the docs that their script stops before starting:\n" + "\n".join(problems)
    assert set(checked) == set(STARTS) and sum(checked.values()) >= 60


def test_a_command_the_scripts_checks_refuse_is_caught(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    assert start_problem("fit", ["--dataset", "mnist", "--data-dir", "d", "--mixer", "bernoulli"]) is None
    # Parses, but the settings are refused: bernoulli needs two feature maps; ACAI mixes pairs.
    assert "--code-channels >= 2" in start_problem("fit", ["--mixer", "bernoulli", "--code-channels", "1"])
    assert "k must be 2" in start_problem("fit", ["--mixer", "acai", "--k", "3"])
    assert "does not exist" in start_problem("fit", ["--dataset", "mnist", "--data-dir", "nowhere"])
    assert "--table 4 does not take --lamb" in start_problem("reproduce", ["--table", "4", "--lamb", "3"])
    assert "--workers must be at least 1" in start_problem("multiworker_demo", ["--workers", "0"])
    assert "fit.py --mixer acai --k 3" in start_problem("multiworker_demo", ["--", "--mixer", "acai", "--k", "3"])


# --------------------------------------------------------------------------- code fences
FENCE = re.compile(r"^\s*```")


def fence_problems(path):
    """Unclosed code blocks, and fences that open right where a block closed (a stray fence), as ``file:line``."""
    problems, opened, closed = [], None, None
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not FENCE.match(line):
            continue
        if opened is None:
            if closed == number - 1:
                problems.append(f"{rel(path)}:{number}: a fence opens right where the block of line {closed} "
                                "closed: a stray fence?")
            opened = number
        else:
            opened, closed = None, number
    if opened is not None:
        problems.append(f"{rel(path)}:{opened}: this code block is never closed")
    return problems


def test_code_fences_balance():
    problems = [problem for path in DOC_FILES for problem in fence_problems(path)]
    assert not problems, "code fences out of balance:\n" + "\n".join(problems)


def test_a_stray_fence_is_named():
    doc = ROOT / "docs" / "fixture.md"  # never written: only the text is read
    text = "# t\n\n```bash\npython scripts/fit.py\n```\n```\n\nprose\n\n```bash\nls\n```\n"
    with mock.patch.object(Path, "read_text", return_value=text):
        problems = fence_problems(doc)
    assert problems == ["docs/fixture.md:6: a fence opens right where the block of line 5 closed: a stray fence?",
                        "docs/fixture.md:12: this code block is never closed"]


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
# (mixer, k) for AMR, ("bvae", beta) for Table 4's beta-VAE, ("bvae_sum", beta) for its anchor (the KL summed).
LABELS = {"none": ("none", 2), "ACAI": ("acai", 2), "mixup": ("mixup", 2), "Bernoulli": ("bernoulli", 2),
          "triplet": ("mixup", 3), "mixup k=3": ("mixup", 3), "Bernoulli k=3": ("bernoulli", 3),
          "beta-VAE 100": ("bvae", 100.0), "beta-VAE 110": ("bvae", 110.0), "beta-VAE 4 summed": ("bvae_sum", 4.0)}
LABEL = "(" + "|".join(map(re.escape, LABELS)) + ")"
NUMBER = r"[+-]?\d+\.\d\d\d?"
MEAN_STD = re.compile(rf"^{LABEL} ({NUMBER})(?: ± ({NUMBER}))?(?: \((\d+)\))?$")
# A headline row's "no mixing" cell: the metric, then the no-mixing row's numbers.
METRIC_CELL = re.compile(rf"^(online|post-hoc|k-NN|FactorVAE) ({NUMBER})(?: ± ({NUMBER}))? \((\d+)\)$")
# Its last column: what the intervals say, mixer by mixer (to no mixing), then "rest open" (or "all open").
VERDICT = re.compile(rf"^{LABEL} (ahead|behind) \(({NUMBER}) to ({NUMBER})\)$")
SOURCE = re.compile(r"\]\((results/[^)#]+\.json)(?:#([^)]*))?\)")
# Metric name -> (key of the gap entries, run key by split, scale, digits).
METRICS = {"online": ("online_probe", lambda split: "test_probe_accuracy" if split == "test" else
                      "best_val_probe_accuracy", 100, 2),
           "post-hoc": ("linear_eval", lambda split: f"linear_eval_{split}_accuracy", 100, 2),
           "k-NN": ("knn", lambda split: f"knn_{split}_accuracy", 100, 2),
           "FactorVAE": ("factorvae", lambda split: "factorvae_score", 1, 3)}
HEADLINE_COLUMNS = ["experiment", "data, recipe", "no mixing", "best mixer", "mixers vs no mixing", "page"]
MAX_CELL_CHARS = 40


def row_key(row):
    """The ``LABELS`` key of a row of a table's JSON (Table 4's rows keep their settings under ``setting``)."""
    setting = row.get("setting", row)
    if setting.get("model") == "bvae":
        return ("bvae_sum" if setting.get("kl_reduction") == "sum" else "bvae", setting["beta_kl"])
    return (setting["mixer"], setting["k"])


def gap_name(rows, a, b):
    """How a table's JSON names the gap of row ``a`` minus row ``b`` (``LABELS`` keys)."""
    if a in rows and b in rows and "row" in rows[a]:
        return f"{rows[a]['row']} minus {rows[b]['row']}"
    return f"{a[0]}-k{a[1]} minus {b[0]}-k{b[1]}"


def headline_table(lines):
    """``(start, header cells, [(line number, cells)])`` of the README's headline table (its header starts
    "| experiment |")."""
    start = next(i for i, line in enumerate(lines) if line.startswith("| experiment |"))
    header = [cell.strip() for cell in lines[start].strip("|").split("|")]
    rows = []
    for i in range(start + 2, len(lines)):
        if not lines[i].startswith("|"):
            break
        rows.append((i + 1, [cell.strip() for cell in lines[i].strip("|").split("|")]))
    return start, header, rows


def shown(cell):
    """A cell as a reader sees it: links by their text."""
    return re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", cell)


def label_of(key):
    return next(label for label, value in LABELS.items() if value == key and label != "triplet")


def metric_values(row, metric):
    """One JSON row's runs on ``metric`` (a ``METRICS`` value): test scores where the runs have a test split."""
    split = "test" if row["runs"][0].get("test_probe_accuracy") is not None else "val"
    _, key_of, scale, _ = metric
    return [scale * run[key_of(split)] for run in row["runs"]]


def stats_text(row, metric):
    """``mean ± std (n)`` of one JSON row on ``metric``, as the headline writes it."""
    values, digits = metric_values(row, metric), metric[3]
    text = f"{statistics.mean(values):.{digits}f}"
    text += f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else ""
    return text + f" ({len(values)})"


PARTIAL = " (others: 1 seed)"


def check_headline_row(header, cells, data, filters):
    """Messages for what one headline row says that ``data`` (a table's JSON) does not: the no-mixing row's numbers,
    which mixer is best and its numbers, and every interval's verdict; and how many statements were checked."""
    def matches(entry):
        return all(str(entry.get(key)) == value for key, value in filters.items())

    if header != HEADLINE_COLUMNS:
        return [f"the headline's columns are {header}, not {HEADLINE_COLUMNS}"], 0
    cell = dict(zip(header, cells))
    rows = {row_key(r): r for r in data["rows"] if matches(r) and r.get("runs")}
    none = ("none", 2)
    found = METRIC_CELL.match(cell["no mixing"])
    if not found:
        return [f"no mixing: {cell['no mixing']!r} is not in the form the test reads ({METRIC_CELL.pattern})"], 0
    name, metric = found.group(1), METRICS[found.group(1)]
    if none not in rows:
        return ["no mixing: the JSON has no finished no-mixing row"], 0
    problems, checked = [], 1
    said = cell["no mixing"].removeprefix(name + " ")
    if said != stats_text(rows[none], metric):
        problems.append(f"no mixing: README says {said!r}, the JSON gives {stats_text(rows[none], metric)!r}")
    # The mixers: every AMR row but no mixing (the beta-VAE is no mixer).
    mixers = {key: row for key, row in rows.items() if key != none and not key[0].startswith("bvae")}
    means = {key: statistics.mean(metric_values(row, metric)) for key, row in mixers.items()}
    best = max(means, key=means.get) if means else None
    found = MEAN_STD.match(cell["best mixer"])
    checked += 1
    if best is None:
        if cell["best mixer"] != "–":
            problems.append(f"best mixer: {cell['best mixer']!r}, but the JSON has no finished mixer row")
    elif not found or not found.group(4):
        problems.append(f"best mixer: {cell['best mixer']!r} is not in the form the test reads ({MEAN_STD.pattern})")
    elif cell["best mixer"] != (expected := f"{label_of(best)} {stats_text(mixers[best], metric)}"):
        problems.append(f"best mixer: README says {cell['best mixer']!r}, the JSON gives {expected!r}")
    verdicts = cell["mixers vs no mixing"]
    if verdicts.startswith("–"):
        if any((g := next((g for g in data.get("gaps", []) if g["rows"] == gap_name(rows, key, none) and matches(g)),
                          None)) and (g.get(metric[0]) or {}).get("ci95") is not None for key in mixers):
            problems.append("mixers vs no mixing: '–', but the JSON has intervals")
        return problems, checked + 1
    # A grid still running may have intervals for some mixers only: "... (others: 1 seed)" says so.
    partial = verdicts.endswith(PARTIAL)
    verdicts = verdicts.removesuffix(PARTIAL)
    *named, rest = [part.strip() for part in verdicts.split(";")]
    if rest not in ("rest open", "all open") or (rest == "all open") != (not named):
        problems.append(f"mixers vs no mixing: {verdicts!r} does not end with 'rest open' (or is 'all open')")
    listed = {}
    for item in named:
        found = VERDICT.match(item)
        if not found:
            problems.append(f"mixers vs no mixing: {item!r} is not in the form the test reads ({VERDICT.pattern})")
            continue
        listed[LABELS[found.group(1)]] = item
    for key in mixers:
        checked += 1
        gap = next((g for g in data.get("gaps", []) if g["rows"] == gap_name(rows, key, none) and matches(g)), None)
        g = gap and gap.get(metric[0])
        if not g or g["ci95"] is None:
            if not partial:
                problems.append(f"mixers vs no mixing: the JSON has no interval for {label_of(key)} minus none")
            continue
        expected = (f"{label_of(key)} {g['verdict']} ({g['ci95'][0]:+.{metric[3]}f} to {g['ci95'][1]:+.{metric[3]}f})"
                    if g["verdict"] != "open" else None)
        if listed.get(key) != expected:
            problems.append(f"mixers vs no mixing: README says {listed.get(key) or 'open'!r} for {label_of(key)}, "
                            f"the JSON gives {expected or 'open'!r}")
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
        problems += [f"README.md:{number}: {shown(c)!r} is longer than {MAX_CELL_CHARS} characters"
                     for c in cells if len(shown(c)) > MAX_CELL_CHARS]
        sources = SOURCE.findall(" ".join(cells))
        if len(sources) != 1:
            problems.append(f"README.md:{number}: a headline row must link exactly one results JSON file")
            continue
        path, selection = sources[0]
        filters = dict(part.split("=", 1) for part in selection.split("&") if part)
        data = json.loads((ROOT / path).read_text())
        row_problems, row_checked = check_headline_row(header, cells, data, filters)
        problems += [f"README.md:{number}: {p}" for p in row_problems]
        checked += row_checked
    assert not problems, "headline numbers that differ from their results JSON:\n" + "\n".join(problems)
    assert checked >= 15


def test_each_headline_row_links_a_page_that_gives_the_command_of_its_json():
    """The command that made a row's JSON (its probe among the flags: Table 1's row is the whitening variant) is on
    the page the row links, so the reader reruns what the row shows."""
    _, header, rows = headline_table((ROOT / "README.md").read_text().splitlines())
    checked = 0
    for number, cells in rows:
        page = re.search(r"\]\((docs/[^)#]+\.md)\)", cells[header.index("page")])
        (path, _), = SOURCE.findall(cells[header.index("page")])
        command = json.loads((ROOT / path).read_text())["command"]
        assert page and command in (ROOT / page.group(1)).read_text(), \
            f"README.md:{number}: {page and page.group(1)} does not give {command!r}"
        checked += 1
    assert checked == len(rows) >= 4


@pytest.mark.parametrize("column, cell, problem", [
    ("no mixing", "post-hoc 94.21 ± 0.30 (6)", "the JSON gives '94.20 ± 0.30 (6)'"),
    ("no mixing", "online 94.20 ± 0.30 (6)", "the JSON gives '94.08 ± 0.41 (6)'"),  # and the rest on that metric
    ("no mixing", "post-hoc about 94.2", "is not in the form the test reads"),
    ("best mixer", "mixup 94.69 ± 0.45 (6)", "the JSON gives 'Bernoulli 94.83 ± 0.32 (3)'"),
    ("best mixer", "Bernoulli 94.83 ± 0.32 (4)", "the JSON gives 'Bernoulli 94.83 ± 0.32 (3)'"),
    ("mixers vs no mixing", "all open", "README says 'open' for mixup, the JSON gives 'mixup ahead (+0.02 to +0.96)'"),
    ("mixers vs no mixing", "mixup ahead (+0.02 to +0.96); Bernoulli ahead (-1.08 to +1.98); rest open",
     "the JSON gives 'open'"),
    ("mixers vs no mixing", "mixup ahead (+0.02 to +0.96)", "does not end with 'rest open'"),
])
def test_an_edited_headline_cell_is_caught(column, cell, problem):
    data = json.loads((ROOT / "results" / "table1_mnist-whiten.json").read_text())
    cells = {"experiment": "Table 1", "data, recipe": "", "no mixing": "post-hoc 94.20 ± 0.30 (6)",
             "best mixer": "Bernoulli 94.83 ± 0.32 (3)", "mixers vs no mixing": "mixup ahead (+0.02 to +0.96); rest open",
             "page": ""}
    assert check_headline_row(HEADLINE_COLUMNS, list(cells.values()), data, {}) == ([], 6)
    problems, _ = check_headline_row(HEADLINE_COLUMNS, list({**cells, column: cell}.values()), data, {})
    assert problems and problem in problems[0], problems


def test_table4_cells_are_read_with_their_metric():
    def run(score, accuracy):
        return {"factorvae_score": score, "linear_eval_test_accuracy": accuracy, "test_probe_accuracy": accuracy}

    data = {"rows": [
        {"row": "none (AE + GAN)", "setting": {"mixer": "none", "k": 2}, "runs": [run(0.70, 0.44), run(0.72, 0.45)]},
        {"row": "mixup", "setting": {"mixer": "mixup", "k": 2}, "runs": [run(0.60, 0.46), run(0.62, 0.47)]},
        {"row": "beta-VAE, beta 100", "setting": {"model": "bvae", "beta_kl": 100.0},
         "runs": [run(0.90, 0.39), run(0.90, 0.40)]}],
        "gaps": [{"rows": "mixup minus none (AE + GAN)",
                  "factorvae": {"mean": -0.10, "ci95": [-0.2, -0.1], "verdict": "behind"}}]}
    cells = ["Table 4", "", "FactorVAE 0.710 ± 0.014 (2)", "mixup 0.610 ± 0.014 (2)",
             "mixup behind (-0.200 to -0.100); rest open", ""]
    # The beta-VAE scores higher but is no mixer.
    assert check_headline_row(HEADLINE_COLUMNS, cells, data, {}) == ([], 3)
    cells[2] = "post-hoc 0.710 ± 0.014 (2)"
    problems, _ = check_headline_row(HEADLINE_COLUMNS, cells, data, {})
    assert problems and "the JSON gives '44.50 ± 0.71 (2)'" in problems[0]
    cells[2], cells[4] = "FactorVAE 0.710 ± 0.014 (2)", "– (rerun)"
    problems, _ = check_headline_row(HEADLINE_COLUMNS, cells, data, {})
    assert problems == ["mixers vs no mixing: '–', but the JSON has intervals"]


def test_the_readme_stays_short():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move details to docs/"


# --------------------------------------------------------------------------- the headline rows' recipes
DATASET_WORDS = {"MNIST": "mnist", "Fashion-MNIST": "fashion_mnist", "KMNIST": "kmnist", "SVHN": "svhn",
                 "CIFAR-10": "cifar10"}
# Headline rows checked for their numbers only, by the start of their first cell (Table 4: being rerun; its
# recipe cell is checked once its entry here goes and DATASET_WORDS names its data).
RECIPE_NOT_CHECKED = ("Table 4",)
RECIPE_PARTS = (
    # (pattern, what it states): each ";"-separated part of a recipe cell must be one of these. A dataset named
    # without N trains on the official training split.
    (re.compile(rf"^({'|'.join(map(re.escape, DATASET_WORDS))})$"), "dataset"),
    (re.compile(rf"^({'|'.join(map(re.escape, DATASET_WORDS))}), N = (\d+(?:,\d{{3}})*)$"), "dataset_size"),
    (re.compile(r"^(\d+(?:,\d{3})*) images, lamb (\d+(?:\.\d+)?)$"), "images_lamb"),
    (re.compile(r"^4x4x(\d+) code, lamb (\d+(?:\.\d+)?)$"), "code_lamb"),
)


def load_ledger():
    return {entry["run"]: entry for entry in map(json.loads, (ROOT / "results" / "finished_runs.jsonl").open())}


def images_per_run(data, rows, ledger):
    """Training images one run of the table sees: steps x batch, or epochs x the training split's size."""
    recipe = data["recipe"]
    if recipe.get("steps_per_epoch"):
        return recipe["epochs"] * recipe["steps_per_epoch"] * recipe["batch_size"]
    num_train = {ledger[run["run"]]["results"]["num_train"] for row in rows for run in row["runs"]}
    assert len(num_train) == 1, f"runs of one table row trained on different training splits: {num_train}"
    return recipe["epochs"] * num_train.pop()


def recipe_problems(cell, data, filters, ledger):
    """Messages for what a headline row's recipe cell states that its JSON does not say."""
    rows = [r for r in data["rows"] if r.get("runs") and all(str(r.get(k)) == v for k, v in filters.items())]
    problems = []
    for part in (p.strip() for p in cell.split(";")):
        found = next(((pattern.match(part), kind) for pattern, kind in RECIPE_PARTS if pattern.match(part)), None)
        if found is None:
            problems.append(f"{part!r} is not in a form the test reads")
            continue
        match, kind = found
        said, true = {}, {}
        if kind.startswith("dataset"):
            said["dataset"], true["dataset"] = DATASET_WORDS[match.group(1)], {r["dataset"] for r in rows}
            said["N"] = None if kind == "dataset" else int(match.group(2).replace(",", ""))
            true["N"] = {r["train_size"] for r in rows}
        else:
            groups = list(match.groups())
            if kind == "code_lamb":
                said["code"], true["code"] = int(groups.pop(0)), {data["recipe"]["code_channels"]}
            else:
                said["images"] = int(groups.pop(0).replace(",", ""))
                true["images"] = {images_per_run(data, rows, ledger)}
            said["lamb"], true["lamb"] = float(groups.pop(0)), {r["lamb"] for r in rows}
        for key, value in said.items():
            if true[key] != {value}:
                problems.append(f"{part!r} says {key} {value}, the JSON's rows: {sorted(true[key], key=str)}")
    return problems


def headline_recipes():
    """``(line, first cell, recipe cell, JSON data, filters)`` of the headline rows whose recipe is checked."""
    lines = (ROOT / "README.md").read_text().splitlines()
    _, header, rows = headline_table(lines)
    column = header.index("data, recipe")
    for number, cells in rows:
        sources = SOURCE.findall(" ".join(cells))
        if cells[0].startswith(RECIPE_NOT_CHECKED) or len(sources) != 1:
            continue
        path, selection = sources[0]
        filters = dict(part.split("=", 1) for part in selection.split("&") if part)
        yield number, cells[0], cells[column], json.loads((ROOT / path).read_text()), filters


def test_the_headline_recipes_are_those_of_the_json_they_cite():
    problems, checked, ledger = [], 0, load_ledger()
    for number, _, cell, data, filters in headline_recipes():
        problems += [f"README.md:{number}: {p}" for p in recipe_problems(cell, data, filters, ledger)]
        checked += 1
    assert not problems, "headline recipes that differ from their JSON:\n" + "\n".join(problems)
    assert checked >= 3


@pytest.mark.parametrize("edit, problem", [
    (("200,000 images", "250,000 images"), "says images 250000, the JSON's rows: [200000]"),
    (("lamb 5", "lamb 10"), "says lamb 10.0, the JSON's rows: [5.0]"),
    (("MNIST;", "MNIST, N = 1,000;"), "says N 1000, the JSON's rows: [None]"),
    (("MNIST;", "Fashion-MNIST;"), "says dataset fashion_mnist, the JSON's rows: ['mnist']"),
    (("lamb 5", "lamb five"), "is not in a form the test reads"),
])
def test_an_edited_headline_recipe_is_caught(edit, problem):
    number, _, cell, data, filters = next(headline_recipes())
    assert recipe_problems(cell, data, filters, load_ledger()) == []
    problems = recipe_problems(cell.replace(*edit), data, filters, load_ledger())
    assert len(problems) == 1 and problem in problems[0], problems


# --------------------------------------------------------------------------- the README's prose
def _results(name):
    return json.loads((ROOT / "results" / name).read_text())


def _gap_entry(data, rows, **filters):
    return next(g for g in data["gaps"] if g["rows"] == rows and all(g.get(k) == v for k, v in filters.items()))


def _row_mean(row, key):
    return statistics.mean(100 * run[key] for run in row["runs"])


def _claim_online_gap(match):
    gap = _gap_entry(_results("table1_mnist-whiten.json"), "mixup-k2 minus none-k2")["online_probe"]
    return f"online {gap['mean']:+.2f}, {gap['ci95'][0]:+.2f} to {gap['ci95'][1]:+.2f})"


def _claim_report(match):
    rows = {(r["mixer"], r["k"]): r for r in _results("table1_mnist-whiten.json")["rows"]}
    return (f"report's {rows['mixup', 2]['report']} (mixup) and {rows['bernoulli', 2]['report']}"
            f"{match.group(3)}(Bernoulli)")


def _claim_settled(match):
    size = int(match.group(1).replace(",", ""))
    data = _results("table2-fashion_mnist.json")
    verdicts = {g["linear_eval"]["verdict"] for g in data["gaps"]
                if g["train_size"] == size and g["rows"].endswith("minus none-k2") and not g["rows"].startswith("acai")}
    verdict = verdicts.pop() if len(verdicts) == 1 else "not settled alike"
    return f"at {size:,} images the mixers are settled {verdict} the baseline post-hoc"


def _claim_table3_range(match):
    means = [_row_mean(r, "linear_eval_test_accuracy") for r in _results("table3.json")["rows"]
             if r["dataset"] == "mnist" and r.get("runs")]
    return f"{min(means):.1f}–{max(means):.1f}% post-hoc on MNIST"


def _claim_precision(match):
    runs = collections.defaultdict(list)
    for run in _results("precision_mnist_sample.json")["runs"]:
        runs[run["precision"]].append(100 * run["linear_eval_test_accuracy"])
    return f"{statistics.mean(runs['float32']) - statistics.mean(runs['mixed_bfloat16']):.2f} points lower post-hoc"


def _claim_report_numbers(match):
    from amr_keras.tables.accuracy import REPORT

    mnist, kmnist, svhn = (REPORT[name] for name in ("mnist", "kmnist", "svhn"))
    return (f"(MNIST mixup {mnist['mixup', 2]},{match.group(1)}Bernoulli {mnist['bernoulli', 2]}; KMNIST "
            f"{kmnist['mixup', 2]} / {kmnist['bernoulli', 2]}; SVHN {svhn['mixup', 2]} / {svhn['bernoulli', 2]};")


N = r"[+-]?\d+(?:\.\d+)?"
# (pattern, the text it must read, computed from the results it cites). The pattern finds the claim; the text
# that the function returns is what it must say.
PROSE_CLAIMS = (
    (re.compile(rf"online {N}, {N} to {N}\)"), _claim_online_gap),
    (re.compile(rf"report's ({N}) \(mixup\) and ({N})(\s+)\(Bernoulli\)"), _claim_report),
    (re.compile(r"at (\d+(?:,\d{3})*) images the mixers are settled \w+ the baseline post-hoc"), _claim_settled),
    (re.compile(rf"{N}–{N}% post-hoc on MNIST"), _claim_table3_range),
    (re.compile(rf"{N} points lower post-hoc"), _claim_precision),
    (re.compile(rf"\(MNIST mixup {N},(\s+)Bernoulli {N}; KMNIST {N} / {N}; SVHN {N} ± {N} / {N} ± {N};"),
     _claim_report_numbers),
)
# Numbers of the README's prose that are no result (pattern: why).
PROSE_NOT_RESULTS = {
    r"(NeurIPS|ICLR) 2019": "the papers' venues",
    r"32-value code|256-value codes": "code sizes of the recipes (4x4x2, 4x4x16)",
    r"Keras 3": "the framework",
    r"Tables? \d( and \d)?\b|paper's Table 1|headline Table 1": "names of the paper's tables",
    r"\(0 to 1\)": "the FactorVAE score's range",
    r"mixup of 3": "the triplet's k",
    r"95% interval|above 0,\s+below 0, or holds 0": "the criterion of a gap",
    r"to 8 epochs": "a run not among the committed results (docs/table1.md says so)",
    r"\d\.\dx–\d\.\dx the PyTorch reference step on a\s+2-core": "speed, from docs/performance.md (bench.py)",
    r"exit \d+ / \d+": "exit statuses",
    r"32, 64 or 128 pixels": "the image sizes --image-size takes",
    r"2-core AMD EPYC \(AVX2, float32\) it took \d+ min \d+ s in all\s+\(\d+ s of training, \d+ epochs\) and ended "
    r"with [\d.]+% \(online probe\) and [\d.]+% \(post-hoc\)": "one timed run of fit.py's default (no results file)",
}
# Prose left unchecked for now: a bullet starting so, and its continuation lines (Table 4: being rewritten).
PROSE_NOT_CHECKED = (re.compile(r"^- \*\*Table 4\*\*"),)
NUMBER_TOKEN = re.compile(r"(?<![\w.])[+-]?\d+(?:,\d{3})*(?:\.\d+)?(?:x(?![\w]))?(?![\w])")


def readme_prose(text):
    """The README's prose as one string (other lines blanked, so offsets keep lines): no code, no tables, no
    inline code or link targets, nor the bullets of ``PROSE_NOT_CHECKED``."""
    lines, skipping = text.splitlines(), False
    prose_lines = {number for number, _ in code_and_prose_of(text)}
    out = []
    for number, line in enumerate(lines, 1):
        if any(pattern.match(line) for pattern in PROSE_NOT_CHECKED):
            skipping = True
        elif skipping and not line.startswith("  "):
            skipping = False
        if number not in prose_lines or skipping or line.startswith("|"):
            out.append("")
            continue
        line = re.sub(r"`[^`]*`", lambda m: " " * len(m.group(0)), line)
        out.append(re.sub(r"\]\([^)]*\)", lambda m: " " * len(m.group(0)), line))
    return "\n".join(out)


def code_and_prose_of(text):
    with mock.patch.object(Path, "read_text", return_value=text):
        return code_and_prose(ROOT / "README.md")[1]


def prose_problems(text):
    """Messages for each claim of the README's prose that its results contradict, and each number that no claim
    checks and ``PROSE_NOT_RESULTS`` does not declare; and how many claims were checked."""
    prose = readme_prose(text)
    covered, problems, checked = [], [], 0
    for pattern, expected_of in PROSE_CLAIMS:
        for match in pattern.finditer(prose):
            covered.append(match.span())
            checked += 1
            expected = expected_of(match)
            if match.group(0) != expected:
                problems.append(f"README.md:{prose.count(chr(10), 0, match.start()) + 1}: says {match.group(0)!r}, "
                                f"the results give {expected!r}")
    for pattern in PROSE_NOT_RESULTS:
        covered += [m.span() for m in re.finditer(pattern, prose)]
    for token in NUMBER_TOKEN.finditer(prose):
        if not any(start <= token.start() and token.end() <= end for start, end in covered):
            problems.append(f"README.md:{prose.count(chr(10), 0, token.start()) + 1}: {token.group(0)!r} is checked "
                            "by no claim (PROSE_CLAIMS) and declared no result nowhere (PROSE_NOT_RESULTS)")
    return problems, checked


def test_the_readme_prose_numbers_are_those_of_the_results():
    problems, checked = prose_problems((ROOT / "README.md").read_text())
    assert not problems, "README prose numbers that differ from their results:\n" + "\n".join(problems)
    assert checked == len(PROSE_CLAIMS)


@pytest.mark.parametrize("edit", [("online +0.54", "online +0.55"), ("97.5–98.0%", "97.5–98.1%"),
                                  ("at 20,000 images", "at 5,000 images"), ("KMNIST 67.92", "KMNIST 67.29"),
                                  ("0.18 points", "0.81 points"), ("six\n  paired seeds", "six\n  paired 6 seeds")])
def test_an_edited_readme_prose_number_is_caught(edit):
    text = (ROOT / "README.md").read_text()
    assert edit[0] in text
    problems, _ = prose_problems(text.replace(*edit))
    assert len(problems) == 1, problems


# --------------------------------------------------------------------------- the result tables of docs/
# Docs whose result tables are checked (docs/table4.md: being rewritten; add it here to check it).
RESULT_DOCS = ("docs/table1.md", "docs/table2.md", "docs/table3.md")
# Tables of RESULT_DOCS whose numbers come from no results JSON, by their header's first two cells: why.
NOT_FROM_JSON = {
    ("trial", "lamb"): "KerasTuner trials (results/search_mnist_full_e1_trials.md, no JSON)",
    ("run", "online probe"): "single fit.py runs, the pretrained exports among them",
}
# Rows of checked tables that are no committed run, by the start of their label: why.
ROWS_NOT_FROM_JSON = {
    "lamb annealed": "a source edit, not committed",
    "the autoencoder's Adam with beta_1 0.9": "a source edit, not committed",
}
# Results JSON a table draws on besides those its section names, by its header's first two cells.
MORE_SOURCES = {
    ("row", "lamb 10: online (test)"): ("table1_mnist.json",),
    ("mixup, whitening probe", "post-hoc linear, val (test)"): ("table1_mnist-whiten.json",),
}
# Columns whose numbers are settings, not results.
SETTING_COLUMNS = {"seeds", "N", "k", "lamb", "dataset", "mixer", "CPU"}
RESULTS_FILE = re.compile(r"results/([\w.\-]+)\.(?:md|json)")
METRIC_KEYS = ("test_probe_accuracy", "best_val_probe_accuracy", "linear_eval_val_accuracy",
               "linear_eval_test_accuracy", "knn_val_accuracy", "knn_test_accuracy")


def markdown_tables(text):
    """``(header line, header cells, [(line, cells)], section text up to the table's end)`` of each table."""
    lines = text.splitlines()
    section_start, tables, i = 0, [], 0
    while i < len(lines):
        if lines[i].startswith("#"):
            section_start = i
        if lines[i].startswith("|") and i + 1 < len(lines) and re.match(r"^\|[-| ]+\|$", lines[i + 1]):
            header = [cell.strip() for cell in lines[i].strip("|").split("|")]
            j, rows = i + 2, []
            while j < len(lines) and lines[j].startswith("|"):
                rows.append((j + 1, [cell.strip().replace("**", "") for cell in lines[j].strip("|").split("|")]))
                j += 1
            tables.append((i + 1, header, rows, "\n".join(lines[section_start:j])))
            i = j
            continue
        i += 1
    return tables


def result_rows(data):
    """Every table row (a dict with ``runs``) and every gap of a results JSON, wherever it sits."""
    rows, found_gaps = [], []
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if isinstance(item.get("runs"), list) and item["runs"] and isinstance(item["runs"][0], dict):
                rows.append(item)
            if isinstance(item.get("rows"), str) and " minus " in item["rows"]:
                found_gaps.append(item)
            stack += list(item.values())
        elif isinstance(item, list):
            stack += item
    return rows, found_gaps


def value_pool(names):
    """Every number the results JSON files ``names`` give, as the tables write them."""
    pool = set()

    def add_stats(values, scale=100, digits=2):
        # As amr_keras.tables.format_percent computes them: the mean and std of the fractions, then scaled.
        values = [v for v in values if v is not None]
        if values:
            pool.add(f"{scale * statistics.mean(values):.{digits}f}")
            if len(values) > 1:
                pool.add(f"{scale * statistics.stdev(values):.{digits}f}")
                pool.add(f"{scale * statistics.mean(values):.{digits}f} ± {scale * statistics.stdev(values):.{digits}f}")

    for name in names:
        rows, found_gaps = result_rows(_results(name))
        for row in rows:
            runs = row["runs"]
            for key in METRIC_KEYS:
                values = [run[key] for run in runs if run.get(key) is not None]
                add_stats(values)
                pool.update(f"{100 * v:.2f}" for v in values)
            if runs[0].get("factorvae_score") is not None:
                add_stats([run["factorvae_score"] for run in runs], 1, 3)
            minutes = [run["train_seconds"] / 60 for run in runs if run.get("train_seconds")]
            pool.update(f"{m:.{d}f}" for m in minutes for d in (0, 1))
            if minutes:
                pool.update(f"{statistics.mean(minutes):.{d}f}" for d in (0, 1))
            pool.update(f"{run['images_per_second']:.0f}" for run in runs if run.get("images_per_second"))
            pool.update(re.findall(r"\d+\.\d+", str(row.get("report", ""))))
            pool.add(str(len(runs)))
        for gap in found_gaps:
            pool.add(str(len(gap.get("seeds", []))))
            for entry in gap.values():
                if isinstance(entry, dict) and "mean" in entry and entry["mean"] is not None:
                    pool.add(f"{entry['mean']:+.2f}")
                    pool.update(f"{v:+.2f}" for v in entry.get("per_seed", []))
                    pool.update(f"{v:+.2f}" for v in entry.get("ci95") or [])
                    if entry.get("std") is not None:
                        pool.add(f"{entry['std']:.2f}")
                    if entry.get("ci95"):
                        interval = f"({entry['ci95'][0]:+.2f} to {entry['ci95'][1]:+.2f}): {entry['verdict']}"
                        pool.add(f"{entry['mean']:+.2f} {interval}")
                        pool.add(f"{entry['mean']:+.2f} ± {entry['std']:.2f} {interval}")
    return pool


# Cells that state several numbers of one row or gap together: the whole must be one of the JSON's.
COMPOSITES = (re.compile(r"[+-]\d+\.\d\d(?: ± \d+\.\d\d)? \([+-]\d+\.\d\d to [+-]\d+\.\d\d\): \w+"),
              re.compile(r"(?<![\d.])\d+\.\d+ ± \d+\.\d+"))


def table_problems(path, text=None):
    """Messages for each number of a result table of ``path`` (or of ``text`` read as that file) that its results
    JSON does not give, and the number of numbers checked."""
    problems, checked = [], 0
    for line, header, rows, section in markdown_tables(path.read_text() if text is None else text):
        key = tuple(header[:2])
        if key in NOT_FROM_JSON:
            continue
        names = [f"{m}.json" for m in RESULTS_FILE.findall(section) if (ROOT / "results" / f"{m}.json").exists()]
        names = sorted(set(names) | set(MORE_SOURCES.get(key, ())))
        if not names:
            problems.append(f"{rel(path)}:{line}: a table that cites no results JSON (declare it in NOT_FROM_JSON)")
            continue
        pool = value_pool(names)
        for number, cells in rows:
            if cells[0].startswith(tuple(ROWS_NOT_FROM_JSON)):
                continue
            for column, cell in zip(header[1:], cells[1:]):
                if column in SETTING_COLUMNS:
                    continue
                spans = []
                for pattern in COMPOSITES:
                    for match in pattern.finditer(cell):
                        if any(start <= match.start() < end for start, end in spans):
                            continue
                        spans.append(match.span())
                        checked += 1
                        if match.group(0) not in pool:
                            problems.append(f"{rel(path)}:{number}: {column}: {match.group(0)!r} is in none of "
                                            f"{', '.join(names)}")
                for token in NUMBER_TOKEN.finditer(cell):
                    if any(start <= token.start() < end for start, end in spans):
                        continue
                    checked += 1
                    value = token.group(0).replace(",", "")
                    if value not in pool and value.lstrip("+") not in pool:
                        problems.append(f"{rel(path)}:{number}: {column}: {token.group(0)} is in none of "
                                        f"{', '.join(names)}")
    return problems, checked


def test_the_result_tables_of_the_docs_are_those_of_the_json_they_cite():
    problems, checked = [], 0
    for doc in RESULT_DOCS:
        doc_problems, doc_checked = table_problems(ROOT / doc)
        problems += doc_problems
        checked += doc_checked
        assert doc_checked, f"{doc}: no number of a result table was checked"
    assert not problems, "numbers of result tables that their JSON does not give:\n" + "\n".join(problems)
    assert checked >= 400


def test_an_edited_table_number_is_caught():
    path = ROOT / "docs" / "table1.md"
    text = path.read_text()
    for old, new, token in (("| 94.08 ± 0.41 |", "| 94.09 ± 0.41 |", "94.09"),
                            ("(+0.06 to +1.03)", "(+0.06 to +1.04)", "'+0.54 ± 0.46 (+0.06 to +1.04): ahead'"), ("| 16.4 |", "| 61.4 |", "61.4")):
        assert old in text
        problems, _ = table_problems(path, text.replace(old, new, 1))
        assert len(problems) == 1 and token in problems[0], problems


# --------------------------------------------------------------------------- the ledger rebuilds every table
# Table JSON files of results/ that the ledger cannot rebuild: why. table1.json: the earlier grid, whose runs the
# ledger does not record; table4.json: Table 4 is being rewritten (remove its entry to check it).
NOT_REBUILT = {"table1.json": "its runs are not in finished_runs.jsonl (results/README.md)",
               "table4.json": "being rewritten"}


def table_files():
    """Every results JSON file that holds a table (rows of runs)."""
    for path in sorted((ROOT / "results").glob("*.json")):
        data = json.loads(path.read_text())
        if isinstance(data, dict) and ("rows" in data or "parts" in data):
            yield path, data


def rebuild(data, out, work):
    """Run the table's command with ``--table-only``, writing into ``out`` from the ledger there."""
    import amr_keras.plots

    args = shlex.split(data["command"])[2:]
    for i, arg in enumerate(args[:-1]):
        if arg == "--data-dir":  # a folder on the machine that trained: any folder will do
            name = args[i + 1].partition("=")[0]
            (work / name).mkdir(exist_ok=True)
            args[i + 1] = f"{name}={work / name}"
    with mock.patch.object(amr_keras.plots, "accuracy_vs_train_size", lambda records, png, title: None), \
            contextlib.redirect_stdout(io.StringIO()):
        code = script_module("reproduce").main([*args, "--table-only", "--out", str(out), "--runs", str(work / "runs")])
    assert code == 0, f"{data['command']} --table-only: exit status {code}"


def table_differences(path, data, rebuilt_data, rebuilt_md):
    """What differs between a committed table (JSON and Markdown) and its rebuild, beyond the command line (it
    names the folders) and the status of rows without runs (the ledger cannot know why a dataset was absent)."""
    def normal(table):
        table = {key: value for key, value in table.items() if key != "command"}
        table["rows"] = [{k: v for k, v in row.items() if k != "status" or row.get("runs")} for row in table["rows"]]
        return table

    def normal_md(text):
        text = re.sub(r"^Command: .*$", "Command:", text, flags=re.M)
        return re.sub(r"\| 0 of (\d+) \| [^|]* \|", r"| 0 of \1 | |", text)

    differences = []
    old, new = normal(data), normal(rebuilt_data)
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            differences.append(f"{path.name}: {key} differs from the rebuild")
    md = path.with_suffix(".md")
    if md.exists() and normal_md(md.read_text()) != normal_md(rebuilt_md):
        old_lines, new_lines = normal_md(md.read_text()).splitlines(), normal_md(rebuilt_md).splitlines()
        line = next((i for i, (a, b) in enumerate(zip(old_lines, new_lines), 1) if a != b), len(old_lines))
        differences.append(f"{md.name}:{line} differs from the rebuild")
    return differences


def rebuild_problems(files, ledger, tmp):
    problems, rebuilt_names = [], []
    out, work = tmp / "out", tmp / "work"
    for path, data in files:
        if path.name in NOT_REBUILT:
            continue
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        work.mkdir(exist_ok=True)
        shutil.copy(ledger, out / "finished_runs.jsonl")
        rebuild(data, out, work)
        new = out / path.name
        if not new.exists():
            problems.append(f"{path.name}: its command writes {sorted(p.name for p in out.glob('*.json'))}")
            continue
        problems += table_differences(path, data, json.loads(new.read_text()), new.with_suffix(".md").read_text())
        rebuilt_names.append(path.name)
    return problems, rebuilt_names


def test_every_table_file_is_what_the_ledger_rebuilds(tmp_path):
    files = list(table_files())
    assert set(NOT_REBUILT) <= {path.name for path, _ in files}, "NOT_REBUILT names a file that is gone"
    problems, names = rebuild_problems(files, ROOT / "results" / "finished_runs.jsonl", tmp_path)
    assert not problems, "results tables that the ledger does not rebuild:\n" + "\n".join(problems)
    assert len(names) == len(files) - len(NOT_REBUILT) >= 14


def test_an_edited_table_file_or_ledger_is_caught(tmp_path):
    path = ROOT / "results" / "table1_mnist-whiten.json"
    data = json.loads(path.read_text())
    data["rows"][0]["runs"][0]["test_probe_accuracy"] += 0.0001
    problems, _ = rebuild_problems([(path, data)], ROOT / "results" / "finished_runs.jsonl", tmp_path / "a")
    assert problems == ["table1_mnist-whiten.json: rows differs from the rebuild"]
    # The ledger's record of that run (its last line) with another score.
    lines = (ROOT / "results" / "finished_runs.jsonl").read_text().splitlines(keepends=True)
    last = max(i for i, line in enumerate(lines) if json.loads(line)["run"] == data["rows"][0]["runs"][0]["run"])
    entry = json.loads(lines[last])
    entry["results"]["linear_eval_test_accuracy"] += 0.01
    lines[last] = json.dumps(entry, ensure_ascii=False) + "\n"
    ledger = tmp_path / "finished_runs.jsonl"
    ledger.write_text("".join(lines))
    problems, _ = rebuild_problems([(path, json.loads(path.read_text()))], ledger, tmp_path / "b")
    assert "table1_mnist-whiten.json: rows differs from the rebuild" in problems
    assert any(problem.startswith("table1_mnist-whiten.md:") for problem in problems)
