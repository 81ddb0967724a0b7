"""scripts/two_horizons.py: the TwoHorizons env, checked by hand on small settings."""

import importlib
import itertools
import math
import subprocess
import sys
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import scripts.two_horizons as th  # noqa: E402  (registers the ids)
from scripts.two_horizons import COLLECT, INVEST, TwoHorizons  # noqa: E402

SMALL = dict(near_delay=2, far_delay=3, episode_length=6)  # far_reward defaults to 2 * 3 = 6


def play(env, actions):
    """Rewards of each step, and the (terminated, truncated) flags of each step."""
    env.reset(seed=0)
    rewards, flags = [], []
    for a in actions:
        _, r, term, trunc, _ = env.step(a)
        rewards.append(r)
        flags.append((term, trunc))
    return rewards, flags


def test_always_collect_by_hand():
    # near_delay 2, episode 6 steps: collects at steps 0..5 are paid at steps 2..7; steps 6, 7 do not
    # exist, so steps 2, 3, 4, 5 pay 1 each: return 4 = episode_length - near_delay.
    rewards, _ = play(TwoHorizons(**SMALL), [COLLECT] * 6)
    assert rewards == [0, 0, 1, 1, 1, 1]
    assert th.myopic_return(**SMALL) == 4


def test_always_invest_by_hand():
    # far_delay 3: progress reaches 3 on steps 2 and 5, each paying far_reward 6: return 12 = (6 // 3) * 6.
    rewards, _ = play(TwoHorizons(**SMALL), [INVEST] * 6)
    assert rewards == [0, 0, 6, 0, 0, 6]
    assert th.optimal_return(**SMALL) == 12


def test_optimal_when_length_is_not_a_multiple():
    # episode 7: collect once first (paid on step 2), then invest 6 times (paid on steps 3 and 6): 1 + 6 + 6 = 13.
    params = dict(SMALL, episode_length=7)
    rewards, _ = play(TwoHorizons(**params), [COLLECT] + [INVEST] * 6)
    assert rewards == [0, 0, 1, 6, 0, 0, 6]
    assert th.optimal_return(**params) == 13


@pytest.mark.parametrize(
    "params",
    [SMALL, dict(SMALL, episode_length=7), dict(near_delay=1, far_delay=2, episode_length=8),
     dict(near_delay=3, far_delay=4, far_reward=3, episode_length=9),  # far_reward < far_delay: collecting wins
     dict(near_delay=4, far_delay=3, far_reward=5.5, episode_length=10)],
)  # fmt: skip
def test_returns_match_brute_force(params):
    """optimal_return is the best and random_return the mean over all 2^L action sequences."""
    env = TwoHorizons(**params)
    L = env.episode_length
    totals = [sum(play(env, seq)[0]) for seq in itertools.product((COLLECT, INVEST), repeat=L)]
    assert max(totals) == pytest.approx(th.optimal_return(**params))
    assert np.mean(totals) == pytest.approx(th.random_return(**params))
    assert sum(play(env, [COLLECT] * L)[0]) == pytest.approx(th.myopic_return(**params))


def test_variant_returns():
    for far_delay in th.VARIANT_DELAYS:
        p = th.variant_params(far_delay)
        assert th.optimal_return(**p) == 4 * p["far_reward"] + far_delay // 2  # four cycles, the slack collecting
        assert th.myopic_return(**p) == p["episode_length"] - p["near_delay"]
        assert th.myopic_return(**p) < th.random_return(**p) < th.optimal_return(**p)


@pytest.mark.parametrize("t", [0, 1, 5])
def test_near_reward_arrives_exactly_near_delay_steps_later(t):
    env = TwoHorizons(near_delay=3, far_delay=50, episode_length=20)
    actions = [INVEST] * 20
    actions[t] = COLLECT
    rewards, _ = play(env, actions)
    assert rewards == [1.0 if i == t + 3 else 0.0 for i in range(20)]


