"""se3t vs NVIDIA's SE3Transformer learning side by side: validation MAE vs step and wall-clock.

    NV=/work/ref/dle/DGLPyTorch/DrugDiscovery/SE3Transformer     # NVIDIA's code (commit 729963dd)
    .venv/bin/python benchmarks/accuracy/run.py all --nvidia $NV \
        --nvidia-python /work/nvidia-venv/bin/python --work results/accuracy \
        --steps 1000 --seeds 0 1 --nvidia-seeds 0

Stages (``all`` runs them in order; each can run alone):

- ``prepare``: a seeded random 20,000-molecule QM9 subset (``subset.py``) built by
  ``se3t data build``; NVIDIA's initial weights (``nvidia_train.py init``) and their sidecar;
  the molecules, splits and batch orders NVIDIA's loop reads (``nvidia_data.pt``).
- ``train``: the runs, as long-lived processes that take turns (below).
- ``report``: ``curves.png``, ``table.md``, ``curves.json`` and TensorBoard event files
  (``tensorboard/<run>``, the same tags for every run) from the runs' ``metrics.jsonl``.

The runs: ``se3t-s<k>`` is ``se3t train -c config/config.yaml`` (NVIDIA's recipe) at batch 32
with ``train.seed=k`` (its batch order), ``train.init_weights`` = NVIDIA's initial weights, bases
computed in the forward pass (like NVIDIA's default), fp32 on the CPU; ``nvidia-s<k>`` is
NVIDIA's model in NVIDIA's loop (``nvidia_train.py``) on the batches ``se3t train`` draws with
seed k. Both validate every ``--eval-every`` (25) steps (and before the first step) on the whole
validation split and log the mean training loss every 25 steps.

Fairness on a shared machine: every run is one process for its whole life, and only one runs
at a time (``--lanes 2``: one NVIDIA run on core 0 and one se3t run on core 1). The others are
stopped (SIGSTOP to the process group) and the runs take turns of
``--segment`` (25) optimizer steps, round robin, so load that drifts during the window hits all of
them alike. A run's wall-clock is the sum of its own turns (from the moment its process is
continued until it is stopped, start-up and imports included), recorded in ``clock.json``;
``train_s`` also leaves out the time its validations took. ``--deadline HH:MM`` (UTC) stops
every run there and reports the steps reached.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

# NVIDIA's procedure (random; 10 % test; the rest validation) with a small validation split so
# that validating NVIDIA's model every 100 steps stays affordable: 17,700 / 300 / 2,000
SPLIT = {"data.train_fraction": 0.885, "data.test_fraction": 0.1}


# ------------------------------------------------------------------------------ prepare
def se3t_overrides(a, work: Path, seed: int, **extra) -> list[str]:
    o = {
        "data.path": str(work / "qm9_20k.zarr"),
        "data.limit": "null",
        **SPLIT,
        "basis.use": "compute",
        "train.batch_size": a.batch_size,
        "train.precision": "fp32",
        "train.device": "cpu",
        "train.seed": seed,
        "train.eval_every_steps": a.eval_every,
        "train.log_every": 25,
        "train.init_weights": str(work / "nvidia_init.pth"),
        "train.tensorboard": "true",
        "eval.batch_size": 100,
        "run.dir": str(work / "runs" / f"se3t-s{seed}"),
        "run.name": f"se3t-s{seed}",
        **extra,
    }
    return [f"{k}={v}" for k, v in o.items()]


def prepare(a) -> None:
    import torch

    from se3t.config import load
    from se3t.data import MoleculeDataset, collate
    from se3t.train.sampler import ResumableBatchSampler

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    store = work / "qm9_20k.zarr"
    if not store.exists():
        subprocess.run(
            [
                sys.executable,
                str(HERE / "subset.py"),
                "--size",
                str(a.size),
                "--seed",
                "0",
                "--out",
                str(work / "raw"),
            ],
            check=True,
        )
        se3t = str(Path(sys.executable).with_name("se3t"))
        subprocess.run(
            [se3t, "data", "build", "--quiet", "--raw", str(work / "raw"), "--out", str(store)],
            check=True,
        )
    init = work / "nvidia_init.pth"
    if not init.exists():
        subprocess.run(
            [
                a.nvidia_python,
                str(HERE / "nvidia_train.py"),
                "init",
                "--nvidia",
                a.nvidia,
                "--out",
                str(init),
            ],
            check=True,
        )
    cfg = load(ROOT / "config" / "config.yaml", se3t_overrides(a, work, 0))
    train = MoleculeDataset.from_config(cfg.data, "train")
    val = MoleculeDataset.from_config(cfg.data, "val")
    allm = MoleculeDataset(store, split="all", targets=("homo",))
    # the sidecar: NVIDIA's arguments (its QM9 defaults, tensor_cores as on its A100 runs)
    (work / "nvidia_init.yaml").write_text(
        "model: {tensor_cores: true}\ntarget: homo\n"
        f"mean: {float(train.mean[0])}\nstd: {float(train.std[0])}\n"
    )
    cols = {k: [] for k in ("pos", "node_feats", "src", "dst", "edge_feats")}
    na, ne = [0], [0]
    for i in range(len(allm)):
        b = collate([allm[i]])
        cols["pos"].append(b.pos)
        cols["node_feats"].append(b.node_feats)
        cols["edge_feats"].append(b.edge_feats)
        cols["src"].append(b.graph.src.long())
        cols["dst"].append(b.graph.dst.long())
        na.append(na[-1] + b.pos.shape[0])
        ne.append(ne[-1] + b.graph.src.shape[0])
    data = {k: torch.cat(v) for k, v in cols.items()}
    data["atom_off"] = torch.tensor(na)
    data["edge_off"] = torch.tensor(ne)
    data["y"] = torch.from_numpy(allm.target_values()[:, 0]).float()
    data["train"] = torch.from_numpy(train.indices).long()
    data["val"] = torch.from_numpy(val.indices).long()
    sampler = ResumableBatchSampler(len(train), a.batch_size, shuffle=True, seed=0)
    data["steps_per_epoch"] = len(sampler)
    orders = {}
    for seed in sorted(set(a.seeds) | set(a.nvidia_seeds)):
        sampler = ResumableBatchSampler(len(train), a.batch_size, shuffle=True, seed=seed)
        steps = []
        epoch = 0
        while len(steps) < a.steps:
            sampler.set_epoch(epoch)
            steps += [data["train"][torch.tensor(b)] for b in sampler]
            epoch += 1
        orders[str(seed)] = steps[: a.steps]
    data["orders"] = orders
    torch.save(data, work / "nvidia_data.pt")
    print(
        f"prepared {work}: {len(allm)} molecules, {len(train)} train / {len(val)} val, "
        f"{data['steps_per_epoch']} steps per epoch"
    )


# ------------------------------------------------------------------------------ train
class Run:
    def __init__(self, name: str, argv: list[str], run_dir: Path, env: dict, impl: str):
        self.name, self.dir, self.impl = name, run_dir, impl
        run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics = run_dir / "metrics.jsonl"
        self.log = open(run_dir / "process.log", "ab")  # noqa: SIM115
        # the process stops itself before exec: its start-up runs in its own turns
        wrapped = ["bash", "-c", 'kill -STOP $$; exec "$@"', "wrapper", *argv]
        self.p = subprocess.Popen(
            wrapped, stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        self.intervals: list[list[float]] = []
        self.offset, self.step, self.val_step = 0, 0, -1
        self.done, self.end = False, "running"
        while _state(self.p.pid) != "T" and self.p.poll() is None:
            time.sleep(0.05)

    def signal(self, sig) -> None:
        if self.p.poll() is None:
            os.killpg(self.p.pid, sig)

    def cont(self) -> None:
        self.intervals.append([time.time(), None])
        self.signal(signal.SIGCONT)

    def pause(self) -> None:
        self.signal(signal.SIGSTOP)
        self.intervals[-1][1] = time.time()

    def poll(self) -> None:
        if not self.metrics.exists():
            return
        with open(self.metrics) as fh:
            fh.seek(self.offset)
            text = fh.read()
        lines = text.split("\n")
        self.offset += len(text) - len(lines[-1])  # a line being written waits for the next poll
        for line in lines[:-1]:
            r = json.loads(line)
            if r["kind"] == "step":
                self.step = max(self.step, r["step"])
            elif r["kind"] == "val":
                self.val_step = max(self.val_step, r["step"])
                self.step = max(self.step, r["step"])


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "?"


def train(a) -> None:
    work = Path(a.work)
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads))
    env["PYTHONPATH"] = str(ROOT)
    se3t = str(Path(sys.executable).with_name("se3t"))
    runs = []
    order = [("nvidia", s) for s in a.nvidia_seeds] + [("se3t", s) for s in a.seeds]
    # interleave: nvidia-s0, se3t-s0, se3t-s1, nvidia-s1, ...
    order.sort(key=lambda x: (x[1], x[0] != "nvidia"))
    for impl, seed in order:
        d = work / "runs" / f"{impl}-s{seed}"
        if (d / "metrics.jsonl").exists():
            raise SystemExit(f"{d} holds a run already: move it away to run again")
        if impl == "nvidia":
            argv = [
                a.nvidia_python,
                str(HERE / "nvidia_train.py"),
                "train",
                "--nvidia",
                a.nvidia,
                "--data",
                str(work / "nvidia_data.pt"),
                "--init",
                str(work / "nvidia_init.pth"),
                "--seed",
                str(seed),
                "--steps",
                str(a.steps),
                "--eval-every",
                str(a.eval_every),
                "--threads",
                str(a.threads),
                "--out",
                str(d),
            ]
        else:
            argv = [
                se3t,
                "train",
                "-c",
                str(ROOT / "config" / "config.yaml"),
                "--no-progress",
                *se3t_overrides(a, work, seed),
            ]
        runs.append(Run(f"{impl}-s{seed}", argv, d, env, impl))
    deadline = None
    if a.deadline:
        hh, mm = map(int, a.deadline.split(":"))
        now = datetime.now(timezone.utc)
        at = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
        deadline = (at if at > now else at + timedelta(days=1)).timestamp()  # past: tomorrow's
    take_turns(runs, a, deadline, work / "clock.json")


def take_turns(runs: list[Run], a, deadline: float | None, clock: Path) -> None:
    """Run ``runs`` (started stopped) to ``a.steps`` in turns of ``a.segment`` steps, in
    ``a.lanes`` lanes at once; their turns go to ``clock``."""
    lock = threading.Lock()

    def save_clock():
        clock.write_text(
            json.dumps(
                {r.name: {"intervals": r.intervals, "end": r.end, "step": r.step} for r in runs},
                indent=1,
            )
        )

    lanes = [[r for r in runs if _lane(r, a.lanes) == i] for i in range(a.lanes)]
    for i, lane in enumerate(lanes):
        for r in lane:
            if a.lanes > 1:  # a lane owns one core; exec and every thread inherit the mask
                os.sched_setaffinity(r.p.pid, {i % os.cpu_count()})
    threads = [
        threading.Thread(target=_turns, args=(lane, a, deadline, save_clock, lock))
        for lane in lanes
        if lane
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    save_clock()


def _lane(r: Run, lanes: int) -> int:
    """NVIDIA's runs in lane 0, se3t's in the last: with two lanes each implementation has a
    core of its own for the whole window and its runs take turns on it."""
    return 0 if r.impl == "nvidia" else lanes - 1


def _turns(runs: list[Run], a, deadline, save_clock, lock) -> None:
    while not all(r.done for r in runs):
        for r in runs:
            if r.done:
                continue
            target = min(a.steps, (r.step // a.segment + 1) * a.segment)
            r.cont()
            while True:
                time.sleep(0.1)
                r.poll()
                finished = r.step >= target and (target % a.eval_every or r.val_step >= target)
                late = deadline is not None and time.time() > deadline
                if r.p.poll() is not None or finished or late:
                    break
            r.pause()
            if r.p.poll() is not None:
                r.done, r.end = True, f"exited {r.p.returncode} at step {r.step}"
            elif r.step >= a.steps and r.val_step >= a.steps:
                r.done, r.end = True, f"completed {r.step} steps"
                _finish(r)
            with lock:
                print(f"{time.strftime('%H:%M:%S')} {r.name}: step {r.step} ({r.end})", flush=True)
                save_clock()
            if deadline is not None and time.time() > deadline:
                for q in runs:
                    if not q.done:
                        q.done, q.end = True, f"stopped at the deadline at step {q.step}"
                        _finish(q)
                with lock:
                    save_clock()
                return


def _finish(r: Run) -> None:
    """End a paused run outside its turns (se3t train writes last.pt on SIGTERM)."""
    if r.p.poll() is None:
        r.signal(signal.SIGTERM)
        r.signal(signal.SIGCONT)
        try:
            r.p.wait(timeout=120)
        except subprocess.TimeoutExpired:
            r.signal(signal.SIGKILL)
            r.p.wait()


# ------------------------------------------------------------------------------ report
def own_clock(intervals, t: float) -> float:
    """Seconds of the run's own turns before wall time ``t``."""
    return sum(max(0.0, min(t, b if b is not None else t) - s) for s, b in intervals if s < t)


