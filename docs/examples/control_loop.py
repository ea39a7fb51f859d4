#!/usr/bin/env python3
"""A fixed-rate control loop driven by an exported policy (what a robot's controller does).

    python docs/examples/control_loop.py --policy runs/pendulum/policy.rlpolicy --rate 500 --seconds 5

Every ``1 / rate`` seconds: read the observation, ``policy.act`` (timed: the decision
latency), apply the action with ``env.step`` (here gymnasium's simulator stands in for the
robot), then wait for the next tick (sleep, then spin for the last ``--spin-us``). A tick
whose work ends after the next tick's start is a deadline miss; the loop then continues from
the current time (no burst of catch-up ticks). Reports the achieved rate, decision latency
p50 / p99 / max, env-step time, misses and the returns of the finished episodes.

Runs with numpy alone (``--backend numpy-int8``, the default): no JAX is imported.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import sys
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--policy", required=True, help="a .rlpolicy file (rlaccel export --run RUN_DIR)")
    p.add_argument("--backend", default="numpy-int8", help="numpy-int8 | numpy-fp32 | onnx-int8 | onnx-fp32 | jax")
    p.add_argument("--env", help="gymnasium env id (default: the one the policy was trained on)")
    p.add_argument("--rate", type=float, default=500.0, help="control rate, Hz")
    p.add_argument("--seconds", type=float, default=5.0, help="how long to run")
    p.add_argument("--spin-us", type=float, default=300.0, help="busy-wait this long before each tick (sleep is coarse)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the report here")
    args = p.parse_args(argv)

    import gymnasium as gym

    from rlaccel import load_policy
    from rlaccel.deploy import PolicyError
    from rlaccel.deploy.evaluate import gym_id

    try:
        policy = load_policy(args.policy, args.backend)
        env = gym.make(args.env or gym_id(policy.meta["env"]))
        policy.check_spaces(env.observation_space, env.action_space)
    except (PolicyError, gym.error.Error) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.rate <= 0 or args.seconds <= 0:
        print("error: --rate and --seconds must be > 0", file=sys.stderr)
        return 2

    period = 1.0 / args.rate
    spin = args.spin_us * 1e-6
    ticks = int(args.seconds * args.rate)
    decide = np.empty(ticks)
    step_s = np.empty(ticks)
    late = np.empty(ticks)  # how long after its scheduled time each tick's work started
    misses = 0
    returns, ep_return = [], 0.0
    obs, _ = env.reset(seed=args.seed)
    clock = time.perf_counter
    start = next_tick = clock()
    scheduled = start
    for k in range(ticks):
        t0 = clock()
        late[k] = t0 - scheduled
        action = policy.act(np.asarray(obs, np.float32))
        t1 = clock()
        obs, reward, terminated, truncated, _ = env.step(action)
        t2 = clock()
        decide[k], step_s[k] = t1 - t0, t2 - t1
        ep_return += float(reward)
        if terminated or truncated:
            returns.append(ep_return)
            ep_return = 0.0
            obs, _ = env.reset()
        next_tick += period
        now = clock()
        if now > next_tick:  # this tick's work overran the next tick's start
            misses += 1
            next_tick = scheduled = now
            continue
        scheduled = next_tick
        if next_tick - now > spin:
            time.sleep(next_tick - now - spin)
        while clock() < next_tick:
            pass
    elapsed = clock() - start
    us = decide * 1e6
    report = {
        "policy": str(args.policy),
        "backend": args.backend,
        "env": env.spec.id if env.spec else args.env,
        "target_hz": args.rate,
        "achieved_hz": ticks / elapsed,
        "ticks": ticks,
        "deadline_misses": misses,
        "decision_us_p50": float(np.percentile(us, 50)),
        "decision_us_p99": float(np.percentile(us, 99)),
        "decision_us_max": float(us.max()),
        "env_step_us_p50": float(np.percentile(step_s * 1e6, 50)),
        "tick_start_late_us_p50": float(np.percentile(late * 1e6, 50)),
        "tick_start_late_us_p99": float(np.percentile(late * 1e6, 99)),
        "episodes": len(returns),
        "mean_return": float(np.mean(returns)) if returns else None,
        "jax_imported": "jax" in sys.modules,
    }
    print(
        f"{report['env']} at {args.rate:.0f} Hz for {args.seconds:.1f} s with {args.backend}: achieved {report['achieved_hz']:.1f} Hz, "
        f"{misses} deadline misses of {ticks} ticks; decision p50 {report['decision_us_p50']:.1f} µs, p99 {report['decision_us_p99']:.1f} µs, "
        f"max {report['decision_us_max']:.0f} µs; env step p50 {report['env_step_us_p50']:.1f} µs; "
        f"tick start late by p50 {report['tick_start_late_us_p50']:.1f} / p99 {report['tick_start_late_us_p99']:.1f} µs; "
        f"{len(returns)} episodes, mean return {report['mean_return'] if returns else float('nan'):.1f}; jax imported: {report['jax_imported']}"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
