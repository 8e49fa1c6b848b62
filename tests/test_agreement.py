import math
import random

import krippendorff
import numpy as np
import pandas as pd
import pytest
from sklearn.calibration import calibration_curve
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import accuracy_score, cohen_kappa_score, confusion_matrix

from cai_core.agreement import dashboard, inter_human_alpha, label_facets
from cai_core.jobs import JobFolder
from cai_core.records import AILabel, HumanLabel, Pair, to_row
from cai_core.store import Store
from cai_core.store.agreement import LabelFilter

CHOICES = ["a", "b", "tie", "both_bad", "skip"]


def make_pairs(n):
    return [
        Pair(f"p{i:03d}", f"prompt {i}", f"first {i}", f"second {i}", "import", "hand", i, "a", "b") for i in range(n)
    ]


def ai_label(run, pair_id, p1, p2, *, principle="harm", model="judge-1", version="v1", strategy="sample", failed=False):
    p_a = None if failed else (p1 + 1 - p2) / 2
    return AILabel(run, pair_id, principle, model, version, strategy, "logprob", False, 0, p1, p2, p_a, failed)


def load(workspace, pairs, humans, ai):
    """Store the data the way the workbench does: pairs and people's labels directly, AI labels spooled by a job."""
    by_run = {}
    for label in ai:
        by_run.setdefault(label.run_id, []).append(to_row(label))
    for run, rows in by_run.items():
        JobFolder.create(workspace.runs_dir, run, {"kind": "label", "model": "judge"}).append("ai_labels", rows)
    with Store.open(workspace) as store:
        store.add_pairs(pairs)
        store.import_human_labels(humans)
        store.ingest(workspace.runs_dir)


def three_way(p, band):
    return "a" if p > 0.5 + band else "b" if p < 0.5 - band else "tie"


@pytest.fixture
def random_data(workspace):
    """40 pairs; three annotators who label most pairs (so some pairs have one label or none, with skips,
    ties and both-bad among them); one judge whose two orders disagree now and then; one failed label."""
    rng = random.Random(3)
    pairs = make_pairs(40)
    humans = [
        HumanLabel(p.pair_id, who, rng.choice(CHOICES), rng.random() < 0.5)
        for p in pairs
        for who in ("ann", "bo", "cy")
        if rng.random() < 0.7
    ]
    ai = [ai_label("run-1", p.pair_id, rng.random(), rng.random()) for p in pairs[:-1]]
    ai.append(ai_label("run-1", pairs[-1].pair_id, None, None, failed=True))
    load(workspace, pairs, humans, ai)
    return pairs, humans, ai


def compared(humans, ai, band):
    """The (human, AI) label lists the dashboard should compare, built the obvious way in Python."""
    p_of = {a.pair_id: a.p_a for a in ai if a.p_a is not None}
    with_ties, no_ties = ([], []), ([], [])
    for h in humans:
        if h.choice == "skip" or h.pair_id not in p_of:
            continue
        choice = "tie" if h.choice == "both_bad" else h.choice
        p = p_of[h.pair_id]
        with_ties[0].append(choice)
        with_ties[1].append(three_way(p, band))
        if choice in ("a", "b") and p != 0.5:
            no_ties[0].append(choice)
            no_ties[1].append("a" if p > 0.5 else "b")
    return with_ties, no_ties


def test_agreement_and_kappa_equal_sklearn_with_and_without_ties(workspace, random_data):
    _, humans, ai = random_data
    for band in (0.0, 0.05, 0.2):
        with Store.open(workspace) as store:
            row = dashboard(store, tie_band=band).by_run.iloc[0]
        (h3, v3), (h2, v2) = compared(humans, ai, band)
        assert row.labels_with_ties == len(h3) and row.labels_no_ties == len(h2) > 10
        assert row.agreement == pytest.approx(accuracy_score(h2, v2))
        assert row.kappa == pytest.approx(cohen_kappa_score(h2, v2))
        assert row.agreement_with_ties == pytest.approx(accuracy_score(h3, v3))
        assert row.kappa_with_ties == pytest.approx(cohen_kappa_score(h3, v3))
        assert row.pairs == 40 and row.failed == 1


