"""ClusterUCB: the draw count of the spec, rewards computed only for drawn examples, the UCB
rule replayed from the scorer's call log, cosine clustering against brute force, and the
on-demand LESS scorer on the tiny model against the full-pool LESS scores."""

import json

import numpy as np
import pytest

from dsel_assets.core.clustering import spherical_kmeans
from dsel_assets.core.select import build_config, get
from dsel_assets.core.select.cluster_ucb import ClusterUcbConfig, cluster_ucb_draws
from dsel_assets.core.select.knn_tsds import CheckpointFeatures
from resources.store import open_state

from ..helpers import pool_ids
from ..representation_fixtures import SyntheticEpochTrainer


def directions(n_dirs=10, per=30, seed=0):
    """``per`` points around each of ``n_dirs`` orthogonal directions, with norms from 0.1 to
    10: clusters by angle are obvious, clusters by Euclidean distance are not."""
    rng = np.random.default_rng(seed)
    base = np.eye(16)[np.repeat(np.arange(n_dirs), per)]
    x = (base + 0.05 * rng.normal(size=base.shape)) * rng.uniform(0.1, 10, (len(base), 1))
    return x.astype(np.float32), np.repeat(np.arange(n_dirs), per)


class CountingScorer:
    """Rewards from a fixed table; records every call so a test can see what was scored."""

    def __init__(self, scores):
        self.scores = scores
        self.calls = []

    def __call__(self, chosen, task):
        assert task == "t"
        self.calls.append(list(chosen))
        return self.scores[[int(i[1:]) for i in chosen]]

    @property
    def scored(self):
        return [i for call in self.calls for i in call]


def test_draws_are_the_cold_start_plus_int_n_times_budget_minus_cold_start():
    x, direction = directions()
    rewards = np.random.default_rng(1).uniform(-1, 1, 300)
    scorer = CountingScorer(rewards)
    params = {"task": "t", "n_clusters": "10", "budget_frac": "0.2", "cold_start": "0.05", "score_ahead": "false"}
    sel = get("cluster_ucb").select(
        pool_ids(300), 15, build_config("cluster_ucb", params), pool_gradients=x, less_scorer=scorer
    )
    # by hand: 10 clusters of 30, cold start max(int(30 * 0.05), 1) = 1 each -> 10 draws, in one
    # call, one per direction; then int(300 * (0.2 - 0.05)) = 45 bandit draws: 55 (not 60)
    assert len(scorer.calls[0]) == 10
    assert sorted(direction[int(i[1:])] for i in scorer.calls[0]) == list(range(10))
    assert len(scorer.scored) == len(set(scorer.scored)) == 55
    assert sel.diagnostics["rewards_computed"] == 55 and sel.diagnostics["scored_fraction"] == pytest.approx(55 / 300)
    assert sel.diagnostics["cold_start_draws"] == 10 and sel.diagnostics["bandit_draws"] == 45
    # the selection: the top 15 by reward among the 55 scored ids, and nothing else was scored
    drawn = np.array([int(i[1:]) for i in scorer.scored])
    top = drawn[np.argsort(-rewards[drawn], kind="stable")[:15]]
    assert sel.ids == [f"p{i:03d}" for i in top]
    np.testing.assert_allclose(sel.scores, rewards[top])
    batched = build_config("cluster_ucb", {"task": "t", "n_clusters": "10", "draw_batch": "4", "score_ahead": "false"})
    scorer = CountingScorer(rewards)
    get("cluster_ucb").select(pool_ids(300), 15, batched, pool_gradients=x, less_scorer=scorer)
    sizes = [len(c) for c in scorer.calls[1:]]  # 45 draws in batches of at most 4 (less when an arm runs out)
    assert sum(sizes) == 45 and max(sizes) == 4 and len(sizes) < 20


