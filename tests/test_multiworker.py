"""Two MultiWorkerMirroredStrategy workers on localhost (scripts/multiworker_demo.py): only the chief writes.

Slow (two TensorFlow processes exchanging gradients over gRPC): run with ``pytest -m slow``.
"""

import json
import os

import pytest

from test_data import write_mnist_folder
from test_fit import load_script


@pytest.mark.slow
def test_two_workers_train_and_only_the_chief_writes(tmp_path):
    data = write_mnist_folder(str(tmp_path / "mnist"), n_train=96, n_test=32)
    out = str(tmp_path / "run")
    args = ["--dataset", "mnist", "--data-dir", data, "--depth", "4", "--batch-size", "16", "--epochs", "1",
            "--no-linear-eval", "--verbose", "0"]
    codes = load_script("multiworker_demo").launch(out, args, workers=2, timeout=900)
    assert codes == [0, 0]
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    assert results["replicas"] == 2 and results["epochs"] == 1
    for name in ("log.csv", "best.keras", "checkpoint/last.keras", "export/saved_model.pb"):
        assert os.path.exists(os.path.join(out, name)), name
    # The other worker wrote into out/.worker-1 and removed it when it finished.
    assert not [name for name in os.listdir(out) if name.startswith(".worker")]


def test_tf_config_names_every_worker_and_this_task():
    demo = load_script("multiworker_demo")
    ports = demo.free_ports(2)
    assert len(set(ports)) == 2
    config = json.loads(demo.tf_config(ports, 1))
    assert config == {"cluster": {"worker": [f"localhost:{p}" for p in ports]}, "task": {"type": "worker", "index": 1}}


class FakeWorker:
    """The parts of a MultiWorkerMirroredStrategy that ``worker_folder`` reads."""

    def __init__(self, chief, task_id):
        self.extended = type("Extended", (), {"should_checkpoint": chief})()
        self.cluster_resolver = type("Resolver", (), {"task_id": task_id})()


def test_worker_folder_is_private_and_starts_from_the_chiefs_checkpoint_on_resume(tmp_path):
    from amr_keras.runfolder import FolderLock
    from amr_keras.train import prepare_worker_folder, worker_folder

    out = tmp_path / "run"
    (out / "checkpoint").mkdir(parents=True)
    for name in ("config.json", "log.csv", "best.keras", "checkpoint/last.keras", "results.json"):
        (out / name).write_text(name)
    assert worker_folder(FakeWorker(True, 0), str(out)) == str(out)
    (out / ".worker-2").mkdir()
    (out / ".worker-2" / "stale").write_text("from an earlier run")
    folder = worker_folder(FakeWorker(False, 2), str(out))
    assert folder == str(out / ".worker-2")
    with FolderLock(folder):  # each worker owns its folder; emptying it keeps the lock file
        prepare_worker_folder(folder, str(out), resume=False)
        assert os.listdir(folder) == [".lock"]
        prepare_worker_folder(folder, str(out), resume=True)
    assert sorted(os.listdir(folder)) == [".lock", "best.keras", "checkpoint", "config.json", "log.csv"]
    assert open(os.path.join(folder, "checkpoint", "last.keras")).read() == "checkpoint/last.keras"