def test_confusion_matrix_equals_sklearn(workspace, random_data):
    _, humans, ai = random_data
    with Store.open(workspace) as store:
        confusion = dashboard(store, tie_band=0.1).confusion
    (h3, v3), _ = compared(humans, ai, 0.1)
    expected = confusion_matrix(h3, v3, labels=["a", "b", "tie"])
    assert confusion.loc[["a", "b", "tie"], ["a", "b", "tie"]].to_numpy().tolist() == expected.tolist()


def test_kappa_is_none_not_nan_when_only_one_class_appears(workspace):
    pairs = make_pairs(4)
    humans = [HumanLabel(p.pair_id, "ann", "a") for p in pairs]
    ai = [ai_label("run-1", p.pair_id, 0.9, 0.2) for p in pairs]
    load(workspace, pairs, humans, ai)
    with Store.open(workspace) as store:
        row = dashboard(store).by_run.iloc[0]
    assert row.agreement == 1.0 and pd.isna(row.kappa) and pd.isna(row.kappa_with_ties)
    with pytest.warns(UndefinedMetricWarning):
        assert math.isnan(cohen_kappa_score(["a"] * 4, ["a"] * 4))  # what the guard is for


def reliability_data(humans, annotators, pair_ids):
    """krippendorff's input: one row per annotator, one column per pair, NaN where there is no label."""
    codes = {"a": 0, "b": 1, "tie": 2, "both_bad": 2}
    table = np.full((len(annotators), len(pair_ids)), np.nan)
    for h in humans:
        if h.choice != "skip":
            table[annotators.index(h.annotator), pair_ids.index(h.pair_id)] = codes[h.choice]
    return table


def test_alpha_equals_krippendorff_with_missing_labels_skips_and_ties(workspace, random_data):
    pairs, humans, _ = random_data
    with Store.open(workspace) as store:
        alpha = inter_human_alpha(store)
    data = reliability_data(humans, ["ann", "bo", "cy"], [p.pair_id for p in pairs])
    assert np.isnan(data).any() and (~np.isnan(data)).sum(axis=0).min() <= 1  # really has missing labels
    assert alpha.alpha == pytest.approx(krippendorff.alpha(reliability_data=data, level_of_measurement="nominal"))
    assert alpha.pairs == int(((~np.isnan(data)).sum(axis=0) >= 2).sum())


@pytest.mark.parametrize(
    "choices",
    [
        {"p000": ["a", "a"], "p001": ["b", "b"], "p002": ["tie", "both_bad"]},  # perfect agreement
        {"p000": ["a", "b"], "p001": ["b", "a"], "p002": ["a", "b", "tie"]},  # systematic disagreement
        {"p000": ["a", "a", "b"], "p001": ["a"], "p002": ["b", "skip", "b"]},  # single labels and skips
    ],
    ids=["perfect", "disagree", "missing"],
)
def test_alpha_on_small_hand_made_tables(workspace, choices):
    annotators = ["ann", "bo", "cy"]
    humans = [HumanLabel(pid, annotators[i], c) for pid, cs in choices.items() for i, c in enumerate(cs)]
    load(workspace, make_pairs(3), humans, [])
    with Store.open(workspace) as store:
        alpha = inter_human_alpha(store)
    data = reliability_data(humans, annotators, ["p000", "p001", "p002"])
    assert alpha.alpha == pytest.approx(krippendorff.alpha(reliability_data=data, level_of_measurement="nominal"))


