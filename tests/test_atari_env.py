"""The Atari environment of ppo_gae.py (p3o.py has the same code), on real ALE games.

DeepMind / CleanRL conventions checked here: up to 30 no-op frames at reset, 4-frame skip with a
max-pool of the last two frames, 84x84 grayscale, 4 stacked frames, a lost life is terminal for
training while the game goes on, FIRE pressed at reset and after each lost life, sign-clipped
training rewards, and the full-game unclipped score for logging. Everything is seeded.
"""

import inspect

import cv2
import gymnasium as gym
import numpy as np
import pytest

import ppo_gae

NOOP = 0


def make_atari(game="Breakout", sticky_actions=False):
    kind, env_id = ppo_gae.resolve_env_id(game)
    assert kind == "atari"
    return ppo_gae.make_env(kind, env_id, sticky_actions)()


def find_wrapper(env, cls):
    while not isinstance(env, cls):
        env = env.env
    return env


# --------------------------------------------------------------------------------------------
# resolve_env_id
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name", ["Breakout", "BreakoutNoFrameskip-v4", "ALE/Breakout-v5", "BreakoutDeterministic-v4", "Breakout-v4"]
)
def test_resolve_env_id_aliases_of_breakout(name):
    assert ppo_gae.resolve_env_id(name) == ("atari", "ALE/Breakout-v5")


@pytest.mark.parametrize("name", ["Pong", "PongNoFrameskip-v4", "ALE/SpaceInvaders-v5"])
def test_resolve_env_id_other_games(name):
    game = name.removeprefix("ALE/").split("-v")[0].removesuffix("NoFrameskip")
    assert ppo_gae.resolve_env_id(name) == ("atari", f"ALE/{game}-v5")


def test_resolve_env_id_unknown_exits_with_suggestion():
    with pytest.raises(SystemExit) as excinfo:
        ppo_gae.resolve_env_id("Breakuot")
    message = str(excinfo.value.code)
    assert "Breakuot" in message
    assert "Did you mean" in message and "Breakout" in message


def test_resolve_env_id_registered_gym_env():
    assert ppo_gae.resolve_env_id("CartPole-v1") == ("gym", "CartPole-v1")


# --------------------------------------------------------------------------------------------
# Observations, sticky actions, no-op reset, frame skip with max-pool
# --------------------------------------------------------------------------------------------
def test_observation_is_four_stacked_84x84_uint8_frames():
    env = make_atari()
    assert env.observation_space.shape == (4, 84, 84)
    assert env.observation_space.dtype == np.uint8
    obs, _ = env.reset(seed=0)
    assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8
    assert obs in env.observation_space
    # after a reset the stack is padded with the reset frame
    assert all(np.array_equal(obs[0], obs[k]) for k in range(1, 4))
    previous = obs
    for _ in range(5):
        obs, _, _, _, _ = env.step(NOOP)
        assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8
        np.testing.assert_array_equal(obs[:3], previous[1:])  # the stack shifts by one frame per step
        previous = obs
    assert obs[-1].any()  # a real (not blank) screen
    assert env.action_space.n == 4  # minimal action set of Breakout: NOOP FIRE RIGHT LEFT
    env.close()


@pytest.mark.parametrize("sticky, probability", [(False, 0.0), (True, 0.25)])
def test_sticky_actions_flag(sticky, probability):
    env = make_atari(sticky_actions=sticky)
    assert env.unwrapped.ale.getFloat("repeat_action_probability") == pytest.approx(probability)
    env.close()


def test_sticky_actions_are_off_by_default():
    assert ppo_gae.Args().sticky_actions is False


def test_noop_reset_takes_1_to_30_noop_frames_then_fire():
    env = make_atari()
    lives_wrapper = find_wrapper(env, ppo_gae.EpisodicLifeFireReset)
    frames = []
    for seed in list(range(8)) + [5]:
        # reset() in the middle of a game only presses FIRE: mark the game as over, as after game over
        lives_wrapper.game_over = True
        _, info = env.reset(seed=seed)
        # the reset observation comes after the no-ops (1 frame each) and one FIRE step (4 frames)
        assert info["episode_frame_number"] == env.unwrapped.ale.getEpisodeFrameNumber()
        frames.append(info["episode_frame_number"] - 4)
    env.close()
    assert all(1 <= n <= 30 for n in frames), frames
    assert len(set(frames)) >= 4, frames  # random, not a constant number of no-ops
    assert frames[-1] == frames[5]  # seeded


