"""Training-step time of each trainer with each assigner, and the assigner's overhead as % of a step.

A step is the trainers' own step, built from their functions: noising core (noise draw, assigner pair,
timesteps, add_noise, target) -> model forward -> MSE -> backward -> AdamW -> lr schedule -> EMA.

* policy: ``model=unet1d_cpu`` (ConditionalUnet1D, 4.56M parameters), PushT keypoint shapes (action chunk
  horizon 16 x action dim 2, observation 2 x 20), DDPM 100 steps, batch ``--policy-batch`` (256);
* image: ``model=unet2d_small`` (UNet2DModel, 1.1M parameters), Fashion-MNIST shapes (1 x 32 x 32 after
  the task's padding), DDPM 1000 steps, batch ``--image-batch`` (64; bf16 autocast on CUDA like the
  trainer's ``mixed_precision=auto``).

Data are uniform in [-1, 1] with the real shapes (an assigner's cost does not depend on the values).
Every assigner trains the same model; rounds are interleaved (one step of each assigner per round, the
order rotating), so load from other processes on a shared machine hits all of them alike, and medians
are reported. Two overhead measures per assigner:

* ``pair % of step``: median time of the assigner's ``pair`` call alone on that batch / median vanilla
  step (the mechanistic cost; robust to noise);
* ``step +%``: (median step with the assigner - median vanilla step) / median vanilla step (what a user
  sees; on a shared CPU its noise is a few %);
* ``paired +%``: median over rounds of (this assigner's step - vanilla's step in the same round) /
  median vanilla step: differences of steps taken seconds apart, so slow changes in the machine's load
  cancel (the better estimate of the two on a shared CPU).

On CUDA every timed region ends with ``torch.cuda.synchronize()``.

Usage:
    OMP_NUM_THREADS=1 python benchmarks/core_throughput.py                 # CPU, single-threaded
    python benchmarks/core_throughput.py --device cuda --image-batch 256  # on a GPU
    python benchmarks/core_throughput.py --quick                          # smoke (few rounds)
Writes benchmarks/results/core_throughput_<device>.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, markdown_table, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ASSIGNERS = {
    "vanilla": ("vanilla", {}),
    "linear": ("linear", {}),
    "knn": ("knn", {"k": 4}),
    "knn-pool": ("knn-pool", {"ratio": 2, "n_neighbors": 8}),
    "scale": ("scale", {"s": 2.0}),
}
PLUGINS = {"sinkhorn": ("sinkhorn", {})}  # measured when installed (not a built-in)


def _cfg(group: str, name: str):
    """A preset as the trainer composes it (its schema defaults, then its own values)."""
    from immiscible_policy.cli._hydra import load_preset

    return load_preset(group, name)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def policy_setup(batch: int, device: torch.device):
    """(prepare(policy, gen), train(policy, prepared), x0, make_core(assigner)) for the policy trainer at
    PushT shapes: a step is ``train(prepare(...))``; ``trainer.pair_ahead`` runs ``prepare`` a step ahead."""
    from immiscible_policy.noising import NoisingCore, build_scheduler, trainer_objective
    from immiscible_policy.policy.build import build_model
    from immiscible_policy.policy.model import DiffusionPolicy
    from immiscible_policy.training.optimization import make_optimization, optimizer_step

    tr, m = _cfg("trainer", "cpu_default"), _cfg("model", "unet1d_cpu")
    horizon, action_dim, n_obs, obs_dim = 16, 2, 2, 20
    model = build_model(m, action_dim, obs_dim, n_obs).to(device)
    opt = make_optimization(model, tr, 10**6)
    g = torch.Generator().manual_seed(0)
    x0 = (torch.rand(batch, horizon, action_dim, generator=g) * 2 - 1).to(device)
    obs = (torch.rand(batch, n_obs, obs_dim, generator=g) * 2 - 1).to(device)

    def make_core(assigner):
        sched = build_scheduler(
            trainer_objective(tr),
            num_train_timesteps=int(tr.num_train_timesteps),
            beta_schedule=str(tr.beta_schedule),
        )
        core = NoisingCore(sched, assigner)
        return DiffusionPolicy(
            model, core, None, horizon=horizon, n_obs_steps=n_obs, n_action_steps=8, action_dim=action_dim
        )

    def prepare(policy, gen):
        return policy.prepare({"obs": obs, "action": x0}, gen)

    def train(policy, prepared):
        loss, _, _ = policy.loss(None, prepared=prepared)
        optimizer_step(model, opt, loss, tr.grad_clip)

    return prepare, train, x0, make_core


def image_setup(batch: int, device: torch.device):
    """(prepare, train, x0, make_core) for the image trainer at Fashion-MNIST shapes (1 x 32 x 32)."""
    import torch.nn.functional as F
    from diffusers import DDPMScheduler

    from immiscible_policy.image.model import build_unet, predict
    from immiscible_policy.image.train import use_bf16
    from immiscible_policy.noising import NoisingCore
    from immiscible_policy.training.optimization import make_optimization, optimizer_step

    tr, m = _cfg("trainer", "image_cpu"), _cfg("model", "unet2d_small")
    model = build_unet(m, image_size=32, channels=1, num_classes=0).to(device)
    opt = make_optimization(model, tr, 10**6)
    bf16 = use_bf16("auto", device)
    x0 = (torch.rand(batch, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(device)

    def make_core(assigner):
        sched = DDPMScheduler(
            num_train_timesteps=int(tr.num_train_timesteps),
            beta_schedule=str(tr.beta_schedule),
            clip_sample=True,
            prediction_type=str(tr.objective),
        )
        return NoisingCore(sched, assigner)

    def prepare(core, gen):
        return core.training_pair(x0, generator=gen)

    def train(core, tp):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            pred = predict(model, tp.x_t, tp.model_timesteps)
        loss = F.mse_loss(pred.float(), tp.target)
        optimizer_step(model, opt, loss, tr.grad_clip)

    return prepare, train, x0, make_core


def measure(
    trainer: str, batch: int, device: torch.device, names: dict, rounds: int, ahead: tuple[str, ...] = ()
) -> list[dict]:
    """Interleaved rounds: per round one training step and one bare ``pair`` call of each assigner, and
    for each name in ``ahead`` a step with ``trainer.pair_ahead``'s overlap (label ``<name> (pair_ahead)``).

    A look-ahead step is timed in steady state: its pair was prepared synchronously, the next step's pair
    is started on the thread, then the step trains and waits for that pair; the timed region is the train
    plus any wait, which is what a step costs when the solve overlaps the previous step."""
    from immiscible_policy import create
    from immiscible_policy.noising import noise_generator
    from immiscible_policy.pair_ahead import PairAhead

    prepare, train, x0, make_core = (policy_setup if trainer == "policy" else image_setup)(batch, device)
    ahead_labels = [f"{k} (pair_ahead)" for k in ahead]
    labels = list(names) + ahead_labels
    assigners = {k: create(n, **p) for k, (n, p) in names.items()}
    cores = {k: make_core(a) for k, a in assigners.items()}
    for k, lab in zip(ahead, ahead_labels):
        assigners[lab], cores[lab] = assigners[k], cores[k]
    step_t: dict[str, list[float]] = {k: [] for k in labels}
    pair_t: dict[str, list[float]] = {k: [] for k in labels}
    pool = PairAhead(True)
    for r in range(rounds + 1):  # round 0 warms up (allocations, faiss/scipy import, autotuning)
        order = labels[r % len(labels) :] + labels[: r % len(labels)]
        for k in order:
            gen = noise_generator(0, 0, r, device)
            noise = torch.randn(x0.shape, generator=gen, device=device, dtype=x0.dtype)
            _sync(device)
            t0 = time.perf_counter()
            assigners[k].pair(x0, noise, generator=gen)
            _sync(device)
            t1 = time.perf_counter()
            if k in ahead_labels:
                prepared = prepare(cores[k], noise_generator(0, 0, r, device))
                _sync(device)
                t1 = time.perf_counter()
                # start the next step's pair on the thread (key 1), as the trainer does, then train
                make_next = partial(prepare, cores[k], noise_generator(0, 1, r, device))
                pool.get(0, lambda: None, 1, make_next)
                train(cores[k], prepared)
                pool.get(1, lambda: None)  # the overlapped pair: a wait only if it outlasted the step
            else:
                train(cores[k], prepare(cores[k], noise_generator(0, 0, r, device)))
            _sync(device)
            t2 = time.perf_counter()
            if r:
                pair_t[k].append((t1 - t0) * 1e3)
                step_t[k].append((t2 - t1) * 1e3)
        if r and r % 5 == 0:
            print(f"  {trainer} round {r}/{rounds}", flush=True)
    pool.close()
    base = statistics.median(step_t["vanilla"])
    out = []
    for k in labels:
        s, p = statistics.median(step_t[k]), statistics.median(pair_t[k])
        paired = statistics.median(a - v for a, v in zip(step_t[k], step_t["vanilla"]))
        out.append(
            {
                "trainer": trainer,
                "assigner": k,
                "params": names[k.removesuffix(" (pair_ahead)")][1],
                "batch": batch,
                "device": str(device),
                "rounds": rounds,
                "step_ms": s,
                "pair_ms": p,
                "pair_pct_of_step": 100 * p / base,
                "step_overhead_pct": 100 * (s - base) / base,
                "paired_overhead_pct": 100 * paired / base,
                "step_ms_per_round": step_t[k],
                "pair_ms_per_round": pair_t[k],
            }
        )
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--policy-batch", type=int, default=256)
    p.add_argument("--image-batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=30, help="interleaved timed rounds per trainer")
    p.add_argument(
        "--image-rounds", type=int, default=None, help="rounds for the image trainer (default --rounds)"
    )
    p.add_argument("--trainers", nargs="+", default=["policy", "image"], choices=["policy", "image"])
    p.add_argument("--quick", action="store_true", help="3 rounds, smoke only")
    p.add_argument(
        "--pair-ahead",
        nargs="*",
        default=["linear"],
        help="assigners also measured with trainer.pair_ahead's overlap (default: linear)",
    )
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    dev = args.device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but CUDA is not available here; use --device cpu.")
    device = torch.device(dev)
    out = args.out or RESULTS / f"core_throughput_{device.type}.json"

    from immiscible_policy import available

    names = dict(ASSIGNERS)
    names.update({k: v for k, v in PLUGINS.items() if v[0] in available()})
    rounds = 3 if args.quick else args.rounds
    results = []
    for trainer in args.trainers:
        batch = args.policy_batch if trainer == "policy" else args.image_batch
        n = rounds if trainer == "policy" or args.quick else (args.image_rounds or rounds)
        print(f"{trainer}: batch {batch} on {device}, {n} rounds of {len(names)} assigners", flush=True)
        results += measure(trainer, batch, device, names, n, tuple(args.pair_ahead))

    rows = [
        [
            r["trainer"],
            r["batch"],
            r["assigner"] + ("" if r["assigner"].removesuffix(" (pair_ahead)") in ASSIGNERS else " (plugin)"),
            f"{r['step_ms']:.1f}",
            f"{r['pair_ms']:.2f}",
            f"{r['pair_pct_of_step']:.2f}%",
            f"{r['step_overhead_pct']:+.1f}%",
            f"{r['paired_overhead_pct']:+.1f}%",
        ]
        for r in results
    ]
    info = machine()
    where = info["cuda"] if device.type == "cuda" else f"CPU ({info['cpu']}), {info['threads']} thread(s)"
    md = f"### Training-step throughput on {where}\n\n" + markdown_table(
        [
            "trainer",
            "B",
            "assigner",
            "step ms (median)",
            "pair ms (median)",
            "pair % of step",
            "step +% vs vanilla",
            "paired +% vs vanilla",
        ],
        rows,
    )
    payload = {"machine": info, "device": str(device), "results": results, "command": " ".join(sys.argv)}
    write_json(out, payload)
    out.with_suffix(".md").write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