def curves(work: Path) -> dict:
    clock = json.loads((work / "clock.json").read_text())
    out = {}
    for name, c in clock.items():
        recs = [json.loads(x) for x in (work / "runs" / name / "metrics.jsonl").open()]
        eval_s, val, loss = 0.0, [], []
        for r in recs:
            t = own_clock(c["intervals"], r["time"])
            if r["kind"] == "val":
                eval_s += r.get("eval_s", 0.0)
                mae = r["val_mae"]["homo"]
                val.append({"step": r["step"], "mae": mae, "wall_s": t, "train_s": t - eval_s})
            elif r["kind"] == "step":
                loss.append(
                    {
                        "step": r["step"],
                        "loss": r["loss"],
                        "lr": r["lr"],
                        "wall_s": t,
                        "train_s": t - eval_s,
                    }
                )
        out[name] = {"val": val, "loss": loss, "end": c["end"], "eval_s": eval_s}
    return out


def time_to(points: list[dict], mae: float) -> float | None:
    for p in points:
        if p["mae"] <= mae:
            return p["train_s"]
    return None


def smoothed(points: list[dict], k: int = 3) -> list[dict]:
    """The curve's running mean over its last ``k`` validations (batch-32 curves are noisy:
    one validation can sit 100 meV above its neighbours)."""
    out = []
    for i, p in enumerate(points):
        window = points[max(0, i - k + 1) : i + 1]
        out.append({**p, "mae": sum(q["mae"] for q in window) / len(window)})
    return out


