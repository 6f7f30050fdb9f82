"""The ledger of finished runs: ``OUT/finished_runs.jsonl``, one JSON line per run (settings and scores).

Run folders are large and stay out of version control, so every finished run is also recorded in the tables'
folder. A run recorded there with a table's settings counts as finished where its folder is gone (a fresh clone,
another machine): a grid continues where it stopped, and its tables keep every run.
"""

import dataclasses
import json
import os

from amr_keras.config import RUN_KEYS, Config, ConfigError, upgrade_run_settings
from amr_keras.metrics import result_keys
from amr_keras.runfolder import append_line

# Fields of results.json kept for each run in a table's JSON.
RUN_RECORD_KEYS = ("seed", "epochs", "best_epoch", "best_val_probe_accuracy", "test_probe_accuracy",
                   "linear_eval_val_accuracy", "linear_eval_test_accuracy", "knn_val_accuracy", "knn_test_accuracy",
                   "train_seconds", "images_per_second", "precision", "cpu_model")

# The record of finished runs in a tables' folder, and the results.json fields it keeps per run (besides these,
# every registered metric's keys: ledger_result_keys()).
LEDGER_NAME = "finished_runs.jsonl"
LEDGER_RESULT_KEYS = RUN_RECORD_KEYS + ("dataset", "mixer", "k", "lamb", "train_size", "code_channels", "num_train",
                                        "num_val", "num_test", "compute_dtype", "linear_eval_l2",
                                        "linear_eval_converged", "command")
# Settings a recorded run is checked against: those of RUN_KEYS that do not name a place on one machine.
LEDGER_SETTING_KEYS = tuple(key for key in RUN_KEYS if key != "data_dir")


def ledger_result_keys():
    """The ``results.json`` fields a ledger line keeps: ``LEDGER_RESULT_KEYS`` and every registered metric's
    (``amr_keras.metrics.result_keys``), each once."""
    return tuple(dict.fromkeys(LEDGER_RESULT_KEYS + result_keys()))


def load_ledger(out_dir):
    """The finished runs recorded in ``OUT/finished_runs.jsonl``: ``{run name: entry}``, the last line of a
    name winning; ``{}`` without the file. A record that a run of other settings superseded under the same name
    stays reachable by its settings (``find_recorded``) under the key ``NAME@lineN``, so the tables made from it
    can still be rebuilt.

    An entry is ``{"run": NAME, "settings": {...}, "results": {...}}`` (``ledger_entry``).

    Raises:
        ConfigError: a line that is not a JSON object with those three fields (it names the line).
    """
    path = os.path.join(out_dir, LEDGER_NAME)
    if not os.path.exists(path):
        return {}
    entries, line_of = {}, {}
    with open(path) as f:
        lines = f.readlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            if number == len(lines) and not line.endswith("\n"):
                break  # torn by a kill while it was appended: the run is recorded again when it is next seen
            raise ConfigError(f"{path}, line {number}, is not valid JSON ({e.msg}). Mend or delete that line "
                              "(the run it recorded is then trained again).") from None
        if not isinstance(entry, dict) or not {"run", "settings", "results"} <= set(entry):
            raise ConfigError(f"{path}, line {number}, is not a finished-run record "
                              "(a JSON object with run, settings and results). Mend or delete that line.")
        previous = entries.get(entry["run"])
        if previous is not None and previous["settings"] != entry["settings"]:
            entries[f"{entry['run']}@line{line_of[entry['run']]}"] = previous
        entries[entry["run"]], line_of[entry["run"]] = entry, number
    return entries


def ledger_entry(name, settings, results):
    """The record of one finished run: its folder name, its settings (``LEDGER_SETTING_KEYS`` of its
    ``config.json``) and the fields of its ``results.json`` that tables use (``ledger_result_keys()``)."""
    return {"run": name, "settings": {key: settings.get(key) for key in LEDGER_SETTING_KEYS},
            "results": {key: results[key] for key in ledger_result_keys() if key in results}}


def same_record(recorded, entry):
    """Whether ``recorded`` (a ledger line, or None) records ``entry``: the same results and settings, the line's
    settings read in today's terms (``upgrade_run_settings``: a run recorded before the probe was a setting had
    the batch-normalised one), and a setting added since counting as the same when ``entry`` has its default (or
    none) for it."""
    if recorded is None or recorded["run"] != entry["run"] or recorded["results"] != entry["results"]:
        return False
    old, new = upgrade_run_settings(dict(recorded["settings"])), entry["settings"]
    for key, value in new.items():
        if key in old:
            if old[key] != value:
                return False
        elif value not in (None, getattr(Config, key, None)):
            return False
    return True


def record_finished(runs, out_dir):
    """Append to ``OUT/finished_runs.jsonl`` every run of ``runs`` finished on disk and not recorded as it is.

    Returns:
        The names of the runs appended.
    """
    ledger = load_ledger(out_dir)
    lines, names = [], []
    for run in runs:
        path = os.path.join(run.folder, "results.json")
        if not os.path.exists(path):
            continue
        config_path = os.path.join(run.folder, "config.json")
        if os.path.exists(config_path):
            with open(config_path) as f:
                settings = json.load(f)
        else:
            settings = dataclasses.asdict(run.cfg)
        entry = ledger_entry(run.name, settings, run.results())
        if not same_record(ledger.get(run.name), entry):
            lines.append(json.dumps(entry, ensure_ascii=False) + "\n")
            names.append(run.name)
    if lines:
        os.makedirs(out_dir, exist_ok=True)
        append_line(os.path.join(out_dir, LEDGER_NAME), "".join(lines))
    return names
