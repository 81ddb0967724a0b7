# far30, no near reward pending: the ensemble's gate g = max(0, 1 - spread/signal) and P(invest) by progress (P3O_GATE prototype)
# usage: P3O_GATE=5 [P3O_GATE_TORSO=1] python scripts/probe_gate_far30_prototype.py . RUN_DIR/checkpoint.pt
import sys, torch
sys.path.insert(0, sys.argv[1])
import p3o, scripts.two_horizons  # noqa
ck = p3o.load_checkpoint(sys.argv[2], "checkpoint", torch.device("cpu"))
args = p3o.saved_args(ck); args.num_envs = 1
agent = p3o.Agent(p3o.make_envs(args), args); agent.load_state_dict(ck["model"])
D, L = 30, 135
for t in (10, 60, 100):
    obs = torch.zeros(D, 5); obs[:, 0] = torch.arange(D) / D; obs[:, 1] = (L - t) / L
    with torch.no_grad():
        su = agent.action_effect(obs, torch.zeros(D, dtype=torch.long))[1]  # [D, 2, H]
        probs = torch.softmax(agent.actor(agent.features(obs)[0]), -1)[:, 1]
    s, u = su[:, 0].sum(1), su[:, 1].sum(1)
    g = (1 - u / s.clamp(min=1e-12)).clamp(min=0)
    print(f"t={t}: gate by progress:", " ".join(f"{x:.2f}" for x in g.tolist()))
    print(f"      P(invest):      ", " ".join(f"{x:.2f}" for x in probs.tolist()))