def test_frame_skip_4_with_max_pool_of_last_two_frames():
    env = make_atari()
    unwrapped = env.unwrapped
    ale = unwrapped.ale
    obs, _ = env.reset(seed=3)
    for k in range(10):  # move the paddle a bit so that frames differ
        obs, _, _, _, _ = env.step(k % 4)
    state = ale.cloneState()
    frame_before = ale.getEpisodeFrameNumber()
    action = 3  # LEFT
    next_obs, _, _, _, _ = env.step(action)
    assert ale.getEpisodeFrameNumber() - frame_before == 4

    # replay the same 4 frames by hand on the emulator
    ale.restoreState(state)
    screens = []
    for _ in range(4):
        ale.act(unwrapped._action_set[action])
        screens.append(ale.getScreenGrayscale())
    resize = lambda screen: cv2.resize(screen, (84, 84), interpolation=cv2.INTER_AREA)  # noqa: E731
    expected = resize(np.maximum(screens[2], screens[3]))
    np.testing.assert_array_equal(next_obs[-1], expected)
    # the max-pool matters here: the last frame alone gives another picture
    assert not np.array_equal(next_obs[-1], resize(screens[3]))
    env.close()


# --------------------------------------------------------------------------------------------
# Lives: terminal for training, the game goes on, FIRE serves the ball again
# --------------------------------------------------------------------------------------------
def test_life_loss_is_terminal_but_the_game_continues_with_fire():
    env = make_atari()
    ale = env.unwrapped.ale
    assert find_wrapper(env, ppo_gae.EpisodicLifeFireReset).start_action == 1  # FIRE
    obs, info = env.reset(seed=0)
    assert ale.lives() == 5 and info["lives"] == 5
    life_losses = 0
    steps = 0
    while True:
        lives_before = ale.lives()
        obs, reward, terminated, truncated, info = env.step(NOOP)  # the paddle never moves
        steps += 1
        assert steps <= 2000, "Breakout did not end within 2000 NOOP steps: is the ball served after a lost life?"
        assert not truncated
        lives = ale.lives()
        if lives == lives_before:
            assert not terminated
            continue
        assert lives == lives_before - 1
        assert terminated  # every lost life ends the training episode
        if lives == 0:
            assert "episode" in info  # game over: the full game's statistics
            break
        life_losses += 1
        assert "episode" not in info  # a lost life is not the end of the game
        frame_at_loss = ale.getEpisodeFrameNumber()
        obs, info = env.reset()
        # no game restart: same lives, the frame count continues by exactly one FIRE step
        assert ale.lives() == lives and info["lives"] == lives
        assert ale.getEpisodeFrameNumber() == frame_at_loss + 4
        assert not ale.game_over()
        assert all(np.array_equal(obs[0], obs[k]) for k in range(1, 4))  # a fresh frame stack
    # every one of the 5 lives was lost with NOOP only: the ball came back after each FIRE
    assert life_losses == 4
    assert ale.game_over()

    # after game over, reset starts a new game
    obs, info = env.reset()
    assert ale.lives() == 5 and info["lives"] == 5
    assert ale.getEpisodeFrameNumber() <= 30 + 4
    env.close()


def test_without_fire_breakout_never_serves_the_ball():
    """Control for the test above: with NOOP instead of FIRE at reset, no life is ever lost."""
    env = make_atari()
    find_wrapper(env, ppo_gae.EpisodicLifeFireReset).start_action = NOOP
    env.reset(seed=0)
    for _ in range(500):
        _, _, terminated, truncated, _ = env.step(NOOP)
        assert not (terminated or truncated)
    assert env.unwrapped.ale.lives() == 5
    env.close()


class FakeAtari(gym.Env):
    """Just enough of an ALE env for EpisodicLifeFireReset: lives, action meanings, scripted ends."""

    observation_space = gym.spaces.Box(0, 255, (1,), np.uint8)
    action_space = gym.spaces.Discrete(4)

    def __init__(self, script):
        self.script = list(script)  # per step: (lives after the step, terminated, truncated)
        self.resets = 0
        self.actions = []
        outer = self

        class Ale:
            def lives(self):
                return outer.current_lives

        self.ale = Ale()
        self.current_lives = 3

    def get_action_meanings(self):
        return ["NOOP", "FIRE", "RIGHT", "LEFT"]

    def reset(self, *, seed=None, options=None):
        self.resets += 1
        self.current_lives = 3
        return np.zeros(1, np.uint8), {}

    def step(self, action):
        self.actions.append(action)
        lives, terminated, truncated = self.script.pop(0) if self.script else (self.current_lives, False, False)
        self.current_lives = lives
        return np.zeros(1, np.uint8), 0.0, terminated, truncated, {}