def test_far_reward_on_the_step_progress_reaches_far_delay_and_collect_keeps_progress():
    env = TwoHorizons(near_delay=1, far_delay=3, far_reward=10, episode_length=12)
    # invests at steps 0, 2, 5 (progress 1, 2, 3): the far reward is paid on step 5; collects at 1, 3, 4
    # are paid on steps 2, 4, 5. Then invests at 6, 7, 8 pay on step 8; step 9's collect is paid on step 10.
    actions = [INVEST, COLLECT, INVEST, COLLECT, COLLECT, INVEST, INVEST, INVEST, INVEST, COLLECT, INVEST, INVEST]
    rewards, _ = play(env, actions)
    assert rewards == [0, 0, 1, 0, 1, 11, 0, 0, 10, 0, 1, 0]


def test_observation_by_hand():
    env = TwoHorizons(**SMALL)
    obs, info = env.reset(seed=1)
    assert obs.dtype == np.float32 and obs.shape == (4,) and info == {}
    np.testing.assert_array_equal(obs, [0, 1, 0, 0])  # progress, time left, near reward in 1 step, in 2 steps
    obs, r, *_ = env.step(COLLECT)
    np.testing.assert_allclose(obs, [0, 5 / 6, 0, 1], rtol=1e-6)
    obs, r, *_ = env.step(INVEST)
    np.testing.assert_allclose(obs, [1 / 3, 4 / 6, 1, 0], rtol=1e-6)
    obs, r, *_ = env.step(INVEST)
    assert r == 1
    np.testing.assert_allclose(obs, [2 / 3, 3 / 6, 0, 0], rtol=1e-6)


def test_terminates_at_episode_length():
    env = TwoHorizons(**SMALL)
    _, flags = play(env, [COLLECT, INVEST] * 3)
    assert flags == [(False, False)] * 5 + [(True, False)]
    with pytest.raises(RuntimeError):
        env.step(COLLECT)
    env.reset()  # and it starts again
    assert env.step(COLLECT)[2] is False


@pytest.mark.parametrize("near_delay", [1, 3, 20])  # 20: beyond the lookup table of queue bits
def test_observations_in_bounds_and_returned_as_copies(near_delay):
    env = gym.make("TwoHorizons-v0", near_delay=near_delay, far_delay=7, episode_length=50)
    rng = np.random.default_rng(0)
    obs, _ = env.reset(seed=0)
    seen = [obs]
    for _ in range(50):
        obs, r, term, trunc, _ = env.step(int(rng.integers(2)))
        assert obs.dtype == np.float32 and env.observation_space.contains(obs)
        seen.append(obs)
    assert term and not trunc and obs[1] == 0
    assert len({o.tobytes() for o in seen}) == len(seen)  # earlier observations were not overwritten


def test_queue_bits_beyond_the_lookup_table():
    env = TwoHorizons(near_delay=20, far_delay=5, episode_length=40)
    env.reset()
    obs, *_ = env.step(COLLECT)
    assert obs[2 + 19] == 1 and obs[2:2 + 19].sum() == 0
    for _ in range(19):
        obs, r, *_ = env.step(INVEST)
        assert r in (0, 10)
    assert obs[2] == 1 and obs[3:].sum() == 0
    assert env.step(COLLECT)[1] == 1  # the collect of step 0, paid on step 20


def test_seeding_determinism():
    actions = np.random.default_rng(3).integers(0, 2, 400)
    runs = []
    for seed in (7, 7, 8):
        env = gym.make("TwoHorizons-far100-v0")
        obs, _ = env.reset(seed=seed)
        trace = [obs]
        for a in actions:
            obs, r, *_ = env.step(a)
            trace += [obs, r]
        runs.append(trace)
    for a, b in zip(runs[0], runs[1]):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(runs[0], runs[2]):  # no randomness: the seed changes nothing
        np.testing.assert_array_equal(a, b)


def episode_steps(env, **reset_kwargs):
    """(time-left feature after the reset, number of steps until termination) of one episode of collects."""
    obs, _ = env.reset(**reset_kwargs)
    steps, term = 0, False
    while not term:
        _, _, term, _, _ = env.step(COLLECT)
        steps += 1
    return obs[1], steps


