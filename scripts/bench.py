"""Train-step throughput of AMR on synthetic data: images/second, one JSON line per setting.

Each setting builds the reference networks, runs warm-up steps (tracing and
compilation), then ``--repeats`` timed blocks of ``--steps`` steps through
``model.make_train_function()`` (what ``model.fit`` runs) and reports the
median images/second and its peak resident memory, and the time a mid-epoch checkpoint takes
(``checkpoint_seconds``: the model and its optimizer states written whole, median of 3, and its size).
Each setting runs in a fresh Python process (``peak_rss_scope: "setting"``), so its peak memory and its
oneDNN caches are its own; ``--same-process`` times them all in one process,
where the peak is the process's so far (``peak_rss_scope: "process"``).

With ``--torch-ref`` and torch installed (``pip install -e ".[torch]"``), the same settings run through
``benchmarks/torch_ref.py``, the AMR step of the official code's 32x32 setting written in PyTorch (or through
``--torch-ref PATH``, any script that takes its flags and prints one JSON line with ``images_per_second``), in
the same invocation, and the ratio is printed.

Examples:
    python scripts/bench.py                                  # batch 64 and 256, XLA off/on, G every 1 and 5
    python scripts/bench.py --batch-sizes 64 --jit off --update-g-every 5 --torch-ref
    python scripts/bench.py --batch-sizes 64 --jit on --update-g-every 1 --profile runs/profile   # + op profile
    python scripts/bench.py --batch-sizes 16 --jit off --update-g-every 1 --probe whiten batchnorm   # probe cost
    python scripts/bench.py --arch burgess --batch-sizes 64 --jit off --update-g-every 1   # the 64x64 dSprites step
    python scripts/bench.py --arch burgess --model bvae --batch-sizes 64 --jit off --update-g-every 1  # beta-VAE
    python scripts/bench.py --image-size 64 --channels 3 --batch-sizes 64 --jit off --update-g-every 1 \
        --image-folder DIR                        # the 64x64 RGB step of an image folder, and its input pipeline

``--arch burgess`` times the Table 4 step: the 64x64 networks of Burgess et al. (``--depth`` filters, 32 by
default), a flat 10-value code, the reconstruction summed over pixels (bce) and lamb 1 on 64x64x1 images;
``--model bvae`` the beta-VAE baseline on them (no discriminator: ``--mixer`` and ``--update-g-every`` do not
apply to it).

TensorFlow's oneDNN CPU kernels are on (``amr_keras`` turns them on); run with
``TF_ENABLE_ONEDNN_OPTS=0`` to measure without them (the ``onednn`` field says which).

With ``--profile DIR`` each setting is also traced with the TensorFlow
profiler (``tensorboard --logdir DIR``, Profile tab with
tensorboard-plugin-profile) and a summary is printed as JSON: the share of
the profiled time in each kind of op (convolution backprop, XLA clusters,
input pipeline, ...). ``traces_during_timing`` counts step functions traced
after warm-up (0: no retracing).
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# The PyTorch reference step (--torch-ref without a path).
TORCH_REF = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "torch_ref.py")


def _busy():
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return None
    return sum(fields[:8]) - fields[3] - fields[4], os.sysconf("SC_CLK_TCK")


def summarize_profile(logdir, top=12, wall_seconds=None):
    """Where the time of the newest profile under ``logdir`` goes: op types, networks, input pipeline.

    Kernel times are summed over TensorFlow's compute threads (so shares are of
    kernel time, not wall time); the input-pipeline share is the time the step
    waited in ``IteratorGetNext`` over the wall time of the profiled steps: the
    steps' own events where the trace has them (Python tracing), else
    ``wall_seconds`` as measured around them.
    """
    import glob

    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    files = sorted(glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb")), key=os.path.getmtime)
    if not files:
        return {"error": f"no profile under {logdir}"}
    space = xplane_pb2.XSpace()
    with open(files[-1], "rb") as f:
        space.ParseFromString(f.read())
    ops, parts = {}, {}
    steps_ps = wait_ps = 0
    for plane in space.planes:
        for line in plane.lines:
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if line.name == "python" and name == "multi_step_on_iterator":
                    steps_ps += event.duration_ps
                elif line.name.startswith("tf_data_iterator_get_next") and name == "IteratorGetNextOp::DoCompute":
                    wait_ps += event.duration_ps
                elif line.name.startswith("tf_Compute") and ":" in name and "::" not in name:
                    path, kind = name.rsplit(":", 1)
                    ops[kind] = ops.get(kind, 0) + event.duration_ps
                    names = [p for p in path.split("/") if p and not p.startswith("StatefulPartitionedCall")]
                    grad = "gradient_tape" in names
                    names = [p for p in names if p != "gradient_tape"]
                    net = names[0].rsplit("_", 1)[0] if names and names[0][-1:].isdigit() else (names or ["?"])[0]
                    key = f"{net} ({'backward' if grad else 'forward'})"
                    parts[key] = parts.get(key, 0) + event.duration_ps
    whole = sum(ops.values()) or 1
    if not steps_ps and wall_seconds:
        steps_ps = int(wall_seconds * 1e12)

    def ranked(d, n):
        return [{"name": k, "ms": round(v / 1e9, 1), "share": round(v / whole, 3)}
                for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:n]]

    return {
        "profile": files[-1],
        "kernel_ms": round(whole / 1e9, 1),
        "top_ops": ranked(ops, top),
        "by_network": ranked(parts, top),
        "input_wait_share_of_step_time": round(wait_ps / steps_ps, 4) if steps_ps else None,
        "step_time_from": "trace" if steps_ps else "wall clock",
    }


def bench_pipeline(folder, image_size, channels, batch_size, cache, batches=40, repeats=3):
    """Images/second of the training input pipeline of ``--dataset images`` alone (``cache=False``: every image
    read and decoded from its file as the batches are made; True: gathered from the decoded images in memory)."""
    import amr_keras  # noqa: F401  (before tensorflow, as in bench_keras)
    from amr_keras.data import load_dataset, train_pipeline
    from amr_keras.precision import cpu_info

    t0 = time.perf_counter()
    splits = load_dataset("images", data_dir=folder, batch_size=batch_size, image_size=image_size,
                          channels=channels, cache=cache)
    load_s = time.perf_counter() - t0
    iterator = iter(train_pipeline(*splits.arrays["train"], batch_size, seed=0))
    for _ in range(3):  # warm-up: the pipeline's threads and its first read-ahead
        next(iterator)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(batches):
            x, _ = next(iterator)
        float(x[0, 0, 0, 0])
        rates.append(batches * batch_size / (time.perf_counter() - t0))
    return {"impl": "input_pipeline", "images_per_second": round(statistics.median(rates), 1),
            "images_per_second_repeats": [round(r, 1) for r in rates], "cache": cache, "batch_size": batch_size,
            "image_size": image_size, "channels": channels, "num_train": splits.info.num_train,
            "load_seconds": round(load_s, 1), "cpu": cpu_info()["model"], "cpu_flags": cpu_info()["flags"],
            "cpu_count": os.cpu_count()}


def bench_keras(batch_size, jit, update_g_every, steps, warmup, repeats, depth, mixer, precision="auto",
                profile=None, probe="whiten", arch="acai", model="amr", deterministic=False, image_size=None,
                colors=1):
    import amr_keras  # before tensorflow: it turns on the oneDNN CPU kernels unless TF_ENABLE_ONEDNN_OPTS is set
    import keras
    import tensorflow as tf

    from amr_keras.bvae import BVAE
    from amr_keras.model import AMR
    from amr_keras.networks import BURGESS_SIZE, IMAGE_SIZE, build_arch, build_burgess_decoder, build_burgess_encoder
    from amr_keras.precision import compute_dtype, cpu_info, isa_caps, precision_scope, resolve_precision

    if deterministic:  # what fit.py --deterministic turns on
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(0)
    precision = resolve_precision(precision)
    burgess = arch == "burgess"
    with precision_scope(precision):
        if model == "bvae":
            model = BVAE(build_burgess_encoder(1, depth, heads=2), build_burgess_decoder(1, depth), beta_kl=100.0,
                         probe=probe)
        else:
            # The dSprites recipe on the burgess networks: lamb 1, bce summed over pixels (the dsprites preset).
            recipe = dict(lamb=1.0, recon="bce") if burgess else {}
            model = AMR(*build_arch(arch, colors=colors, depth=depth, image_size=image_size), mixer=mixer,
                        update_g_every=update_g_every, probe=probe, **recipe)
        model.compile(jit_compile=jit)
    size = image_size or (BURGESS_SIZE if burgess else IMAGE_SIZE)
    # A few fixed batches, cycled, so that data creation is not timed.
    rng = tf.random.Generator.from_seed(0)
    pool = [(rng.uniform((batch_size, size, size, colors), -1, 1),
             rng.uniform((batch_size,), 0, 10, dtype=tf.int32)) for _ in range(8)]
    data = tf.data.Dataset.from_tensors(pool[0]).concatenate(
        tf.data.Dataset.from_tensor_slices(tuple(tf.stack(t) for t in zip(*pool[1:])))).repeat()
    iterator = iter(data.prefetch(2))
    traces = [0]
    # AMR's step functions call _train_step; the beta-VAE's, train_step.
    step_name = "train_step" if isinstance(model, BVAE) else "_train_step"
    train_step = getattr(model, step_name)

    def counting_step(*args, **kwargs):  # runs once per trace of a step function
        traces[0] += 1
        return train_step(*args, **kwargs)

    setattr(model, step_name, counting_step)
    model.make_train_function()
    step = model.train_function
    t0 = time.perf_counter()
    for _ in range(warmup):
        logs = step(iterator)
    float(logs["recon_loss"])
    warmup_s = time.perf_counter() - t0
    traced_in_warmup = traces[0]
    rates, other = [], []
    for _ in range(repeats):
        b0 = _busy()
        c0 = time.process_time()
        t0 = time.perf_counter()
        for _ in range(steps):
            logs = step(iterator)
        float(logs["recon_loss"])  # wait for the last step
        elapsed = time.perf_counter() - t0
        b1 = _busy()
        rates.append(steps * batch_size / elapsed)
        if b0 and b1:
            mine = time.process_time() - c0
            other.append(round(max(0.0, (b1[0] - b0[0]) / b1[1] - mine) / elapsed, 2))
    traces_during_timing = traces[0] - traced_in_warmup
    # What a mid-epoch checkpoint costs (a stop, --checkpoint-every): the whole model with its optimizer states,
    # written as ResumableCheckpoint writes it (next to its name, then moved into place).
    from amr_keras.callbacks import ResumableCheckpoint

    with tempfile.TemporaryDirectory() as folder:
        ckpt, save_times = ResumableCheckpoint(folder), []
        ckpt.set_model(model)
        for i in range(3):
            t0 = time.perf_counter()
            ckpt.save(0, steps_done=i + 1)
            save_times.append(time.perf_counter() - t0)
        checkpoint_mib = os.path.getsize(ckpt.model_path) / 2**20
    profile_summary = None
    if profile:
        name = f"b{batch_size}-jit{int(jit)}-g{update_g_every}-{precision}-{probe}"
        tf.profiler.experimental.start(os.path.join(profile, name))
        t0 = time.perf_counter()
        for _ in range(steps):
            logs = step(iterator)
        float(logs["recon_loss"])
        profiled_s = time.perf_counter() - t0
        tf.profiler.experimental.stop()
        profile_summary = summarize_profile(os.path.join(profile, name), wall_seconds=profiled_s)
    return {
        "impl": "amr_keras", "images_per_second": round(statistics.median(rates), 1),
        "images_per_second_repeats": [round(r, 1) for r in rates], "batch_size": batch_size,
        "jit_compile": jit, "update_g_every": update_g_every, "precision": precision, "deterministic": deterministic,
        "compute_dtype": compute_dtype(model),
        "mixer": model.mixer, "probe": model.probe_kind, "depth": depth, "arch": arch,
        "model": "bvae" if isinstance(model, BVAE) else "amr", "image_size": size, "colors": colors, "steps": steps,
        "warmup": warmup,
        "warmup_seconds": round(warmup_s, 1),
        "repeats": repeats, "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "other_processes_cores": other, "device": tf.config.list_logical_devices()[-1].device_type,
        "onednn": amr_keras.onednn_enabled(), "cpu": cpu_info()["model"], "cpu_flags": cpu_info()["flags"],
        "cpu_count": os.cpu_count(), **({"isa_caps": isa_caps()} if isa_caps() else {}),
        "tensorflow": tf.__version__, "keras": keras.__version__, "python": platform.python_version(),
        "traces_during_warmup": traced_in_warmup, "traces_during_timing": traces_during_timing,
        "checkpoint_seconds": round(statistics.median(save_times), 2), "checkpoint_mib": round(checkpoint_mib, 1),
        **({"profile": profile_summary} if profile_summary else {}),
    }


def bench_keras_in_subprocess(setting):
    """``bench_keras(**setting)`` in a fresh Python process: its peak memory is that setting's alone."""
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--setting-json", json.dumps(setting)],
                         capture_output=True, text=True)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        last = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit code {out.returncode}"
        return {"impl": "amr_keras", "error": last, **{k: setting[k] for k in ("batch_size", "precision")}}
    return json.loads(lines[-1])