def test_every_bandit_draw_goes_to_the_arm_the_ucb_rule_names():
    """Replay the spec from the call log: mean + beta * population std per arm, an arm whose
    members are all drawn is out; the drawn id must come from the argmax arm."""
    x, direction = directions()
    rng = np.random.default_rng(2)
    rewards = rng.normal(0, 0.3, 300) + rng.uniform(-0.5, 0.5, 10)[direction]  # arms differ in mean
    scorer = CountingScorer(rewards)
    params = {"task": "t", "n_clusters": "10", "budget_frac": "0.5", "beta": "1", "score_ahead": "false"}
    get("cluster_ucb").select(
        pool_ids(300), 15, build_config("cluster_ucb", params), pool_gradients=x, less_scorer=scorer
    )
    seen = {arm: [] for arm in range(10)}
    for i in scorer.calls[0]:
        seen[direction[int(i[1:])]].append(rewards[int(i[1:])])
    for (i,) in scorer.calls[1:]:
        ucb = [
            np.mean(v) + np.sqrt(np.mean((np.array(v) - np.mean(v)) ** 2)) if len(v) < 30 else -np.inf
            for v in seen.values()
        ]
        assert direction[int(i[1:])] == int(np.argmax(ucb))
        seen[direction[int(i[1:])]].append(rewards[int(i[1:])])
    assert len(scorer.calls) - 1 == int(300 * (0.5 - 0.05))


def test_full_budget_without_cold_start_is_less_top_k():
    x, _ = directions(seed=3)
    less = {"t": np.random.default_rng(3).uniform(-1, 1, 300)}
    config = build_config("cluster_ucb", {"task": "t", "budget_frac": "1", "cold_start": "0", "n_clusters": "10"})
    full = get("cluster_ucb").select(pool_ids(300), 15, config, pool_gradients=x, less_scorer=CountingScorer(less["t"]))
    top = get("less").select(pool_ids(300), 15, build_config("less", {"task": "t"}), less_scores=less)
    assert full.ids == top.ids and full.diagnostics["scored_fraction"] == 1.0


def test_an_exhausted_arm_is_never_drawn_again():
    # arm 0: two great examples, arm 1: forty poor ones. Once arm 0 is exhausted it gets -inf;
    # the reference's 0 would still beat arm 1's UCB of -0.5 and draw past its end.
    assignment = np.array([0, 0] + [1] * 40)
    rewards = np.array([0.9, 0.8] + [-0.5] * 40)
    config = ClusterUcbConfig(budget_frac=0.9, cold_start=0.01, beta=0.0)
    asked = []

    def reward(rows):
        assert len(rows) and not set(rows.tolist()) & set(asked)  # every call draws new examples
        asked.extend(rows.tolist())
        return rewards[rows]

    draws = cluster_ucb_draws(assignment, reward, config)
    # cold start: one per arm; then int(42 * 0.89) = 37 draws: arm 0's last member, then arm 1
    assert draws.cold_start == 2 and draws.pulls == [0] + [1] * 36 and len(draws.rewards) == 39


def test_no_cold_start_draws_nothing_beyond_the_bandit_budget():
    # three arms of 10; budget_frac 0.5 at cold_start 0: int(30 * 0.5) = 15 draws, all the bandit's.
    # The arms without a reward go first (lowest arm on ties), then the best mean (equal rewards
    # within an arm: no spread, so the UCB is the mean).
    assignment = np.repeat([0, 1, 2], 10)
    rewards = np.repeat([0.1, 0.9, 0.5], 10)
    draws = cluster_ucb_draws(assignment, lambda rows: rewards[rows], ClusterUcbConfig(budget_frac=0.5, cold_start=0))
    assert draws.cold_start == 0 and len(draws.rewards) == 15
    assert draws.pulls == [0, 1, 2] + [1] * 9 + [2] * 3  # arm 1 until exhausted, then arm 2