def test_staggered_first_episode_joins_late_and_later_ones_start_at_zero():
    L = SMALL["episode_length"]
    starts = set()
    for seed in range(20):
        env = TwoHorizons(**SMALL, staggered=True)
        time_left, steps = episode_steps(env, seed=seed)
        assert steps in range(1, L + 1) and time_left == pytest.approx(steps / L)  # joined at step L - steps
        starts.add(L - steps)
        assert episode_steps(env, seed=seed) == (time_left, steps)  # the same seed joins at the same step
        for _ in range(2):  # unseeded resets (a vector env's autoreset): full episodes
            assert episode_steps(env) == (1.0, L)
        assert episode_steps(TwoHorizons(**SMALL), seed=seed) == (1.0, L)  # not staggered: always step 0
    assert len(starts) >= 3  # the seeds spread the starts


def in_step(env_id, seed, steps, time_left_index):
    """For each of `steps` steps of a 4-env vector env (always action 0): are all envs at the same
    step of their episodes? (read from the observation's time left)"""
    envs = gym.vector.SyncVectorEnv([lambda: gym.make(env_id) for _ in range(4)])
    obs, _ = envs.reset(seed=seed)
    phases = [obs[:, time_left_index].copy()]
    for _ in range(steps):
        obs, *_ = envs.step(np.zeros(4, dtype=np.int64))
        phases.append(obs[:, time_left_index].copy())
    return [len(set(p.tolist())) == 1 for p in phases]


def test_staggered_vector_env_stays_out_of_step():
    for staggered in (False, True):  # three episodes and more (each autoreset takes a step of its own)
        steps = in_step(th.variant_id(10, staggered), seed=1, steps=3 * 46, time_left_index=1)
        assert all(steps) if not staggered else not any(steps)


@pytest.mark.parametrize(
    "kwargs",
    [dict(near_delay=0), dict(near_delay=-1), dict(near_delay=1.5), dict(near_delay=True), dict(near_delay="3"),
     dict(far_delay=0), dict(far_delay=2.0), dict(far_reward=0), dict(far_reward=-1), dict(far_reward=math.nan),
     dict(far_reward=math.inf), dict(far_reward="5"), dict(episode_length=0), dict(episode_length=None, far_delay=-3),
     dict(staggered=1), dict(staggered="yes"), dict(render_mode="human")],
)  # fmt: skip
def test_validation_errors(kwargs):
    with pytest.raises(ValueError, match="TwoHorizons"):
        TwoHorizons(**kwargs)
    with pytest.raises(ValueError, match="TwoHorizons"):
        gym.make("TwoHorizons-v0", **kwargs)


def test_invalid_action():
    env = TwoHorizons()
    env.reset()
    with pytest.raises(ValueError, match="action"):
        env.step(2)


@pytest.mark.parametrize("env_id,kwargs", [("TwoHorizons-v0", SMALL), ("TwoHorizons-v0", dict(near_delay=20)),
                                           ("TwoHorizons-far10-v0", {}), ("TwoHorizons-far10-staggered-v0", {})])  # fmt: skip