def test_alpha_is_none_for_one_class_or_no_overlap(workspace):
    humans = [HumanLabel("p000", "ann", "a"), HumanLabel("p000", "bo", "a"), HumanLabel("p001", "ann", "a")]
    load(workspace, make_pairs(3), humans, [])
    with Store.open(workspace) as store:
        assert inter_human_alpha(store).alpha is None
        store.import_human_labels([HumanLabel("p000", "bo", "b")])
        store.con.execute("DELETE FROM human_labels WHERE pair_id = 'p000' AND annotator = 'ann'").fetchall()
        assert inter_human_alpha(store).alpha is None  # no pair has two labels any more
        assert inter_human_alpha(store).pairs == 0
    with pytest.raises(ValueError):
        krippendorff.alpha(reliability_data=[[0, 0], [0, np.nan]], level_of_measurement="nominal")


def test_reliability_bins_and_ece_match_sklearn_calibration_curve(workspace):
    rng = random.Random(5)
    pairs = make_pairs(200)
    # probabilities off the bin edges, where sklearn and SQL floor() could place a value differently
    ai = [ai_label("run-1", p.pair_id, round(rng.uniform(0.01, 0.99), 3) + 0.0005, 0.5) for p in pairs]
    humans = [
        HumanLabel(p.pair_id, "ann", "a" if rng.random() < a.p_a else "b") for p, a in zip(pairs, ai, strict=True)
    ]
    humans += [HumanLabel(pairs[0].pair_id, "bo", "tie")]  # ties are not outcomes: left out of calibration
    load(workspace, pairs, humans, ai)
    with Store.open(workspace) as store:
        reliability = dashboard(store, bins=10).reliability
    y = [h.choice == "a" for h in humans if h.choice != "tie"]
    p = [a.p_a for a in ai]
    frac, mean = calibration_curve(y, p, n_bins=10)
    filled = reliability.bins[reliability.bins.n > 0]
    assert filled.frac_a.to_numpy() == pytest.approx(frac) and filled.mean_p.to_numpy() == pytest.approx(mean)
    assert reliability.n == 200 and reliability.bins.n.sum() == 200 and len(reliability.bins) == 10
    counts = np.histogram(p, bins=np.linspace(0, 1, 11))[0]
    assert reliability.bins.n.tolist() == counts.tolist()
    ece = sum(n / 200 * abs(m - f) for n, m, f in zip(filled.n, mean, frac, strict=True))
    assert reliability.ece == pytest.approx(ece)


def test_position_consistency_and_first_position_rate(workspace):
    pairs = make_pairs(4)
    ai = [
        ai_label("run-1", "p000", 0.9, 0.2),  # a in both orders: consistent, first once
        ai_label("run-1", "p001", 0.8, 0.7),  # first both times: inconsistent
        ai_label("run-1", "p002", 0.3, 0.6),  # b in both orders: consistent, first once
        ai_label("run-1", "p003", 0.4, 0.1),  # second both times: inconsistent
    ]
    load(workspace, pairs, [], ai)
    with Store.open(workspace) as store:
        row = dashboard(store).by_run.iloc[0]
    assert row.position_consistency == pytest.approx(0.5)
    assert row.first_position_rate == pytest.approx((1 + 2 + 1 + 0) / 8)
    assert row.labels_no_ties == 0 and pd.isna(row.agreement) and pd.isna(row.ece)  # no human labels


