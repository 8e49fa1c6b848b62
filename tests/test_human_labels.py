import threading
import time

import pytest

from cai_core.jobs import JobFolder
from cai_core.records import AILabel, HumanLabel, Pair, shown_swapped, to_row
from cai_core.store import PairQueue, Store


def make_pairs(n):
    return [Pair(f"p{i:02d}", f"prompt {i}", f"left {i}", f"right {i}", "import", "f", i, "a", "b") for i in range(n)]


@pytest.fixture
def store_with_pairs(workspace):
    with Store.open(workspace) as store:
        store.add_pairs(make_pairs(20))
    return workspace


def test_sides_are_randomised_per_annotator_stored_and_mapped_back(store_with_pairs):
    with Store.open(store_with_pairs) as store:
        ann = store.annotation_queue("ann", limit=20)
        bo = store.annotation_queue("bo", limit=20)
        assert [i.shown_swapped for i in ann] == [i.shown_swapped for i in store.annotation_queue("ann", limit=20)]
        assert {i.shown_swapped for i in ann} == {True, False}
        assert [i.shown_swapped for i in ann] != [i.shown_swapped for i in bo]
        swapped = next(i for i in ann if i.shown_swapped)
        number = int(swapped.pair_id[1:])
        assert (swapped.left, swapped.right) == (f"right {number}", f"left {number}")
        label = store.save_human_label(swapped.label("ann", "a", "the left one is kinder"))
        assert (label.choice, label.shown_swapped) == ("b", True)  # the left side was response_b
        straight = next(i for i in ann if not i.shown_swapped)
        assert store.save_human_label(straight.label("ann", "a")).choice == "a"
        assert swapped.label("ann", "tie").choice == "tie" and swapped.label("ann", "both_bad").choice == "both_bad"
        stored = {h.pair_id: h for h in store.human_labels(annotator="ann")}
        assert stored[swapped.pair_id].shown_swapped and stored[swapped.pair_id].rationale == "the left one is kinder"
        assert shown_swapped("ann", swapped.pair_id)


def test_the_queue_never_repeats_a_pair_and_respects_the_overlap(store_with_pairs):
    with Store.open(store_with_pairs) as store:
        first = store.annotation_queue("ann", PairQueue(overlap=2), limit=3)
        for item in first:
            store.save_human_label(item.label("ann", "a"))
        store.save_human_label(store.annotation_queue("ann", PairQueue(overlap=2))[0].label("ann", "skip"))
        queue = [i.pair_id for i in store.annotation_queue("ann", PairQueue(overlap=2), limit=50)]
        assert len(queue) == 16 and not {i.pair_id for i in first} & set(queue)
        # bo sees the pairs ann labelled first (one label short of the overlap), the skipped one last among them
        bo = [i.pair_id for i in store.annotation_queue("bo", PairQueue(overlap=2), limit=50)]
        assert bo[:3] == [i.pair_id for i in first] and len(bo) == 20
        for pair_id in bo[:3]:
            store.save_human_label(HumanLabel(pair_id, "bo", "b"))
        cy = [i.pair_id for i in store.annotation_queue("cy", PairQueue(overlap=2), limit=50)]
        assert not set(bo[:3]) & set(cy) and len(cy) == 17  # those three have their two labels
        assert store.annotation_progress("ann", PairQueue(overlap=2)) == {"labelled": 4, "remaining": 16, "pairs": 20}
        assert store.annotation_progress("cy", PairQueue(overlap=2)) == {"labelled": 0, "remaining": 17, "pairs": 20}
        assert store.annotation_queue("cy", PairQueue(overlap=2, source="sampled")) == []