def test_truncation_ends_the_game_and_reset_restarts_it():
    ok = (3, False, False)
    # script: FIRE at reset, step, step losing a life, FIRE at reset, step hitting the time limit, FIRE
    fake = FakeAtari([ok, ok, (2, False, False), (2, False, False), (2, False, True), ok])
    env = ppo_gae.EpisodicLifeFireReset(fake)
    env.reset(seed=0)
    assert fake.resets == 1 and fake.actions == [1]  # restart, then FIRE
    assert env.step(NOOP)[2:4] == (False, False)
    assert env.step(NOOP)[2:4] == (True, False)  # life lost
    env.reset()
    assert fake.resets == 1 and fake.actions == [1, 0, 0, 1]  # FIRE only, no restart
    assert env.step(NOOP)[2:4] == (False, True)  # time limit of the game (108,000 frames), lives left
    env.reset()
    assert fake.resets == 2 and fake.actions == [1, 0, 0, 1, 0, 1]  # the game is restarted, then FIRE
    assert fake.current_lives == 3


# --------------------------------------------------------------------------------------------
# Rewards: sign-clipped for training, the full game's unclipped score for logging
# --------------------------------------------------------------------------------------------
class RawRewards(gym.Wrapper):
    """Records every reward that RecordEpisodeStatistics passes up (the unclipped game reward)."""

    log = []

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        RawRewards.log.append(float(reward))
        return obs, reward, terminated, truncated, info


def test_training_rewards_are_clipped_and_the_logged_score_is_the_raw_full_game(monkeypatch):
    original = ppo_gae.EpisodicLifeFireReset
    # the chain of make_env, with a recorder between RecordEpisodeStatistics and EpisodicLifeFireReset
    monkeypatch.setattr(ppo_gae, "EpisodicLifeFireReset", lambda env: original(RawRewards(env)))
    RawRewards.log = []
    env = make_atari("SpaceInvaders")  # aliens are worth 5 to 30 points: raw rewards exceed 1
    recorder = find_wrapper(env, RawRewards)
    assert isinstance(recorder.env, gym.wrappers.RecordEpisodeStatistics)
    ale = env.unwrapped.ale
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    clipped, raw_per_step = [], []
    agent_steps = resets = 0
    while True:
        n_logged = len(RawRewards.log)
        _, reward, terminated, truncated, info = env.step(int(rng.integers(env.action_space.n)))
        agent_steps += 1
        assert agent_steps < 3000
        assert len(RawRewards.log) == n_logged + 1
        clipped.append(reward)
        raw_per_step.append(RawRewards.log[-1])
        if terminated or truncated:
            if "episode" in info:
                break
            assert ale.lives() > 0
            resets += 1
            env.reset()
    assert ale.lives() == 0 and resets == 2  # SpaceInvaders: 3 lives, one episode for the whole game
    assert set(clipped) <= {-1.0, 0.0, 1.0}
    np.testing.assert_array_equal(clipped, np.sign(raw_per_step))
    assert max(raw_per_step) > 1  # clipping did change something
    episode = info["episode"]
    # the score: every raw reward of the game, over all lives (FIRE presses at reset included)
    assert episode["r"] == pytest.approx(sum(RawRewards.log))
    assert episode["r"] > sum(clipped) > 0
    # the length: every agent step of the game, plus the one FIRE step made in each reset
    assert episode["l"] == len(RawRewards.log) == agent_steps + resets + 1
    env.close()