def test_groupings_by_principle_model_version_and_ensemble_means(workspace):
    pairs = make_pairs(3)
    humans = [HumanLabel(p.pair_id, "ann", "a") for p in pairs]
    ai = [
        # an ensemble run: the pair's label is the mean over its two principles
        ai_label("ens", "p000", 0.9, 0.1, principle="harm", strategy="ensemble", model="big", version="v2"),
        ai_label("ens", "p000", 0.2, 0.6, principle="honesty", strategy="ensemble", model="big", version="v2"),
        ai_label("ens", "p001", 0.4, 0.7, principle="harm", strategy="ensemble", model="big", version="v2"),
        ai_label("ens", "p001", 0.4, 0.7, principle="honesty", strategy="ensemble", model="big", version="v2"),
        ai_label("one", "p000", 0.7, 0.3, principle="harm", model="small"),
        ai_label("one", "p001", 0.7, 0.3, principle="honesty", model="small"),
        ai_label("one", "p002", 0.2, 0.9, principle="harm", model="small"),
    ]
    load(workspace, pairs, humans, ai)
    with Store.open(workspace) as store:
        d = dashboard(store, tie_band=0.0)
    runs = d.by_run.set_index("run_id")
    # ens: p000 mean p_a = (0.9 + 0.3) / 2 = 0.6 -> a; p001 = 0.35 -> b
    assert runs.loc["ens", "agreement"] == 0.5 and runs.loc["ens", "pairs"] == 2
    assert runs.loc["ens", "strategy"] == "ensemble" and runs.loc["one", "agreement"] == pytest.approx(2 / 3)
    assert d.by_model.set_index("judge_model").agreement.to_dict() == {"big": 0.5, "small": pytest.approx(2 / 3)}
    assert d.by_version.set_index("constitution_version").pairs.to_dict() == {"v1": 3, "v2": 2}
    principles = d.by_principle.set_index("principle_id")
    # per principle, every label counts on its own: harm says a, b, a, b (p000 ens, p001 ens, p000, p002)
    assert principles.loc["harm", "pairs"] == 4 and principles.loc["harm", "agreement"] == 0.5
    assert principles.loc["honesty", "agreement"] == pytest.approx(1 / 3)
    assert sorted(zip(d.disagreements.run_id, d.disagreements.pair_id, strict=True)) == [
        ("ens", "p001"),
        ("one", "p002"),
    ]


def test_disagreements_list_the_most_confident_first_with_texts(workspace):
    pairs = make_pairs(3)
    humans = [HumanLabel("p000", "ann", "b", rationale="a is rude"), HumanLabel("p001", "ann", "b")]
    humans += [HumanLabel("p002", "ann", "a")]
    ai = [ai_label("run-1", "p000", 0.95, 0.05), ai_label("run-1", "p001", 0.6, 0.4), ai_label("run-1", "p002", 1, 0)]
    load(workspace, pairs, humans, ai)
    with Store.open(workspace) as store:
        rows = dashboard(store, run_id="run-1").disagreements
    assert rows.pair_id.tolist() == ["p000", "p001"]
    first = rows.iloc[0]
    assert (first.human, first.ai, first.rationale) == ("b", "a", "a is rude")
    assert first.p_order1 == 0.95 and first.response_a == "first 0" and first.prompt == "prompt 0"


def test_bad_options_are_user_errors(workspace):
    load(workspace, make_pairs(1), [], [])
    with Store.open(workspace) as store, pytest.raises(ValueError, match="tie band"):
        dashboard(store, tie_band=0.5)


@pytest.fixture
def three_runs(workspace):
    """30 pairs, two annotators, and three runs across two judge models, two constitution versions and two
    principles: a sample run alternating principles, an ensemble run over both, and a small run on half."""
    rng = random.Random(11)
    pairs = make_pairs(30)
    humans = [HumanLabel(p.pair_id, who, rng.choice(CHOICES)) for p in pairs for who in ("ann", "bo")]
    ai = []
    for i, p in enumerate(pairs):
        principle = ("harm", "honesty")[i % 2]
        ai.append(ai_label("small-v1", p.pair_id, rng.random(), rng.random(), principle=principle, model="small"))
        for principle in ("harm", "honesty"):
            ai.append(
                ai_label(
                    "big-v2",
                    p.pair_id,
                    rng.random(),
                    rng.random(),
                    principle=principle,
                    model="big",
                    version="v2",
                    strategy="ensemble",
                )
            )
        if i < 15:
            ai.append(ai_label("small-v2", p.pair_id, rng.random(), rng.random(), model="small", version="v2"))
    load(workspace, pairs, humans, ai)
    return humans, ai