def test_edit_keeps_created_at_and_undo_removes_the_latest(store_with_pairs):
    with Store.open(store_with_pairs) as store:
        store.save_human_label(HumanLabel("p00", "ann", "a", created_at=100.0, updated_at=100.0))
        store.save_human_label(HumanLabel("p01", "ann", "b", created_at=200.0, updated_at=200.0))
        store.save_human_label(
            HumanLabel("p00", "ann", "tie", rationale="on reflection", created_at=300.0, updated_at=300.0)
        )
        edited = store.human_labels(pair_id="p00")[0]
        assert (edited.choice, edited.rationale, edited.created_at, edited.updated_at) == (
            "tie",
            "on reflection",
            100.0,
            300.0,
        )
        assert store.undo_human_label("ann").pair_id == "p00"  # the most recently saved, even though created first
        assert [h.pair_id for h in store.human_labels(annotator="ann")] == ["p01"]
        assert store.undo_human_label("ann").pair_id == "p01" and store.undo_human_label("ann") is None
        with pytest.raises(ValueError, match="choice 'maybe'"):
            store.save_human_label(HumanLabel("p00", "ann", "maybe"))
        with pytest.raises(ValueError, match="annotator"):
            store.save_human_label(HumanLabel("p00", "  ", "a"))
        with pytest.raises(KeyError, match="no pair 'nope'"):
            store.save_human_label(HumanLabel("nope", "ann", "a"))


def test_concurrent_annotators_and_a_labelling_job_lose_no_label(store_with_pairs):
    """Six annotators on their own connections (as Streamlit sessions are), all labelling the same pairs
    at once, one of them editing as they go, while a job spools AI labels and the app ingests them."""
    ws = store_with_pairs
    errors = []
    annotators = [f"ann{i}" for i in range(6)]
    start = threading.Barrier(len(annotators) + 1)

    def annotate(name):
        try:
            start.wait()
            for n in range(20):
                with Store.open(ws) as store:
                    [item] = store.annotation_queue(name, PairQueue(overlap=len(annotators)), limit=1)
                    store.save_human_label(item.label(name, "ab"[n % 2], f"{name} #{n}"))
                if name == "ann0":
                    with Store.open(ws) as store:
                        store.save_human_label(HumanLabel(item.pair_id, name, "tie", rationale="edited"))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    def job_and_ingest():
        try:
            job = JobFolder.create(ws.runs_dir, "label-run", {"kind": "label", "model": "m"})
            start.wait()
            for n in range(20):
                label = AILabel(
                    "label-run", f"p{n:02d}", "harm", "m", "v", "sample", "logprob", False, 0, 0.6, 0.3, 0.65, False
                )
                job.append("ai_labels", [to_row(label)])
                with Store.open(ws) as store:
                    store.ingest(ws.runs_dir)
                time.sleep(0.001)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=annotate, args=(name,)) for name in annotators]
    threads.append(threading.Thread(target=job_and_ingest))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    with Store.open(ws) as store:
        store.ingest(ws.runs_dir)
        labels = store.human_labels()
        assert len(labels) == 6 * 20 and len({(h.pair_id, h.annotator) for h in labels}) == 120
        assert all(h.choice == "tie" for h in labels if h.annotator == "ann0")
        assert store.con.execute("SELECT count(*) FROM ai_labels").fetchall()[0][0] == 20


def test_simultaneous_edits_of_one_label_never_conflict(store_with_pairs, monkeypatch):
    """One person in eight browser tabs, saving the same label at once: unserialised, DuckDB fails all but one
    of each round of concurrent commits with a conflict. The store's write lock serialises them: every save
    lands and no commit ever conflicts."""
    import duckdb

    conflicts = []
    real = Store._exec

    def counting(self, sql, params=None):
        try:
            return real(self, sql, params)
        except duckdb.TransactionException:
            conflicts.append(sql)
            raise

    monkeypatch.setattr(Store, "_exec", counting)
    saved, errors = [], []
    start = threading.Barrier(8)

    def edit(tab):
        try:
            start.wait()
            for n in range(30):
                with Store.open(store_with_pairs) as store:
                    saved.append(store.save_human_label(HumanLabel("p00", "ann", "ab"[n % 2], rationale=f"{tab}-{n}")))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=edit, args=(tab,)) for tab in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert len(saved) == 240 and not conflicts
    with Store.open(store_with_pairs) as store:
        [final] = store.human_labels(pair_id="p00")
    assert final.rationale in {s.rationale for s in saved}