@pytest.mark.parametrize("seed", range(40))
def test_scoring_ahead_draws_the_same_in_fewer_calls(seed):
    """Scoring an arm's next members ahead changes the reward calls only: the draws (rewards,
    cold start, pulls) equal those of one call per draw, no example is scored twice, and the
    unused rewards are at most as many as the drawn ones."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 400))
    assignment = rng.integers(0, int(rng.integers(1, 12)), n)
    rewards = rng.normal(0, 0.3, n) + rng.uniform(-0.5, 0.5, assignment.max() + 1)[assignment]
    rewards[rng.random(n) < 0.05] = np.nan  # no feature: drawn, never a UCB reward
    cold_start = float(rng.choice([0, 0.01, 0.05]))
    params = dict(budget_frac=float(rng.uniform(max(cold_start, 0.05), 1)), cold_start=cold_start)
    params |= dict(beta=float(rng.uniform(0, 2)), draw_batch=int(rng.choice([1, 1, 3])), seed=seed)
    runs = {}
    for ahead in (False, True):
        calls = []

        def reward(rows, calls=calls):
            calls.append(rows.tolist())
            return rewards[rows]

        runs[ahead] = cluster_ucb_draws(assignment, reward, ClusterUcbConfig(**params, score_ahead=ahead)), calls
    (plain, plain_calls), (ahead, ahead_calls) = runs[False], runs[True]
    assert ahead.pulls == plain.pulls and ahead.cold_start == plain.cold_start
    assert ahead.rewards.keys() == plain.rewards.keys()
    np.testing.assert_array_equal(list(ahead.rewards.values()), [plain.rewards[r] for r in ahead.rewards])
    scored = [row for call in ahead_calls for row in call]
    assert len(scored) == len(set(scored)) == len(ahead.rewards) + ahead.unused
    assert plain.unused == 0 and ahead.unused <= len(ahead.rewards)
    assert len(ahead_calls) <= len(plain_calls)


def test_scoring_ahead_doubles_an_arms_refill():
    # one arm of 40, no cold start, 15 draws: calls of 1, 2, 4, 8 rows (the last one 8 of which
    # 15 - 7 = 8 are drawn), where one call per draw makes 15
    calls = []
    config = ClusterUcbConfig(budget_frac=15 / 40, cold_start=0)
    draws = cluster_ucb_draws(
        np.zeros(40, dtype=int), lambda rows: calls.append(len(rows)) or np.ones(len(rows)), config
    )
    assert calls == [1, 2, 4, 8] and len(draws.rewards) == 15 and draws.unused == 0


def test_spherical_kmeans_assigns_by_cosine_like_brute_force():
    x, direction = directions(n_dirs=4, per=25, seed=4)
    centroids, assignment = spherical_kmeans(x, 4, seed=0)
    for i, v in enumerate(x.astype(np.float64)):  # brute force: cosine of each point with each centroid
        cosines = [v @ c / (np.linalg.norm(v) * np.linalg.norm(c)) for c in centroids.astype(np.float64)]
        assert assignment[i] == int(np.argmax(cosines))
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    for c in range(4):  # a centroid is the mean direction of its members
        mean = unit[assignment == c].sum(axis=0)
        np.testing.assert_allclose(centroids[c], mean / np.linalg.norm(mean), atol=1e-5)
    # clusters are the four directions, whatever the norms (Euclidean k-means splits by norm)
    assert all(len(set(direction[assignment == c])) == 1 for c in range(4))
    from dsel_assets.core.clustering import kmeans

    _, euclidean = kmeans(x, 4, 0)
    assert any(len(set(direction[euclidean == c])) > 1 for c in range(4))


def test_spherical_kmeans_random_seeding_starts_from_drawn_rows():
    x, _ = directions(n_dirs=4, per=25, seed=4)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    start = unit[np.random.default_rng(3).choice(len(x), 4, replace=False)]
    centroids, assignment = spherical_kmeans(x, 4, seed=3, iterations=0, init="random")
    np.testing.assert_allclose(centroids, start, atol=1e-6)  # no iteration: the drawn rows themselves
    assert assignment.tolist() == np.argmax(unit @ start.T, axis=1).tolist()
    with pytest.raises(ValueError, match=r"init: 'forgy' is not one of \['kmeans\+\+', 'random'\]"):
        spherical_kmeans(x, 4, seed=3, init="forgy")


def test_on_demand_scorer_equals_full_pool_less_scores_on_the_tiny_model(home, tmp_path):
    """Asset level: warmup, pool and query gradient features and the influence asset on the
    tiny model give the full-pool LESS scores; the scorer the cluster_ucb asset loads must
    reproduce them for the ids it is asked about, computing gradients for those ids only."""
    from dsel_assets.app.cli import main
    from dsel_assets.core.data.synthetic import generate
    from dsel_assets.pipeline.assets.selection.selections import load_representation
    from resources import build_resources

    paths = generate(seed=3, per_capability=4).write(tmp_path / "data")
    assert main(["ingest", str(paths["queries"]), "--split", "query", "--task", "auto", "--model", "tiny"]) == 0
    assert main(["ingest", str(paths["pool"]), "--task", "auto", "--model", "tiny"]) == 0
    tiny = ["--model", "tiny", "--grad-dim", "64", "--budget", "5", "--target", "arithmetic"]
    assert main(["select", "--method", "less", *tiny]) == 0  # the full-pool LESS scores (influence)
    params = ["--param", "n_clusters=3", "--param", "budget_frac=0.5"]
    assert main(["select", "--method", "cluster_ucb", *tiny, *params]) == 0
    with open_state(home.duckdb, read_only=True) as db:
        pool_ids = db.split_rows("pool", ["pool_id"], order=["pool_id"])["pool_id"].to_list()
        less = {(p, t): s for p, t, s in db.less_scores().iter_rows()}
        columns = ["pool_id", "score", "diagnostics"]
        picked = db.rows_matching("selections", columns, {"method": "cluster_ucb"}).rows()
    n = len(pool_ids)
    diagnostics = json.loads(picked[0][2])
    drawn = diagnostics["cold_start_draws"] + int(n * (0.5 - 0.05))
    assert diagnostics["rewards_computed"] == drawn < n and diagnostics["scored_fraction"] == pytest.approx(drawn / n)
    assert len(picked) == 5
    for pid, score, _ in picked:  # the asset's rewards are the LESS scores of the picked ids
        assert score == pytest.approx(less[(pid, "arithmetic")], abs=2e-3)

    resources = build_resources(home, model="tiny", device="cpu", grad_dim=64)

    def load_scorer():
        return load_representation(
            "less_scorer",
            resources["lance"],
            resources["store"],
            pool_ids,
            resources["grad_settings"],
            resources["selection_model"],
        )

    scorer, ref = load_scorer()
    asked = pool_ids[::3]
    stored, scorer.stored = scorer.stored, None  # first compute the gradients of the asked rows
    for task in sorted({t for _, t in less}):
        expected = np.array([less[(p, task)] for p in asked])
        np.testing.assert_allclose(scorer(asked, task), expected, atol=2e-3)  # float16 features on both sides
    assert scorer.examples_computed == len(asked) < n  # computed once for every task, only the asked rows
    scorer(asked[:2], "arithmetic")
    assert scorer.examples_computed == len(asked)  # answered from the score cache
    # the pool features the less selection stored are read back instead: same scores, no backward
    reading, _ = load_scorer()
    assert stored is not None and reading.stored is not None
    for task in sorted({t for _, t in less}):
        expected = np.array([less[(p, task)] for p in asked])
        np.testing.assert_allclose(reading(asked, task), expected, atol=2e-3)
    assert (reading.examples_read, reading.examples_computed) == (len(asked), 0)
    assert ref.name == "less_scorer"
    with pytest.raises(ValueError, match="task: 'nope' is not one of"):
        scorer(asked, "nope")

    # the epoch trainer's scorer, given a warmup checkpoint's model and Adam moments, gives the
    # LESS scores the on-demand scorer gives for that checkpoint alone (its query features computed
    # from the model, the on-demand scorer's read from the stored ones)
    epoch = scorer.checkpoints[0][0]
    scorer.checkpoints, scorer.weights, scorer.cache = scorer.checkpoints[:1], {epoch: 1.0}, {}
    trainer, _ = load_representation(
        "epoch_trainer",
        resources["lance"],
        resources["store"],
        pool_ids,
        resources["grad_settings"],
        resources["selection_model"],
    )
    for task in sorted({t for _, t in less}):
        expected = scorer(asked, task)  # loads the checkpoint's adapter into scorer.model
        rows = np.array([pool_ids.index(p) for p in asked])
        got = trainer.scorer(scorer.model, scorer.states[epoch])(rows, task)
        np.testing.assert_allclose(got, expected, atol=2e-3)

    # the reference's loop end to end: LESS top-k for epoch 1, one reselection after it
    params = ["--param", "n_clusters=3", "--param", "budget_frac=0.5", "--param", "epochs=2"]
    assert main(["select", "--method", "cluster_ucb_epochs", *tiny, *params]) == 0
    with open_state(home.duckdb, read_only=True) as db:
        picked = db.rows_matching("selections", ["pool_id", "diagnostics"], {"method": "cluster_ucb_epochs"}).rows()
    diagnostics = json.loads(picked[0][1])
    assert len(picked) == 5 and diagnostics["epochs"] == 2
    assert len(diagnostics["rewards_computed"]) == 1 and 5 <= diagnostics["rewards_computed"][0] < n


def test_cluster_ucb_epochs_trains_on_less_top_k_then_reselects_on_each_epochs_rewards():
    x, _ = directions()
    n = len(x)
    rng = np.random.default_rng(4)
    less = {"t": rng.uniform(-1, 1, n), "u": rng.uniform(-1, 1, n)}
    less["t"][:5] = np.nan  # no warmup LESS score: never selected
    late = np.full_like(x, np.nan)  # only the earliest checkpoint is clustered: a NaN later one changes nothing
    features = CheckpointFeatures((x, late), (0.5, 0.5))
    config = build_config("cluster_ucb_epochs", {"task": "t", "n_clusters": 10, "epochs": 3, "budget_frac": 0.3})
    trainer = SyntheticEpochTrainer(less)
    sel = get("cluster_ucb_epochs").select(
        pool_ids(n), 12, config, pool_checkpoint_gradients=features, less_scores=less, epoch_trainer=trainer
    )
    # the loop, transcribed: epoch 1 trains on the top 12 by the warmup's score, then after
    # epochs 1 and 2 the bandit (clusters of checkpoint 0, random seeding) draws with that epoch's
    # rewards, and its top 12 by reward are the next epoch's data
    valid = np.arange(5, n)
    assert trainer.epochs_data[0] == valid[np.argsort(-less["t"][valid], kind="stable")[:12]].tolist()
    _, assignment = spherical_kmeans(x[valid], 10, 0, 20, "random")
    computed = []
    for epoch in (1, 2):
        draws = cluster_ucb_draws(assignment, lambda rows, e=epoch: trainer.scores(e, valid[rows], "t"), config)
        drawn = np.array(sorted(draws.rewards))
        rewards = np.array([draws.rewards[int(i)] for i in drawn])
        top = valid[drawn[np.lexsort((valid[drawn], -rewards))[:12]]]
        assert trainer.epochs_data[epoch] == top.tolist()
        computed.append(len(draws.rewards))
    assert sel.ids == [f"p{i:03d}" for i in trainer.epochs_data[2]]
    assert len(trainer.epochs_data) == 3 and trainer.epochs_data[1] != trainer.epochs_data[2]
    assert sel.diagnostics["rewards_computed"] == computed and computed[0] < n * 0.3
    with pytest.raises(ValueError, match="epochs: 1; at least 2"):
        build_config("cluster_ucb_epochs", {"task": "t", "epochs": 1})
    with pytest.raises(ValueError, match="init"):
        build_config("cluster_ucb_epochs", {"task": "t", "init": "forgy"})
    with pytest.raises(ValueError, match="task: 'v' is not one of"):
        get("cluster_ucb_epochs").select(
            pool_ids(n),
            12,
            build_config("cluster_ucb_epochs", {"task": "v"}),
            pool_checkpoint_gradients=features,
            less_scores=less,
            epoch_trainer=trainer,
        )