# --------------------------------------------------------------------------------------------
# The vector env: same-step autoreset, final observations, finished games
# --------------------------------------------------------------------------------------------
def test_vector_env_same_step_autoreset_and_finished_episodes():
    args = ppo_gae.Args(env_id="Breakout", num_envs=2)
    envs = ppo_gae.make_envs(args)
    seed = 1
    try:
        assert isinstance(envs, gym.vector.AsyncVectorEnv)
        assert envs.single_observation_space.shape == (4, 84, 84)
        # reference: the same env, stepped by hand, one per vector slot (seeds seed, seed + 1)
        references = [make_atari() for _ in range(2)]
        ref_obs = [env.reset(seed=seed + i)[0] for i, env in enumerate(references)]
        obs, _ = envs.reset(seed=seed)
        np.testing.assert_array_equal(obs, np.stack(ref_obs))

        rng = np.random.default_rng(0)
        life_losses = game_overs = 0
        points = 0.0
        previous_done = np.zeros(2, bool)
        for step in range(1000):
            # mostly NOOP, some FIRE and moves: the ball is lost often, some points are scored
            actions = rng.choice(4, size=2, p=[0.7, 0.1, 0.1, 0.1])
            next_obs, reward, terminated, truncated, infos = envs.step(actions)
            done = terminated | truncated
            points += float(np.abs(reward).sum())
            expected_finished = []
            for i, env in enumerate(references):
                r_obs, r_reward, r_term, r_trunc, r_info = env.step(int(actions[i]))
                assert reward[i] == r_reward and terminated[i] == r_term and truncated[i] == r_trunc
                if not done[i]:
                    np.testing.assert_array_equal(next_obs[i], r_obs)
                    # a normal transition: one new frame pushed onto the stack of the same episode
                    np.testing.assert_array_equal(next_obs[i][:3], obs[i][1:])
                    if previous_done[i]:  # first step of a new episode: continues the reset stack
                        assert all(np.array_equal(obs[i][0], obs[i][k]) for k in range(1, 4))
                    continue
                # the episode ended in this very step: its last observation is in final_obs
                final_obs = infos["final_obs"][i]
                np.testing.assert_array_equal(final_obs, r_obs)
                np.testing.assert_array_equal(final_obs[:3], obs[i][1:])  # no boundary crossed
                reset_obs, _ = env.reset()
                np.testing.assert_array_equal(next_obs[i], reset_obs)  # the next episode's first obs
                assert all(np.array_equal(next_obs[i][0], next_obs[i][k]) for k in range(1, 4))
                assert not np.array_equal(next_obs[i], final_obs)
                assert infos["final_info"]["_lives"][i]
                if infos["final_info"]["lives"][i] == 0:
                    game_overs += 1
                    assert "episode" in r_info
                    expected_finished.append((r_info["episode"]["r"], r_info["episode"]["l"]))
                else:
                    life_losses += 1
                    assert "episode" not in r_info
                    assert not infos["final_info"].get("_episode", np.zeros(2, bool))[i]
            finished = ppo_gae.finished_episodes(infos)
            assert [(float(r), int(l)) for r, l in finished] == [(float(r), int(l)) for r, l in expected_finished]
            previous_done = done
            obs = next_obs
            if game_overs >= 3 and step > 0 and not done.any():
                break
        assert game_overs >= 3 and life_losses >= 8, (game_overs, life_losses)
        assert points > 0  # some bricks were hit: the rewards were checked, not only zeros
        for env in references:
            env.close()
    finally:
        envs.close()


def test_finished_episodes_picks_the_finished_envs_only():
    assert ppo_gae.finished_episodes({}) == []
    lost_life = {"final_info": {"lives": np.array([0, 3, 0]), "_lives": np.array([False, True, False])}}
    assert ppo_gae.finished_episodes(lost_life) == []  # a lost life only: no finished game
    # the layout of AsyncVectorEnv's infos when env 2 of 3 ends its game (as in the test above)
    game_over = {
        "final_info": {
            "lives": np.array([0, 0, 0]),
            "_lives": np.array([False, False, True]),
            "episode": {
                "r": np.array([0.0, 0.0, 12.0]),
                "_r": np.array([False, False, True]),
                "l": np.array([0, 0, 345]),
                "_l": np.array([False, False, True]),
            },
            "_episode": np.array([False, False, True]),
        }
    }
    assert ppo_gae.finished_episodes(game_over) == [(12.0, 345)]


# --------------------------------------------------------------------------------------------
# p3o.py runs the same environment
# --------------------------------------------------------------------------------------------
def test_p3o_has_the_same_environment_code():
    import p3o

    for name in ["resolve_env_id", "EpisodicLifeFireReset", "make_env", "make_envs", "finished_episodes"]:
        assert inspect.getsource(getattr(p3o, name)) == inspect.getsource(getattr(ppo_gae, name)), name