def test_the_pair_on_an_annotators_screen_is_theirs_until_they_label_it(store_with_pairs, monkeypatch):
    """Overlap 1: a pair handed to ann is not handed to bo meanwhile (before claims both got p00 and the pair
    ended with two labels), stays ann's across reruns, and comes back to the queue if ann walks away."""
    with Store.open(store_with_pairs) as store:
        first = store.next_annotation("ann", PairQueue(overlap=1))
        assert store.next_annotation("ann", PairQueue(overlap=1)) == first  # a rerun shows the same pair
        other = store.next_annotation("bo", PairQueue(overlap=1))
        assert other.pair_id != first.pair_id
        assert first.pair_id not in {i.pair_id for i in store.annotation_queue("cy", PairQueue(overlap=1), limit=20)}
        assert store.annotation_progress("cy", PairQueue(overlap=1))["remaining"] == 18
        store.save_human_label(first.label("ann", "a"))
        following = store.next_annotation("ann", PairQueue(overlap=1))
        assert following.pair_id not in (first.pair_id, other.pair_id)
        assert store.undo_human_label("ann").pair_id == first.pair_id
        assert store.next_annotation("ann", PairQueue(overlap=1)).pair_id == first.pair_id  # the undone pair comes back
        monkeypatch.setattr("cai_core.store.labels.CLAIM_SECONDS", -1.0)  # every claim has expired
        assert store.annotation_queue("cy", PairQueue(overlap=1), limit=1)[0].pair_id == "p00"
        store.save_human_label(other.label("bo", "b"))  # a label saved late is kept all the same
        assert [label.annotator for label in store.human_labels(pair_id=other.pair_id)] == ["bo"]


def test_an_annotator_holds_a_look_ahead_of_pairs_in_the_order_they_were_handed_out(store_with_pairs):
    """The Annotate page claims the next few pairs so that it can show them without a round trip: nobody else
    is handed them meanwhile (overlap 1), a rerun gets the same pairs in the same order, a label frees its
    slot for the queue's next pair, and an undone pair comes first."""
    with Store.open(store_with_pairs) as store:
        ahead = [item.pair_id for item in store.claim_annotations("ann", 3, PairQueue(overlap=1))]
        assert len(set(ahead)) == 3
        assert not set(ahead) & {i.pair_id for i in store.annotation_queue("bo", PairQueue(overlap=1), limit=20)}
        assert [item.pair_id for item in store.claim_annotations("ann", 3, PairQueue(overlap=1))] == ahead
        assert store.next_annotation("ann", PairQueue(overlap=1)).pair_id == ahead[0]
        store.save_human_label(store.claim_annotations("ann", 3, PairQueue(overlap=1))[0].label("ann", "a"))
        after = [item.pair_id for item in store.claim_annotations("ann", 3, PairQueue(overlap=1))]
        assert after[:2] == ahead[1:] and after[2] not in ahead
        assert store.undo_human_label("ann").pair_id == ahead[0]
        assert [item.pair_id for item in store.claim_annotations("ann", 4, PairQueue(overlap=1))] == [ahead[0], *after]
        assert store.annotation_progress("bo", PairQueue(overlap=1))["remaining"] == 20 - 4
        store.release_claims("ann", keep=1)  # the queue's order changed: only the pair on screen is kept
        assert store.annotation_progress("bo", PairQueue(overlap=1))["remaining"] == 20 - 1
        assert [item.pair_id for item in store.claim_annotations("ann", 1, PairQueue(overlap=1))] == [ahead[0]]
