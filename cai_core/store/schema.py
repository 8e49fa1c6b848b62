"""The database's schema, as the migrations that build it: applied in order, each once (`StoreCore.migrate`).
A change to the schema is a new migration at the end; one applied is never edited."""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # 1: constitutions, runs, traces
    """
    CREATE TABLE constitution_saves (
        save_id BIGINT PRIMARY KEY, path TEXT NOT NULL, name TEXT NOT NULL, version TEXT NOT NULL,
        content TEXT NOT NULL, note TEXT NOT NULL DEFAULT '', saved_at DOUBLE NOT NULL);
    CREATE TABLE constitution_versions (
        version TEXT PRIMARY KEY, name TEXT NOT NULL, content TEXT NOT NULL, first_seen DOUBLE NOT NULL);
    CREATE TABLE runs (
        run_id TEXT PRIMARY KEY, kind TEXT NOT NULL, config TEXT NOT NULL, model TEXT NOT NULL,
        constitution_name TEXT, constitution_version TEXT, status TEXT NOT NULL, done BIGINT NOT NULL,
        total BIGINT NOT NULL, message TEXT NOT NULL, created_at DOUBLE NOT NULL, updated_at DOUBLE NOT NULL);
    CREATE TABLE traces (
        trace_id TEXT PRIMARY KEY, run_id TEXT NOT NULL, prompt_id TEXT NOT NULL, prompt TEXT NOT NULL,
        category TEXT NOT NULL, sample_index INTEGER NOT NULL, model TEXT NOT NULL,
        constitution_name TEXT NOT NULL, constitution_version TEXT NOT NULL, created_at DOUBLE NOT NULL);
    CREATE TABLE trace_steps (
        trace_id TEXT NOT NULL, round INTEGER NOT NULL, principle_id TEXT, critique TEXT, response TEXT NOT NULL,
        prompt_tokens INTEGER NOT NULL, critique_tokens INTEGER NOT NULL, response_tokens INTEGER NOT NULL,
        seconds DOUBLE NOT NULL, stopped BOOLEAN NOT NULL, created_at DOUBLE NOT NULL,
        PRIMARY KEY (trace_id, round));
    CREATE TABLE ingest_offsets (path TEXT PRIMARY KEY, bytes BIGINT NOT NULL);
    CREATE INDEX traces_run ON traces (run_id);
    """,
    # 2: people's verdicts on trace rounds
    """
    CREATE TABLE step_verdicts (
        trace_id TEXT NOT NULL, round INTEGER NOT NULL, annotator TEXT NOT NULL,
        revision_verdict TEXT CHECK (revision_verdict IN ('better', 'same', 'worse')),
        critique_verdict TEXT CHECK (critique_verdict IN ('valid', 'invalid')),
        note TEXT NOT NULL, updated_at DOUBLE NOT NULL,
        PRIMARY KEY (trace_id, round, annotator));
    """,
    # 3: RLAIF: response pairs, AI judges' soft labels, people's labels
    """
    CREATE TABLE pairs (
        pair_id TEXT PRIMARY KEY, prompt TEXT NOT NULL, response_a TEXT NOT NULL, response_b TEXT NOT NULL,
        source TEXT NOT NULL CHECK (source IN ('sampled', 'sl-cai', 'import')), origin TEXT NOT NULL,
        origin_index INTEGER NOT NULL, origin_a TEXT NOT NULL, origin_b TEXT NOT NULL, created_at DOUBLE NOT NULL);
    CREATE TABLE ai_labels (
        run_id TEXT NOT NULL, pair_id TEXT NOT NULL, principle_id TEXT NOT NULL, judge_model TEXT NOT NULL,
        constitution_version TEXT NOT NULL, strategy TEXT NOT NULL, method TEXT NOT NULL, cot BOOLEAN NOT NULL,
        few_shot INTEGER NOT NULL, p_order1 DOUBLE, p_order2 DOUBLE, p_a DOUBLE, failed BOOLEAN NOT NULL,
        reasoning_1 TEXT, reasoning_2 TEXT, seconds DOUBLE NOT NULL, created_at DOUBLE NOT NULL,
        PRIMARY KEY (run_id, pair_id, principle_id));
    CREATE TABLE human_labels (
        pair_id TEXT NOT NULL, annotator TEXT NOT NULL,
        choice TEXT NOT NULL CHECK (choice IN ('a', 'b', 'tie', 'both_bad', 'skip')),
        shown_swapped BOOLEAN NOT NULL, rationale TEXT NOT NULL, created_at DOUBLE NOT NULL,
        updated_at DOUBLE NOT NULL, PRIMARY KEY (pair_id, annotator));
    """,
    # 4: training runs' logged metrics and where their models are
    """
    CREATE TABLE train_metrics (
        run_id TEXT NOT NULL, step BIGINT NOT NULL, name TEXT NOT NULL, value DOUBLE NOT NULL,
        created_at DOUBLE NOT NULL, PRIMARY KEY (run_id, step, name));
    CREATE TABLE trained_models (
        run_id TEXT PRIMARY KEY, kind TEXT NOT NULL, path TEXT NOT NULL, base_model TEXT NOT NULL,
        step BIGINT NOT NULL, created_at DOUBLE NOT NULL);
    """,
    # 5: evaluation: answers per (prompt, wrapper, model), pairwise judgments, SL-CAI round judgments
    """
    CREATE TABLE eval_answers (
        run_id TEXT NOT NULL, prompt_key TEXT NOT NULL, wrapper TEXT NOT NULL, model TEXT NOT NULL,
        set_name TEXT NOT NULL, prompt TEXT NOT NULL, sent TEXT NOT NULL, category TEXT NOT NULL,
        label TEXT NOT NULL CHECK (label IN ('harmful', 'benign')), answer TEXT NOT NULL, refused BOOLEAN NOT NULL,
        tokens INTEGER NOT NULL, seconds DOUBLE NOT NULL, created_at DOUBLE NOT NULL,
        PRIMARY KEY (run_id, prompt_key, wrapper, model));
    CREATE TABLE eval_judgments (
        run_id TEXT NOT NULL, prompt_key TEXT NOT NULL, wrapper TEXT NOT NULL, aspect TEXT NOT NULL,
        model_a TEXT NOT NULL, model_b TEXT NOT NULL, principle_id TEXT NOT NULL, p_order1 DOUBLE, p_order2 DOUBLE,
        p_a DOUBLE, failed BOOLEAN NOT NULL, judge_model TEXT NOT NULL, constitution_version TEXT NOT NULL,
        created_at DOUBLE NOT NULL, PRIMARY KEY (run_id, prompt_key, wrapper, aspect, model_a, model_b));
    CREATE TABLE round_judgments (
        run_id TEXT NOT NULL, trace_id TEXT NOT NULL, round INTEGER NOT NULL, versus_round INTEGER NOT NULL,
        revision_principle_id TEXT NOT NULL, judge_principle_id TEXT NOT NULL, p_order1 DOUBLE, p_order2 DOUBLE,
        p_later DOUBLE, failed BOOLEAN NOT NULL, judge_model TEXT NOT NULL, constitution_version TEXT NOT NULL,
        created_at DOUBLE NOT NULL, PRIMARY KEY (run_id, trace_id, round, versus_round));
    """,
    # 6: refusals read by a judge keep its probability
    """
    ALTER TABLE eval_answers ADD COLUMN refusal_p DOUBLE;
    """,
    # 7: what ingest could not read (a line or a whole job), and the pair each annotator has on screen
    """
    CREATE TABLE ingest_problems (
        path TEXT NOT NULL, line BIGINT NOT NULL, problem TEXT NOT NULL, seen_at DOUBLE NOT NULL,
        PRIMARY KEY (path, line));
    CREATE TABLE annotation_claims (annotator TEXT PRIMARY KEY, pair_id TEXT NOT NULL, claimed_at DOUBLE NOT NULL);
    """,
    # 8: a trace says what went wrong on the way in (a prompt cut to fit the model's context)
    """
    ALTER TABLE traces ADD COLUMN warning TEXT;
    """,
    # 9: the judge audit: calibrations of a judge (its priors per principle and order, a Platt fit, the
    # before/after report), the frozen contest scores of a disagreement-first queue, and what it served
    """
    CREATE TABLE judge_calibrations (
        calibration_id TEXT PRIMARY KEY, run_id TEXT NOT NULL, judge_model TEXT NOT NULL,
        constitution_version TEXT NOT NULL, slope DOUBLE NOT NULL, bias DOUBLE NOT NULL, report TEXT NOT NULL,
        created_at DOUBLE NOT NULL);
    CREATE TABLE calibration_priors (
        calibration_id TEXT NOT NULL, principle_id TEXT NOT NULL, prior_order1 DOUBLE NOT NULL,
        prior_order2 DOUBLE NOT NULL, PRIMARY KEY (calibration_id, principle_id));
    CREATE TABLE queue_scores (
        run_id TEXT NOT NULL, pair_id TEXT NOT NULL, score DOUBLE NOT NULL, queue_key DOUBLE NOT NULL,
        scored_at DOUBLE NOT NULL, PRIMARY KEY (run_id, pair_id));
    CREATE TABLE queue_served (
        run_id TEXT NOT NULL, pair_id TEXT NOT NULL, annotator TEXT NOT NULL, served_at DOUBLE NOT NULL,
        PRIMARY KEY (run_id, pair_id, annotator));
    """,
    # 10: an annotator holds a few pairs at once (the Annotate page shows the next ones without a round trip)
    """
    CREATE TABLE annotation_claims_held (
        annotator TEXT NOT NULL, pair_id TEXT NOT NULL, claimed_at DOUBLE NOT NULL, PRIMARY KEY (annotator, pair_id));
    INSERT INTO annotation_claims_held SELECT annotator, pair_id, claimed_at FROM annotation_claims;
    DROP TABLE annotation_claims;
    ALTER TABLE annotation_claims_held RENAME TO annotation_claims;
    """,
    # 11: who imported a person's label ('' where the person saved it in the app): an import corrects its own
    # labels only, never one someone saved or another importer's
    """
    ALTER TABLE human_labels ADD COLUMN imported_by TEXT DEFAULT '';
    """,
    # 12: an Inspect evaluation's headline metrics, per scorer, with the log they came from
    """
    CREATE TABLE inspect_scores (
        run_id TEXT NOT NULL, task TEXT NOT NULL, model TEXT NOT NULL, scorer TEXT NOT NULL, metric TEXT NOT NULL,
        value DOUBLE NOT NULL, log TEXT NOT NULL, created_at DOUBLE NOT NULL, PRIMARY KEY (run_id, scorer, metric));
    """,
    # 13: a label run made with a calibration keeps each label's calibrated P(a better) beside the raw one, and
    # which calibration made it
    """
    ALTER TABLE ai_labels ADD COLUMN p_a_calibrated DOUBLE;
    ALTER TABLE ai_labels ADD COLUMN calibration_id TEXT;
    """,
    # 14: the evaluation's graders audited by people: a seeded sample of an eval
    # run's refusal verdicts (one answer: model_b is '') and harm verdicts (one harmlessness comparison), people's
    # answers on them, and the item each annotator has on screen
    """
    CREATE TABLE grader_audit_items (
        run_id TEXT NOT NULL, item_id TEXT NOT NULL, kind TEXT NOT NULL CHECK (kind IN ('refusal', 'harm')),
        prompt_key TEXT NOT NULL, wrapper TEXT NOT NULL, model_a TEXT NOT NULL, model_b TEXT NOT NULL,
        shown_swapped BOOLEAN NOT NULL, sample_key TEXT NOT NULL, sampled_at DOUBLE NOT NULL,
        PRIMARY KEY (run_id, item_id));
    CREATE TABLE grader_audit_labels (
        run_id TEXT NOT NULL, item_id TEXT NOT NULL, annotator TEXT NOT NULL,
        answer TEXT NOT NULL CHECK (answer IN ('yes', 'no', 'a', 'b', 'same', 'skip')), updated_at DOUBLE NOT NULL,
        PRIMARY KEY (run_id, item_id, annotator));
    CREATE TABLE grader_audit_claims (
        annotator TEXT PRIMARY KEY, run_id TEXT NOT NULL, item_id TEXT NOT NULL, claimed_at DOUBLE NOT NULL);
    """,
    # 15: what ingest last read of each finished job's run.json and progress.json (their stat), so that a redraw
    # reads only the jobs whose files changed; and the data's version, which every write moves on, so that what a
    # page computed from the data is reused (`StoreCore._reused`) until a write changes it. The database's id
    # tells a database made again at the same path from the one before it.
    """
    CREATE TABLE job_file_stamps (folder TEXT PRIMARY KEY, run_id TEXT NOT NULL, stamp TEXT NOT NULL);
    CREATE TABLE data_version (database_id TEXT NOT NULL, version BIGINT NOT NULL);
    INSERT INTO data_version VALUES (uuid()::TEXT, 0);
    """,
    # 16: the graders' audit asks of one answer "is this answer harmful?" (kind 'harmful', model_b ''), beside the
    # pairwise harm question; DuckDB cannot change a CHECK, so the sample's table is made again with its rows
    """
    CREATE TABLE grader_audit_items_16 (
        run_id TEXT NOT NULL, item_id TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('refusal', 'harm', 'harmful')),
        prompt_key TEXT NOT NULL, wrapper TEXT NOT NULL, model_a TEXT NOT NULL, model_b TEXT NOT NULL,
        shown_swapped BOOLEAN NOT NULL, sample_key TEXT NOT NULL, sampled_at DOUBLE NOT NULL,
        PRIMARY KEY (run_id, item_id));
    INSERT INTO grader_audit_items_16 SELECT * FROM grader_audit_items;
    DROP TABLE grader_audit_items;
    ALTER TABLE grader_audit_items_16 RENAME TO grader_audit_items;
    """,
]
