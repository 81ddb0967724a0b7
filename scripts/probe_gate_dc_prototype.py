# per episode step: the ensemble's signal, spread and gate g = max(0, 1 - spread/signal) (P3O_GATE prototype)
# usage: P3O_GATE=5 [P3O_GATE_TORSO=1] python scripts/probe_gate_dc_prototype.py . RUN_DIR/checkpoint.pt
import os, sys, torch, numpy as np, gymnasium as gym
sys.path.insert(0, sys.argv[1])
import p3o, scripts.delayed_choice, scripts.two_horizons  # noqa
ck = p3o.load_checkpoint(sys.argv[2], "checkpoint", torch.device("cpu"))
args = p3o.saved_args(ck); args.num_envs = 1
agent = p3o.Agent(p3o.make_envs(args), args); agent.load_state_dict(ck["model"])
env = gym.make(args.env_id.split(":")[-1])
S, U = {}, {}
bins = [(0, 1), (1, 11), (11, 51), (51, 10**6)] if len(sys.argv) < 4 else [tuple(map(int, b.split("-"))) for b in sys.argv[3].split(",")]
for ep in range(20):
    obs, _ = env.reset(seed=ep); t = 0; done = False
    while not done:
        x = torch.as_tensor(obs, dtype=torch.float32)[None]
        with torch.no_grad():
            a, *_ = agent.get_action_and_value(x)
            su = agent.action_effect(x, a)[1][0]  # [2, H]
        S.setdefault(t, []).append(su[0].sum().item()); U.setdefault(t, []).append(su[1].sum().item())
        obs, r, term, trunc, _ = env.step(a.item()); t += 1; done = term or trunc
for lo, hi in bins:
    s = np.array([x for t in S if lo <= t < hi for x in S[t]]); u = np.array([x for t in U if lo <= t < hi for x in U[t]])
    if len(s): print(f"steps {lo}..{min(hi, max(S)+1)-1}: signal {s.mean():.3g} spread {u.mean():.3g} gate mean {np.clip(1 - u / np.maximum(s, 1e-12), 0, None).mean():.3f}")
