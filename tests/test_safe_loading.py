"""Loading stays in Keras safe mode: no code in the package or scripts turns on unsafe deserialisation."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
UNSAFE = {
    "safe_mode=False": re.compile(r"safe_mode\s*=\s*False"),
    "unsafe deserialization": re.compile(r"enable_unsafe_deserialization"),
    "allow_pickle=True": re.compile(r"allow_pickle\s*=\s*True"),
    "pickle-like module": re.compile(r"^\s*(import|from)\s+(c?pickle|_pickle|dill|cloudpickle|joblib|marshal|shelve)\b",
                                     re.MULTILINE),
    "pickle call": re.compile(r"\b(c?pickle|dill|cloudpickle|joblib|marshal)\.loads?\("),
}


def sources():
    files = sorted((ROOT / "amr_keras").rglob("*.py")) + sorted((ROOT / "scripts").glob("*.py"))
    assert len(files) > 5
    return files


@pytest.mark.parametrize("line", [
    "keras.saving.load_model(p, safe_mode=False)",
    "keras.config.enable_unsafe_deserialization()",
    "np.load(p, allow_pickle = True)",
    "import pickle",
    "from cloudpickle import loads",
    "obj = pickle.load(f)",
])
def test_patterns_catch_unsafe_loading(line):
    assert any(p.search(line) for p in UNSAFE.values())


# Reviewed exceptions: CIFAR-10's official files are pickles, read by a pickle.Unpickler subclass whose find_class
# admits numpy's array reconstruction only (tests/test_data.py feeds it a pickle that would run os.system).
ALLOWED = {"amr_keras/readers.py": {"pickle-like module"}}
RESTRICTED_UNPICKLER = re.compile(r"class \w+\(pickle\.Unpickler\):(?:\n    .*|\n)*?\n    def find_class\(")


def test_no_unsafe_loading_in_package_or_scripts():
    hits = [f"{path.relative_to(ROOT)}: {name}" for path in sources() for name, pattern in UNSAFE.items()
            if pattern.search(path.read_text()) and name not in ALLOWED.get(str(path.relative_to(ROOT)), ())]
    assert not hits, "unsafe loading found (keep keras safe mode, allow_pickle=False): " + "; ".join(hits)


def test_the_allowed_pickle_reader_is_a_restricted_unpickler():
    text = (ROOT / "amr_keras" / "readers.py").read_text()
    assert RESTRICTED_UNPICKLER.search(text), "readers.py imports pickle but defines no Unpickler with its own find_class"
    # Every unpickling goes through that class: no pickle.load / pickle.loads / plain pickle.Unpickler(...) call.
    assert not re.search(r"pickle\.(loads?|Unpickler)\(", text.replace("(pickle.Unpickler):", ""))