def tensorboard(work: Path, cv: dict) -> None:
    """The same tags as ``se3t train``'s own event files; wall time = the run's own clock."""
    from torch.utils.tensorboard import SummaryWriter

    t0 = 1.0e9  # a fixed origin: TensorBoard's "relative" axis is then the run's own clock
    for name, c in cv.items():
        w = SummaryWriter(str(work / "tensorboard" / name))
        for p in c["loss"]:
            w.add_scalar("step/loss", p["loss"], p["step"], walltime=t0 + p["train_s"])
            w.add_scalar("step/lr", p["lr"], p["step"], walltime=t0 + p["train_s"])
        for p in c["val"]:
            w.add_scalar("val/val_mae/homo", p["mae"], p["step"], walltime=t0 + p["train_s"])
        w.close()


def report(a) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    work = Path(a.work)
    cv = curves(work)
    (work / "curves.json").write_text(json.dumps(cv, indent=1))
    tensorboard(work, cv)
    fig, ax = plt.subplots(1, 3, figsize=(16, 4.5))
    for name, c in cv.items():
        style = "-" if name.startswith("se3t") else "--"
        steps = [p["step"] for p in c["val"]]
        mae = [1000 * p["mae"] for p in c["val"]]
        ax[0].plot(steps, mae, style, marker="o", ms=3, label=name)
        ax[1].plot([p["train_s"] / 60 for p in c["val"]], mae, style, marker="o", ms=3, label=name)
        ax[2].plot(
            [p["step"] for p in c["loss"]], [p["loss"] for p in c["loss"]], style, label=name
        )
    ax[0].set(xlabel="optimizer step (batch 32)", ylabel="validation MAE homo (meV)")
    ax[1].set(xlabel="own wall-clock, validation excluded (min)", ylabel="validation MAE (meV)")
    ax[2].set(xlabel="optimizer step", ylabel="training L1 loss (standardized)")
    for x in ax:
        x.grid(alpha=0.3)
        x.legend()
    fig.suptitle(
        "se3t train vs NVIDIA's SE3Transformer: QM9 homo, 20k subset, same initial "
        "weights and batches"
    )
    fig.tight_layout()
    fig.savefig(work / "curves.png", dpi=110)

    names = list(cv)
    steps = sorted({p["step"] for c in cv.values() for p in c["val"]})
    lines = [
        "| step | "
        + " | ".join(f"{n} MAE (meV)" for n in names)
        + " | "
        + " | ".join(f"{n} time (s)" for n in names)
        + " |",
        "|---:|" + "---:|" * (2 * len(names)),
    ]
    for s in steps:
        row = []
        for n in names:
            p = next((p for p in cv[n]["val"] if p["step"] == s), None)
            row.append(f"{1000 * p['mae']:.1f}" if p else "")
        for n in names:
            p = next((p for p in cv[n]["val"] if p["step"] == s), None)
            row.append(f"{p['train_s']:.0f}" if p else "")
        lines.append(f"| {s} | " + " | ".join(row) + " |")
    lines.append("")
    lines.append(
        "| run | end | last step | last val MAE (meV) | own time, training (s) | "
        "validation (s) | s per step |"
    )
    lines.append("|---|---|---:|---:|---:|---:|---:|")
    for n in names:
        c = cv[n]
        last = c["val"][-1] if c["val"] else None
        if last:
            per = last["train_s"] / max(1, last["step"])
            lines.append(
                f"| {n} | {c['end']} | {last['step']} | {1000 * last['mae']:.1f} | "
                f"{last['train_s']:.0f} | {c['eval_s']:.0f} | {per:.2f} |"
            )
    nv = [n for n in names if n.startswith("nvidia")]
    for label, curve in (("", lambda c: c), (" (3-point running mean)", smoothed)):
        if not nv or not cv[nv[0]]["val"]:
            break
        ref = curve(cv[nv[0]]["val"])[-1]
        lines.append("")
        lines.append(
            f"Time to reach {nv[0]}'s last validation MAE{label} ({1000 * ref['mae']:.1f} meV "
            f"at step {ref['step']}, {ref['train_s']:.0f} s):"
        )
        for n in names:
            t = time_to(curve(cv[n]["val"]), ref["mae"])
            ratio = f" = {t / ref['train_s']:.2f} of NVIDIA's" if t is not None else ""
            lines.append(f"- {n}: " + (f"{t:.0f} s{ratio}" if t is not None else "not reached"))
    se3t = [n for n in names if n.startswith("se3t")]
    if nv and len(se3t) >= 2:
        # the target: se3t (NVIDIA's batch order) within the spread between se3t's orders
        same = f"se3t-s{nv[0].split('-s')[1]}"
        lines.append("")
        lines.append(f"| step | {same} − {nv[0]} (meV) | spread of se3t's orders (meV) | within |")
        lines.append("|---:|---:|---:|---|")
        by = {n: {p["step"]: p["mae"] for p in cv[n]["val"]} for n in names}
        for st in steps:
            vals = [by[n][st] for n in se3t if st in by[n]]
            if st not in by[nv[0]] or st not in by.get(same, {}) or len(vals) < 2:
                continue
            d = 1000 * (by[same][st] - by[nv[0]][st])
            spread = 1000 * (max(vals) - min(vals))
            lines.append(f"| {st} | {d:+.1f} | {spread:.1f} | {'yes' if d <= spread else 'no'} |")
        # the same batches part within a few steps (the divergence stage), so the band of se3t's
        # orders is the fairer yardstick: where does NVIDIA's run fall in it?
        lines.append("")
        lines.append(
            f"| step | se3t's orders, min–max (meV) | {nv[0]} (meV) | {nv[0]} vs the band |"
        )
        lines.append("|---:|---:|---:|---|")
        for st in steps:
            vals = [1000 * by[n][st] for n in se3t if st in by[n]]
            if st not in by[nv[0]] or len(vals) < 2:
                continue
            ref, lo, hi = (round(x, 1) for x in (1000 * by[nv[0]][st], min(vals), max(vals)))
            where = (
                "inside"
                if lo <= ref <= hi
                else f"above (se3t better by {ref - hi:.1f})"
                if ref > hi
                else f"below (se3t worse by {lo - ref:.1f})"
            )
            lines.append(f"| {st} | {lo:.1f}–{hi:.1f} | {ref:.1f} | {where} |")
    (work / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


# ------------------------------------------------------------------------------ budget
def budget(a) -> None:
    """``se3t train`` (the recipe at ``--batch-size``) on ``--store`` for ``--minutes`` of its own
    training time (validations excluded), validating every ``--eval-every`` steps; then the
    table of validation MAE against that time."""
    work = Path(a.work)
    d = work / "budget"
    if (d / "metrics.jsonl").exists():
        raise SystemExit(f"{d} holds a run already: move it away to run again")
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), PYTHONPATH=str(ROOT))
    o = se3t_overrides(
        a, work, 0, **{"data.path": a.store, "run.dir": str(d), "run.name": "budget"}
    )
    o = [x for x in o if not x.startswith(("train.init_weights=", "data.train_fraction="))]
    se3t = str(Path(sys.executable).with_name("se3t"))
    started = time.time()
    p = subprocess.Popen(
        [se3t, "train", "-c", str(ROOT / "config" / "config.yaml"), "--no-progress", *o],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    limit = 60 * a.minutes
    # the run ends at its first validation after the budget, so the last row is measured
    while p.poll() is None and not any(own >= limit for _, own, _ in _budget_rows(d, started)):
        time.sleep(2)
    p.send_signal(signal.SIGTERM)  # se3t train stops at the step's end and writes last.pt
    p.wait()
    lines = [
        f"`se3t train` on {a.store}, batch {a.batch_size}, {a.threads} threads, "
        f"{a.minutes:g} minutes of training time (from the command's start, validations "
        "excluded):",
        "",
        "| step | molecules seen | training time (min) | validation MAE homo (meV) |",
        "|---:|---:|---:|---:|",
    ]
    for step, own, mae in _budget_rows(d, started):
        lines.append(f"| {step} | {step * a.batch_size:,} | {own / 60:.1f} | {1000 * mae:.1f} |")
    (d / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    lines = path.read_text().split("\n")[:-1]  # the last line may be half-written
    return [json.loads(line) for line in lines if line.strip()]


def _budget_rows(d: Path, started: float) -> list[tuple[int, float, float]]:
    """(step, training time before it, validation MAE) of every validation so far."""
    rows, eval_done = [], 0.0
    for r in _records(d / "metrics.jsonl"):
        if r["kind"] == "val":
            rows.append(
                (r["step"], r["time"] - r["eval_s"] - started - eval_done, r["val_mae"]["homo"])
            )
            eval_done += r["eval_s"]
    return rows


# ------------------------------------------------------------------------------ divergence
def divergence(a) -> None:
    """Per-step training loss of NVIDIA's run, NVIDIA's run from weights perturbed at fp32's
    roundoff (``--perturb``), and se3t's run, all on the same batches: how many steps two
    trajectories of the *same* code stay together, beside se3t's."""
    work = Path(a.work)
    out = work / "divergence"
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), PYTHONPATH=str(ROOT))
    nv = [a.nvidia_python, str(HERE / "nvidia_train.py"), "train", "--nvidia", a.nvidia]
    nv += ["--data", str(work / "nvidia_data.pt"), "--init", str(work / "nvidia_init.pth")]
    nv += ["--steps", str(a.div_steps), "--log-every", "1", "--eval-every", str(10**9)]
    nv += ["--threads", str(a.threads), "--seed", "0"]
    for name, extra in (("nvidia", []), ("nvidia-perturbed", ["--perturb", str(a.perturb)])):
        d = out / name
        if not (d / "metrics.jsonl").exists():
            argv = [*nv, *extra, "--out", str(d)]
            subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
    d = out / "se3t"
    if not (d / "metrics.jsonl").exists():
        # stopped by SIGTERM after its steps: train.max_steps would compress the schedule
        o = se3t_overrides(
            a,
            work,
            0,
            **{
                "train.log_every": 1,
                "train.eval_every_steps": 0,
                "train.tensorboard": "false",
                "run.dir": str(d),
            },
        )
        se3t = str(Path(sys.executable).with_name("se3t"))
        p = subprocess.Popen(
            [se3t, "train", "-c", str(ROOT / "config" / "config.yaml"), "--no-progress", *o],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        while p.poll() is None and len(_losses(d / "metrics.jsonl")) < a.div_steps:
            time.sleep(0.5)
        p.send_signal(signal.SIGTERM)
        p.wait()
    ref = _losses(out / "nvidia" / "metrics.jsonl")
    cols = {
        "NVIDIA, perturbed": _losses(out / "nvidia-perturbed" / "metrics.jsonl"),
        "se3t": _losses(d / "metrics.jsonl"),
    }
    lines = [
        f"Training loss per step, batch order 0 (perturbation {a.perturb:g}):",
        "",
        "| step | NVIDIA | NVIDIA, perturbed | rel. diff. | se3t train | rel. diff. |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for s in sorted(ref)[: a.div_steps]:
        row = [f"{ref[s]:.7f}"]
        for c in cols.values():
            row += (
                [f"{c[s]:.7f}", f"{abs(c[s] - ref[s]) / abs(ref[s]):.1e}"] if s in c else ["", ""]
            )
        lines.append(f"| {s} | " + " | ".join(row) + " |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _losses(path: Path) -> dict[int, float]:
    if not path.exists():
        return {}
    recs = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return {r["step"]: r["loss"] for r in recs if r["kind"] == "step"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("stage", choices=["prepare", "train", "report", "all", "divergence", "budget"])
    p.add_argument("--nvidia", default="/work/ref/dle/DGLPyTorch/DrugDiscovery/SE3Transformer")
    p.add_argument("--nvidia-python", default="/work/nvidia-venv/bin/python")
    p.add_argument("--work", default="results/accuracy")
    p.add_argument("--size", type=int, default=20000, help="molecules in the QM9 subset")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="se3t batch orders")
    p.add_argument("--nvidia-seeds", type=int, nargs="+", default=[0])
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--segment", type=int, default=25, help="optimizer steps per turn")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (README: why one)")
    p.add_argument(
        "--lanes",
        type=int,
        choices=[1, 2],
        default=1,
        help="1: every run takes turns on the machine; 2: NVIDIA's runs take turns pinned to "
        "core 0 while se3t's take turns pinned to core 1, at the same time (README)",
    )
    p.add_argument("--deadline", default=None, help="HH:MM UTC: stop every run there")
    p.add_argument("--div-steps", type=int, default=10, help="divergence: steps per run")
    p.add_argument("--store", help="budget: the dataset store (full QM9)")
    p.add_argument("--minutes", type=float, default=30.0, help="budget: training time")
    p.add_argument("--perturb", type=float, default=1e-7, help="divergence: NVIDIA's start change")
    a = p.parse_args()
    if a.stage in ("prepare", "all"):
        prepare(a)
    if a.stage in ("train", "all"):
        train(a)
    if a.stage in ("report", "all"):
        report(a)
    if a.stage == "divergence":
        divergence(a)
    if a.stage == "budget":
        budget(a)


if __name__ == "__main__":
    main()