def bench_torch(path, batch_size, update_g_every, steps, warmup, repeats, mixer, threads):
    cmd = [sys.executable, path, "--batch-size", str(batch_size), "--update-g-every", str(update_g_every),
           "--steps", str(steps), "--warmup", str(warmup), "--repeats", str(repeats), "--mixer", mixer,
           "--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        return {"impl": "torch_ref", "error": out.stderr.strip().splitlines()[-1] if out.stderr else "failed"}
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("{")][-1]
    from amr_keras.precision import isa_caps

    caps = isa_caps()
    return {"impl": "torch_ref", **json.loads(line), **({"isa_caps": caps} if caps else {})}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256])
    p.add_argument("--jit", choices=["off", "on", "both"], default="both")
    p.add_argument("--update-g-every", type=int, nargs="+", default=[1, 5])
    p.add_argument("--mixer", default="mixup", choices=["mixup", "bernoulli"])
    p.add_argument("--depth", type=int, help="channels of the first scale (default 16); --arch burgess: filters of "
                                             "every convolution (default 32)")
    p.add_argument("--arch", choices=("acai", "burgess"), default="acai",
                   help="acai: the 32x32 step (default); burgess: the 64x64 dSprites step of Table 4")
    p.add_argument("--model", choices=("amr", "bvae"), default="amr",
                   help="amr (default) or bvae, the beta-VAE baseline (--arch burgess only)")
    p.add_argument("--image-size", type=int, choices=(32, 64, 128),
                   help="--arch acai: side of the images and networks (default 32; 64 and 128: the networks of "
                        "fit.py --dataset images --image-size)")
    p.add_argument("--channels", type=int, choices=(1, 3), default=1, help="channels of the images (default 1)")
    p.add_argument("--image-folder", metavar="DIR",
                   help="also time the input pipeline of fit.py --dataset images --data-dir DIR alone at --image-size "
                        "and --channels, read from the files (--no-cache) and held in memory (--cache), --steps "
                        "batches --repeats times, and print each step's ratio to it")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--precision", choices=("auto", "float32", "mixed_float16", "mixed_bfloat16"), nargs="+",
                   default=["auto"], help="compute precision(s) of amr_keras (default auto: mixed_bfloat16 where "
                                          "the hardware has bfloat16 units); the PyTorch reference runs in float32")
    p.add_argument("--probe", choices=("whiten", "batchnorm"), nargs="+", default=["whiten"],
                   help="online probe(s) of amr_keras (default whiten, fit.py's default; batchnorm: the probe "
                        "of the committed tables' runs)")
    p.add_argument("--deterministic", choices=("off", "on"), nargs="+", default=["off"],
                   help="TensorFlow's deterministic ops off and/or on (fit.py --deterministic); default off")
    p.add_argument("--torch-ref", nargs="?", const=TORCH_REF, metavar="PATH",
                   help="also time the PyTorch reference step (default benchmarks/torch_ref.py; needs torch: "
                        "pip install -e '.[torch]') and print the ratio")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--profile", metavar="DIR", help="also profile each setting into DIR and print an op summary")
    p.add_argument("--same-process", dest="one_setting_per_process", action="store_false",
                   help="time every setting in this process (default: each in a fresh one, so that its peak memory "
                        "and its oneDNN caches are its own)")
    p.add_argument("--setting-json", help=argparse.SUPPRESS)  # internal: time one setting, print its JSON line
    args = p.parse_args(argv)
    if args.model == "bvae" and args.arch != "burgess":
        p.error("--model bvae runs on the 64x64 networks: add --arch burgess")
    if args.depth is None:
        args.depth = 32 if args.arch == "burgess" else 16
    if args.image_size not in (None, 32) and args.arch != "acai":
        p.error("--image-size sets the acai networks' size (the burgess networks take 64x64): leave it out")
    if args.setting_json:
        print(json.dumps({**bench_keras(**json.loads(args.setting_json)), "peak_rss_scope": "setting"}), flush=True)
        return
    jits = {"off": [False], "on": [True], "both": [False, True]}[args.jit]
    torch_ok = False
    if args.torch_ref:
        try:
            import torch  # noqa: F401

            torch_ok = os.path.isfile(args.torch_ref)
            if not torch_ok:
                p.error(f"--torch-ref {args.torch_ref}: no such file (the reference step ships as "
                        "benchmarks/torch_ref.py; --torch-ref alone uses it)")
        except ImportError:
            print(json.dumps({"impl": "torch_ref", "skipped": "torch is not installed"}))
    pipelines = {}
    if args.image_folder:
        for bs in args.batch_sizes:
            for cache in (False, True):
                res = bench_pipeline(args.image_folder, args.image_size or 32, args.channels, bs, cache,
                                     batches=args.steps, repeats=args.repeats)
                pipelines[bs, cache] = res["images_per_second"]
                print(json.dumps(res), flush=True)
    for bs in args.batch_sizes:
        for every in args.update_g_every:
            ref = None
            if torch_ok:
                ref = bench_torch(args.torch_ref, bs, every, args.steps, args.warmup, args.repeats, args.mixer,
                                  args.threads)
                print(json.dumps(ref), flush=True)
            for jit, precision, probe, det in [(j, prec, pr, d == "on") for d in args.deterministic
                                               for pr in args.probe for prec in args.precision for j in jits]:
                setting = dict(batch_size=bs, jit=jit, update_g_every=every, steps=args.steps, warmup=args.warmup,
                               repeats=args.repeats, depth=args.depth, mixer=args.mixer, precision=precision,
                               profile=args.profile, probe=probe, arch=args.arch, model=args.model,
                               deterministic=det, image_size=args.image_size, colors=args.channels)
                if args.one_setting_per_process:
                    res = bench_keras_in_subprocess(setting)
                else:
                    res = {**bench_keras(**setting), "peak_rss_scope": "process"}
                if (bs, False) in pipelines and "images_per_second" in res:
                    # How many times faster the files are read than the step consumes them (> 1: never waited on).
                    res["pipeline_read_images_per_second"] = pipelines[bs, False]
                    res["pipeline_read_to_step_ratio"] = round(pipelines[bs, False] / res["images_per_second"], 1)
                if ref and "images_per_second" in ref:
                    res["torch_ref_images_per_second"] = ref["images_per_second"]
                    res["ratio_vs_torch_ref"] = round(res["images_per_second"] / ref["images_per_second"], 2)
                print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
