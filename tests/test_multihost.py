"""Several processes: one fit (and one sweep) over 2 processes x 2 CPU devices after ``jax.distributed.initialize()``
equals the fit of one process on one device, and every process gets the whole model."""

from __future__ import annotations

import importlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

import jnmf

FIELDS = ("w", "d", "h", "loss", "iter", "converged")
# (data, k, seed, options): toy's 30 samples are padded to 32 over 4 devices, its first 28 are not; the last case
# has each device's columns in the sparse layout (ShardedSparseData).
CASES = (("toy", 3, 1, {}), ("toy28", 3, 1, {"solver": "cd", "L1": 0.05, "L2": 0.1}),
         ("birds", 8, 42, {"solver": "cd", "norm": "L2"}), ("toy", 3, 1, {"layout": "sparse"}))
SWEEP = {"k": 3, "L2": [0.0, 0.1, 0.2], "seeds": [1, 2, 3]}  # 9 members dealt over 4 devices
# A guard against a hung collective, not a speed check: the verdict must not depend on machine load. The work is
# ~100 s of CPU per process on 2 cores (both processes compile and fit every case); on a busy machine that share
# of the cores can shrink several-fold, so the deadline is 10x the unloaded time plus start-up.
TIMEOUT_S = 1200

_WORKER = textwrap.dedent("""
    import json, sys
    import jax
    port, pid, toy_path, out_path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    cases, sweep = json.loads(sys.argv[5]), json.loads(sys.argv[6])
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=pid,
                               initialization_timeout=%(init_timeout)d)
    import numpy as np
    import jnmf
    assert jax.process_count() == 2 and len(jax.devices()) == 4 and len(jax.local_devices()) == 2, jax.devices()
    toy = np.load(toy_path)
    data = {"toy": toy, "toy28": toy[:, :28], "birds": jnmf.datasets.load_hawaiibirds().A}
    out = {}
    for i, (name, k, seed, kw) in enumerate(cases):
        model = jnmf.nmf(data[name], k, seed=seed, devices=jax.devices(), **kw)
        out[f"{i}_replicated"] = all(x.is_fully_replicated for x in jax.tree.leaves(model))
        for f in %(fields)r:
            out[f"{i}_{f}"] = np.asarray(getattr(model, f))
    result = jnmf.sweep(toy, sweep["k"], L2=sweep["L2"], seeds=sweep["seeds"], devices=jax.devices())
    out["sweep_devices"] = result.n_devices
    for f in %(fields)r:
        out[f"sweep_{f}"] = np.asarray(getattr(result.model, f))
    np.savez(out_path, **out)
    print("done", pid)
""") % {"fields": FIELDS, "init_timeout": TIMEOUT_S // 2}  # the peer may start slowly under load too


def _gloo_missing() -> str | None:
    """Why CPU cross-process collectives are unavailable in this JAX build, or None."""
    if "jax_cpu_collectives_implementation" not in jax.config.values:
        return f"jax {jax.__version__} has no jax_cpu_collectives_implementation option (CPU cross-process collectives)"
    try:
        ext = importlib.import_module("jaxlib._jax")
    except ImportError as e:
        return f"jaxlib's extension module jaxlib._jax cannot be imported: {e}"
    if not hasattr(ext, "make_gloo_tcp_collectives"):
        return f"jaxlib {jax.__version__} was built without gloo (jaxlib._jax.make_gloo_tcp_collectives is missing)"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(tmp_path, toy_path, attempt: int):
    """Start both processes, wait for both (killing the other when one fails or time runs out); returns
    (return codes, stderr texts, output paths)."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    env.pop("JAX_NUM_CPU_DEVICES", None)
    port = _free_port()
    outs = [tmp_path / f"out{attempt}_{i}.npz" for i in range(2)]
    logs = [(open(tmp_path / f"stdout{attempt}_{i}.txt", "w"), open(tmp_path / f"stderr{attempt}_{i}.txt", "w"))
            for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(port), str(i), str(toy_path), str(outs[i]),
                               json.dumps(CASES), json.dumps(SWEEP)], env=env, stdout=logs[i][0], stderr=logs[i][1])
             for i in range(2)]
    deadline = time.monotonic() + TIMEOUT_S
    codes: list[int | None] = [None, None]
    try:
        while None in codes and time.monotonic() < deadline:
            codes = [p.poll() for p in procs]
            if any(c not in (None, 0) for c in codes):  # one failed: the other would wait on it until its timeout
                time.sleep(2)  # let the other report its own error first
                codes = [p.poll() for p in procs]
                break
            time.sleep(0.1)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in (f for pair in logs for f in pair):
            f.close()
    codes = [p.returncode if c is None else c for p, c in zip(procs, codes, strict=True)]
    timed_out = time.monotonic() >= deadline
    errs = [(tmp_path / f"stderr{attempt}_{i}.txt").read_text() for i in range(2)]
    return codes, errs, outs, timed_out


def _report(codes, errs, timed_out) -> str:
    head = f"timed out after {TIMEOUT_S} s; " if timed_out else ""
    return head + "".join(f"\n--- process {i} (exit {codes[i]}) stderr:\n{errs[i][-3000:]}" for i in range(2))


def test_two_processes_equal_one_device(toy_ref, hawaiibirds, tmp_path):
    missing = _gloo_missing()
    if missing:
        pytest.skip(missing)
    toy_path = tmp_path / "toy.npy"
    np.save(toy_path, toy_ref["A"])
    for attempt in range(2):  # the free port may be taken between choosing and binding it: one retry
        codes, errs, outs, timed_out = _launch(tmp_path, toy_path, attempt)
        if not (attempt == 0 and any("address already in use" in e.lower() for e in errs)):
            break
    assert codes == [0, 0], "the two jax.distributed processes failed:" + _report(codes, errs, timed_out)
    got = []
    for i in range(2):
        with np.load(outs[i]) as z:
            got.append({key: z[key] for key in z.files})
    # Both processes hold the same, whole model (replicated on every device of the mesh).
    for key in got[0]:
        assert np.array_equal(got[0][key], got[1][key]), f"processes 0 and 1 differ in {key}"

    toy = toy_ref["A"]
    data = {"toy": toy, "toy28": toy[:, :28], "birds": hawaiibirds.A}
    with jax.enable_x64(True):
        for i, (name, k, seed, kw) in enumerate(CASES):
            one = jnmf.nmf(data[name], k, seed=seed, **kw)
            assert bool(got[0][f"{i}_replicated"]), f"case {name}: model arrays are not replicated"
            assert int(got[0][f"{i}_iter"]) == int(one.iter), (name, int(got[0][f"{i}_iter"]), int(one.iter))
            assert bool(got[0][f"{i}_converged"]) == bool(one.converged), name
            for f in ("w", "d", "h", "loss"):
                ref = np.asarray(getattr(one, f))
                assert got[0][f"{i}_{f}"].shape == ref.shape, (name, f, got[0][f"{i}_{f}"].shape, ref.shape)
                rel = np.max(np.abs(got[0][f"{i}_{f}"] - ref)) / np.max(np.abs(ref))
                assert rel <= 1e-10, f"case {name}: {f} differs by {rel:.3g} (relative) from one device"
        ref = jnmf.sweep(toy, SWEEP["k"], L2=SWEEP["L2"], seeds=SWEEP["seeds"], devices=jax.devices()[:1]).model
    assert int(got[0]["sweep_devices"]) == 4
    np.testing.assert_array_equal(got[0]["sweep_iter"], np.asarray(ref.iter))
    for f in ("w", "d", "h", "loss"):
        ref_f = np.asarray(getattr(ref, f))
        assert got[0][f"sweep_{f}"].shape == ref_f.shape, (f, got[0][f"sweep_{f}"].shape, ref_f.shape)
        rel = np.max(np.abs(got[0][f"sweep_{f}"] - ref_f)) / np.max(np.abs(ref_f))
        assert rel <= 1e-10, f"sweep: {f} differs by {rel:.3g} (relative) from one device"