def test_gymnasium_env_checker(env_id, kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a checker warning fails the test
        check_env(gym.make(env_id, **kwargs).unwrapped)


def test_registration_kwargs_and_reimport():
    assert gym.make("TwoHorizons-v0", far_delay=5).unwrapped.episode_length == 22
    env = gym.make("TwoHorizons-v0", near_delay=4, far_delay=6, far_reward=7.5, episode_length=13).unwrapped
    assert (env.near_delay, env.far_delay, env.far_reward, env.episode_length) == (4, 6, 7.5, 13)
    for far_delay in th.VARIANT_DELAYS:
        env = gym.make(th.variant_id(far_delay)).unwrapped
        assert (env.near_delay, env.far_delay, env.far_reward, env.episode_length) == (3, far_delay, 2 * far_delay, 4 * far_delay + far_delay // 2)
        assert env.staggered is False
        staggered = gym.make(th.variant_id(far_delay, staggered=True)).unwrapped
        assert staggered.spec.id == f"TwoHorizons-far{far_delay}-staggered-v0" and staggered.staggered is True
        assert (staggered.near_delay, staggered.far_delay, staggered.far_reward, staggered.episode_length) == (env.near_delay, env.far_delay, env.far_reward, env.episode_length)
    importlib.reload(th)  # registering again must not fail
    env = gym.make("scripts.two_horizons:TwoHorizons-far10-v0")  # the form the training scripts' --env-id takes
    assert env.spec.id == "TwoHorizons-far10-v0" and env.unwrapped.far_delay == 10
    assert gym.make("TwoHorizons-far10-v0").spec.max_episode_steps is None  # the end is a termination, no TimeLimit


def test_critical_gamma():
    p = th.variant_params(100)
    g = th.critical_gamma(**p)
    assert 0.98 < g < 0.99
    invest, collect = th.discounted_returns(g + 1e-3, **p)
    assert invest > collect
    invest, collect = th.discounted_returns(g - 1e-3, **p)
    assert invest < collect
    assert math.isnan(th.critical_gamma(near_delay=1, far_delay=4, far_reward=2, episode_length=8))


def brute_force_invest_advantage(params, prefix, invest_prob):
    """Return after prefix + [INVEST] + rest minus after prefix + [COLLECT] + rest, averaged over every
    continuation `rest`, each weighted by its probability when every action invests with invest_prob."""
    env = TwoHorizons(**params)
    rest_len = env.episode_length - len(prefix) - 1
    total = 0.0
    for rest in itertools.product((COLLECT, INVEST), repeat=rest_len):
        k = sum(a == INVEST for a in rest)
        weight = invest_prob**k * (1 - invest_prob) ** (rest_len - k)
        gain = sum(play(env, list(prefix) + [INVEST] + list(rest))[0]) - sum(play(env, list(prefix) + [COLLECT] + list(rest))[0])
        total += weight * gain
    return total


@pytest.mark.parametrize(
    "params", [SMALL, dict(near_delay=1, far_delay=2, episode_length=7), dict(near_delay=3, far_delay=4, far_reward=3, episode_length=8)]
)
@pytest.mark.parametrize("invest_prob", [0.5, 0.3, 0.9, 1.0])
def test_invest_advantage_matches_every_continuation(params, invest_prob):
    """invest_advantage at every reachable state (every prefix of actions) against the brute force over
    every continuation; mean_invest_advantage against the same states weighted by their probability."""
    L = params["episode_length"]
    mean = better = worse = 0.0
    for t in range(L):
        for prefix in itertools.product((COLLECT, INVEST), repeat=t):
            k = sum(a == INVEST for a in prefix)
            p_prefix = invest_prob**k * (1 - invest_prob) ** (t - k)
            progress = k % params["far_delay"]
            brute = brute_force_invest_advantage(params, prefix, invest_prob)
            assert th.invest_advantage(t, progress, invest_prob, **params) == pytest.approx(brute, abs=1e-12)
            mean += p_prefix * brute / L
            better += p_prefix * (brute > 1e-12) / L
            worse += p_prefix * (brute < -1e-12) / L
    assert th.mean_invest_advantage(invest_prob, **params) == pytest.approx((mean, better, worse), abs=1e-12)


def test_invest_advantage_by_hand():
    # SMALL (near 2, far 3, reward 6, 6 steps). Last step: nothing follows, a collect is no longer paid,
    # and an invest pays 6 only if it completes the cycle.
    assert th.invest_advantage(5, 2, 0.5, **SMALL) == 6.0
    assert th.invest_advantage(5, 1, 0.5, **SMALL) == 0.0
    # Step 3, counter 0, two later steps that always collect: the invest never completes a cycle and the
    # collect (paid on step 5) is lost: -1.
    assert th.invest_advantage(3, 0, 0.0, **SMALL) == -1.0
    # Step 3, counter 0, two later steps that always invest: the invest completes the cycle on step 5: 6 - 1.
    assert th.invest_advantage(3, 0, 1.0, **SMALL) == 5.0


def test_random_play_on_the_variants():
    """The figures the module docstring quotes: under uniformly random play investing pays on average at
    D = 10 and 30, and loses at D = 100, in most of the states random play visits."""
    got = {D: th.mean_invest_advantage(0.5, **th.variant_params(D)) for D in (10, 30, 100)}
    assert [round(got[D][0], 2) for D in (10, 30, 100)] == [0.93, 0.62, -0.58]
    assert round(got[100][2], 2) == 0.91


@pytest.mark.parametrize("kwargs", [dict(invest_prob=1.5), dict(invest_prob=-0.1), dict(invest_prob=True), dict(t=6), dict(progress=3), dict(t=-1)])
def test_invest_advantage_rejects_bad_input(kwargs):
    args = dict(t=0, progress=0, invest_prob=0.5) | kwargs
    with pytest.raises(ValueError, match="TwoHorizons"):
        th.invest_advantage(**args, **SMALL)


@pytest.mark.parametrize("script", ["p3o.py", "ppo_gae.py"])
def test_training_script_runs_on_the_env(tmp_path, script):
    """The training scripts resolve the module:EnvId form. cwd is a temporary folder so that runs/
    lands there; `scripts` is importable because the script's folder (the repository root) heads sys.path."""
    result = subprocess.run(
        [sys.executable, str(ROOT / script), "--env-id", "scripts.two_horizons:TwoHorizons-far10-v0",
         "--num-envs", "2", "--num-steps", "32", "--total-timesteps", "128", "--device", "cpu"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (run_dir,) = (tmp_path / "runs").iterdir()
    events = EventAccumulator(str(run_dir))
    events.Reload()
    returns = [e.value for e in events.Scalars("charts/episodic_return")]
    assert len(returns) >= 2  # 45-step episodes: 2 envs x 64 steps finish at least 2
    assert all(0 <= r <= th.optimal_return(**th.variant_params(10)) for r in returns)


# --- scripts/two_horizons_signal.py: the exact signal and noise of a sampled advantage ---------------

from scripts import two_horizons_signal as signal  # noqa: E402


def brute_force_signal_and_noise(params, policy, horizon, gamma, eps, lam=None):
    """Every action sequence of a small episode, played in the env itself, with its probability under
    the policy; then, per visited (step, observation), the window return's mean and variance after
    each action, aggregated as the script does (each step alike, states by their probability). With
    lam: the lambda-return to the end, its critic the exact value of each (step, observation)."""
    env = TwoHorizons(**params)
    L, D = env.episode_length, env.far_delay
    episodes = []
    for actions in itertools.product((COLLECT, INVEST), repeat=L):
        obs, _ = env.reset(seed=0)
        prob, observations, rewards = 1.0, [], []
        for t, a in enumerate(actions):
            progress = env._progress
            can_complete = D - progress <= L - t
            p_invest = 0.5 if policy == "random" else (1 - eps / 2 if can_complete else eps / 2)
            prob *= p_invest if a == INVEST else 1 - p_invest
            observations.append(obs.tobytes())
            obs, r, *_ = env.step(a)
            rewards.append(r)
        episodes.append((actions, prob, observations, rewards))
    value = {}  # (t, obs) -> [prob, sum prob * return to the end]
    for _, prob, observations, rewards in episodes:
        for t in range(L):
            v = value.setdefault((t, observations[t]), [0.0, 0.0])
            v[0] += prob
            v[1] += prob * sum(rewards[t:])
    stats = {}  # (t, obs bytes) -> {action: [prob, sum prob * G, sum prob * G^2]}
    for actions, prob, observations, rewards in episodes:
        lam_return = [0.0] * (L + 1)
        for t in reversed(range(L)):
            v_next = 0.0 if t + 1 == L else value[t + 1, observations[t + 1]][1] / value[t + 1, observations[t + 1]][0]
            lam_return[t] = rewards[t] + (1 - lam) * v_next + lam * lam_return[t + 1] if lam is not None else 0.0
        for t, a in enumerate(actions):
            window = rewards[t:min(t + horizon, L)]
            G = sum(gamma**j * r for j, r in enumerate(window)) if lam is None else lam_return[t]
            entry = stats.setdefault((t, observations[t]), {COLLECT: [0.0, 0.0, 0.0], INVEST: [0.0, 0.0, 0.0]})[a]
            entry[0] += prob
            entry[1] += prob * G
            entry[2] += prob * G * G
    mean = rms2 = noise2 = 0.0
    for (t, _), by_action in stats.items():
        p_state = by_action[COLLECT][0] + by_action[INVEST][0]
        m = {a: v[1] / v[0] for a, v in by_action.items()}
        var = {a: max(0.0, v[2] / v[0] - m[a] ** 2) for a, v in by_action.items()}  # (rounding)
        pi = {a: v[0] / p_state for a, v in by_action.items()}
        s = m[INVEST] - m[COLLECT]
        mean += p_state * s / L
        rms2 += p_state * s * s / L
        noise2 += p_state * (pi[INVEST] * var[INVEST] + pi[COLLECT] * var[COLLECT]) / L
    return mean, math.sqrt(rms2), math.sqrt(noise2)


@pytest.mark.parametrize("policy", ["random", "optimal"])
@pytest.mark.parametrize("horizon,gamma", [(1, 1.0), (3, 1.0), (5, 1.0), (20, 1.0), (20, 0.9)])
def test_signal_and_noise_match_every_action_sequence(policy, horizon, gamma):
    # 2^9 sequences of a 9-step episode (up to three far cycles, a near delay of 2): windows shorter
    # than, equal to and longer than the episode, discounted and not, both policies
    params = dict(near_delay=2, far_delay=3, far_reward=5.0, episode_length=9)
    got = signal.signal_and_noise(params, policy, horizon, gamma, eps=0.3)
    want = brute_force_signal_and_noise(params, policy, horizon, gamma, eps=0.3)
    assert got == pytest.approx(want, rel=1e-9, abs=1e-6)  # (a square root of rounding: up to 1e-8)
    # one step: no later action, no noise; longer windows: the later actions add some
    assert (got[2] == 0) if horizon == 1 else (got[2] > 0)


@pytest.mark.parametrize("far_delay", [10, 30, 100])
def test_whole_episode_signal_is_the_exact_invest_advantage(far_delay):
    # an independent route: with a window covering the episode and uniformly random later actions,
    # the mean signal is mean_invest_advantage(0.5) (+0.93 / +0.62 / -0.58 for D = 10 / 30 / 100)
    params = th.variant_params(far_delay)
    mean, rms, noise = signal.signal_and_noise(params, "random", horizon=10**6, gamma=1.0)
    assert mean == pytest.approx(th.mean_invest_advantage(0.5, **params)[0], rel=1e-9)
    assert rms >= abs(mean) and noise > 0


@pytest.mark.parametrize("policy", ["random", "optimal"])
@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0])
def test_lambda_return_with_an_exact_critic_matches_every_action_sequence(policy, lam):
    params = dict(near_delay=2, far_delay=3, far_reward=5.0, episode_length=9)
    got = signal.signal_and_noise(params, policy, eps=0.3, lam=lam)
    assert got == pytest.approx(brute_force_signal_and_noise(params, policy, 9, 1.0, 0.3, lam=lam), rel=1e-9, abs=1e-6)
    whole_episode = signal.signal_and_noise(params, policy, horizon=9, gamma=1.0, eps=0.3)
    assert got[:2] == pytest.approx(whole_episode[:2], rel=1e-12)  # an exact critic: the same signal
    if lam == 0:  # r_t + V(s_{t+1}): the task is deterministic, so no noise at all
        assert got[2] == pytest.approx(0.0, abs=1e-6)
    elif lam == 1:  # the return itself
        assert got[2] == pytest.approx(whole_episode[2], rel=1e-9)
    else:  # in between: less noise than the return's
        assert 0 < got[2] < whole_episode[2]


def test_signal_and_noise_reject_an_unknown_policy_and_an_empty_window():
    with pytest.raises(ValueError, match="policy must be"):
        signal.signal_and_noise(th.variant_params(10), "greedy", 32)
    with pytest.raises(ValueError, match="horizon must be at least 1, got 0"):
        signal.signal_and_noise(th.variant_params(10), "random", 0)


def test_signal_script_prints_the_table_and_rejects_bad_input():
    script = [sys.executable, str(ROOT / "scripts" / "two_horizons_signal.py")]
    out = subprocess.run(script + ["--far-delay", "10", "--horizons", "8", "64"], capture_output=True, text=True, check=True).stdout
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| uniformly random")]
    assert [r[1].strip() for r in rows] == ["H = 8", "H = 64 (the whole episode)", "the whole episode, lambda 0.97, exact critic", "gamma 0.99, to the end"]
    whole = th.mean_invest_advantage(0.5, **th.variant_params(10))[0]
    assert float(rows[1][2]) == pytest.approx(whole, abs=5e-4) and float(rows[2][2]) == pytest.approx(whole, abs=5e-4)
    for bad_args in (["--gamma", "2"], ["--far-delay", "0"], ["--horizons", "0"]):
        bad = subprocess.run(script + bad_args, capture_output=True, text=True)
        assert bad.returncode == 2 and "need far-delay and horizons >= 1" in bad.stderr, bad_args
