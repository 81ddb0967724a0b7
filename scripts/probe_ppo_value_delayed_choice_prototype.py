"""Prototype probe (long_horizons.md section 18): ppo_gae.py's value one step after each DelayedChoice choice, V(s_1), against the
true discounted value gamma^(d-1) R. Usage: python scripts/probe_ppo_value_delayed_choice_prototype.py runs/NAME/checkpoint.pt ..."""
import sys
import gymnasium as gym, numpy as np, torch
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ppo_gae as m
for path in sys.argv[1:]:
    ck = m.load_checkpoint(path, "checkpoint", torch.device("cpu"))
    args = m.saved_args(ck); args.num_envs = 1
    envs = m.make_envs(args); agent = m.Agent(envs, args); agent.load_state_dict(ck["model"]); envs.close()
    env = gym.make(args.env_id.split(":")[-1]).unwrapped
    out = []
    for choice, delay in enumerate(env.delays):
        obs, _ = env.reset(seed=0); o0 = obs
        obs, r, *_ = env.step(choice)
        R = env.bonus_reward if choice == env.bonus else 1.0
        with torch.no_grad():
            v = agent.get_value(torch.as_tensor(np.array([obs]))).item()
        out.append(f"d{delay}: V(s_1) {v:.2f} (true {R * args.gamma ** (delay - 1):.2f})")
    print(path.split('/')[-2], " | ".join(out))