def selected_comparisons(humans, ai, keep):
    """(human, AI) a/b labels over the AI labels KEEP accepts: each run's pair label is the mean over its kept
    labels (an ensemble's principles), compared with every person's a or b on that pair."""
    per_pair = {}
    for label in ai:
        if keep(label):
            per_pair.setdefault((label.run_id, label.pair_id), []).append(label.p_a)
    human_rows, ai_rows = [], []
    for (_, pair_id), probabilities in sorted(per_pair.items()):
        p = sum(probabilities) / len(probabilities)
        for h in humans:
            if h.pair_id == pair_id and h.choice in ("a", "b") and p != 0.5:
                human_rows.append(h.choice)
                ai_rows.append("a" if p > 0.5 else "b")
    return human_rows, ai_rows


@pytest.mark.parametrize(
    ("filters", "keep"),
    [
        ({}, lambda a: True),
        ({"judge_models": ["small"]}, lambda a: a.judge_model == "small"),
        ({"constitution_versions": ["v2"]}, lambda a: a.constitution_version == "v2"),
        ({"principles": ["honesty"]}, lambda a: a.principle_id == "honesty"),
        (
            {"principles": ["harm"], "judge_models": ["small", "big"], "constitution_versions": ["v2"]},
            lambda a: a.principle_id == "harm" and a.constitution_version == "v2",
        ),
        ({"run_ids": ["small-v1", "big-v2"], "principles": []}, lambda a: a.run_id in ("small-v1", "big-v2")),
    ],
    ids=["all", "model", "version", "principle", "combined", "runs"],
)
def test_filters_across_runs_pool_the_selected_labels(workspace, three_runs, filters, keep):
    humans, ai = three_runs
    with Store.open(workspace) as store:
        board = dashboard(store, tie_band=0.0, **filters)
    human_rows, ai_rows = selected_comparisons(humans, ai, keep)
    assert board.overall.labels_no_ties == len(human_rows) > 20
    assert board.overall.agreement == pytest.approx(accuracy_score(human_rows, ai_rows))
    assert board.overall.kappa == pytest.approx(cohen_kappa_score(human_rows, ai_rows))
    assert set(board.by_run.run_id) == {a.run_id for a in ai if keep(a)}
    assert set(board.by_principle.principle_id) == {a.principle_id for a in ai if keep(a)}
    assert board.confusion.to_numpy().sum() == board.overall.labels_with_ties
    kept_pairs = {a.pair_id for a in ai if keep(a)}
    assert set(board.disagreements.pair_id) <= kept_pairs
    assert set(board.disagreements.run_id) <= {a.run_id for a in ai if keep(a)}


def test_alpha_reads_the_pairs_the_filters_select(workspace, three_runs):
    humans, _ = three_runs
    with Store.open(workspace) as store:
        half = dashboard(store, constitution_versions=["v2"], judge_models=["small"]).alpha
        everything = dashboard(store).alpha
    pair_ids = [f"p{i:03d}" for i in range(15)]  # the small v2 run labelled the first half only
    data = reliability_data([h for h in humans if h.pair_id in pair_ids], ["ann", "bo"], pair_ids)
    assert half.alpha == pytest.approx(krippendorff.alpha(reliability_data=data, level_of_measurement="nominal"))
    all_ids = [f"p{i:03d}" for i in range(30)]
    every_pair = reliability_data(humans, ["ann", "bo"], all_ids)
    assert half.pairs == int(((~np.isnan(data)).sum(axis=0) >= 2).sum())
    assert everything.pairs == int(((~np.isnan(every_pair)).sum(axis=0) >= 2).sum()) > half.pairs


def test_filter_values_are_data_not_sql(workspace):
    pairs = make_pairs(2)
    humans = [HumanLabel(p.pair_id, "ann", "a") for p in pairs]
    ai = [ai_label("run-1", "p000", 0.9, 0.1, model="o'brien"), ai_label("run-1", "p001", 0.1, 0.9, model="x")]
    load(workspace, pairs, humans, ai)
    with Store.open(workspace) as store:
        assert dashboard(store, judge_models=["o'brien"]).overall.agreement == 1.0
        assert dashboard(store, judge_models=["x' OR '1'='1"]).by_run.empty
        with pytest.raises(ValueError, match="not both"):
            dashboard(store, run_id="run-1", run_ids=["run-1"])


def test_label_facets_list_what_the_filters_can_choose(workspace, three_runs):
    _, ai = three_runs
    with Store.open(workspace) as store:
        facets = label_facets(store)
    newest = {}
    for label in ai:
        newest[label.run_id] = max(newest.get(label.run_id, 0.0), label.created_at)
    assert facets.run_ids == sorted(newest, key=newest.get, reverse=True)
    assert facets.judge_models == ["big", "small"] and facets.constitution_versions == sorted(
        {"v1", "v2"} & {a.constitution_version for a in ai}
    )
    assert facets.principles == sorted({a.principle_id for a in ai})


def test_the_verdict_reads_the_same_counts_as_the_figures_and_changes_with_labels(workspace):
    pairs = make_pairs(40)
    # a judge that always prefers whatever is shown first: no pair survives the swap
    ai = [ai_label("run-1", p.pair_id, 0.9, 0.9) for p in pairs]
    load(workspace, pairs, [], ai)
    with Store.open(workspace) as store:
        board = dashboard(store)
    assert board.verdict.name == "unreliable"
    swap = next(s for s in board.verdict.signals if s.name == "swap consistency")
    assert swap.estimate.value == board.overall["position_consistency"] == 0.0 and swap.estimate.n == 40
    assert next(s for s in board.verdict.signals if s.name == "agreement with people").grade == "unknown"

    # a consistent judge whose every choice people share is trustworthy once people have labelled
    workspace2 = workspace.__class__(workspace.root.parent / "data2")
    good = [
        ai_label("run-1", p.pair_id, 0.99, 0.01) if i % 2 else ai_label("run-1", p.pair_id, 0.01, 0.99)
        for i, p in enumerate(pairs)
    ]
    humans = [HumanLabel(p.pair_id, "ann", "a" if i % 2 else "b", False) for i, p in enumerate(pairs)]
    load(workspace2, pairs, [], good)
    with Store.open(workspace2) as store:
        assert dashboard(store).verdict.name == "weak"  # consistent, but nothing shows it agrees with people
        store.import_human_labels(humans)
        board = dashboard(store)
    assert board.verdict.name == "trustworthy", board.verdict.reasons  # (at P = 0.9 it would be weak: ECE 0.1)
    agreement = next(s for s in board.verdict.signals if s.name == "agreement with people")
    assert agreement.estimate.value == board.overall["agreement"] == 1.0


def test_the_store_queries_need_no_call_before_them_and_read_the_labels_as_they_are(workspace):
    """Each query that reads people's label counts counts them itself: none needs another called first, on a
    fresh connection, and a label added between two queries is in the second."""
    pairs = make_pairs(3)
    humans = [HumanLabel("p000", "ann", "b"), HumanLabel("p000", "bo", "b"), HumanLabel("p001", "ann", "a")]
    ai = [ai_label("run-1", "p000", 0.9, 0.1), ai_label("run-1", "p001", 0.2, 0.8), ai_label("run-1", "p002", 1, 0)]
    load(workspace, pairs, humans, ai)
    run = LabelFilter(run_ids=("run-1",))
    with Store.open(workspace) as store:
        assert store.disagreements(run, 10).pair_id.tolist() == ["p000", "p000", "p001"]
    with Store.open(workspace) as store:
        assert store.alpha_counts(run)[0] == 1  # one pair with two people's labels
    with Store.open(workspace) as store:
        assert sorted(store.calibration_rows(run).pair_id) == ["p000", "p001"]
    with Store.open(workspace) as store:
        assert sum(cell["nb"] for cell in store.agreement_cells(run, 0.05, 10) if cell["k_run"]) == 2
        store.import_human_labels([HumanLabel("p002", "ann", "b")])
        assert sorted(store.calibration_rows(run).pair_id) == ["p000", "p001", "p002"]
