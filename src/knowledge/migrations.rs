//! The schema, embedded in the binary: one portable SQL dialect that SQLite and PostgreSQL both accept.

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::SqlStr;
use std::borrow::Cow;

/// Version 1: the managed registry and the knowledge store. Booleans are BIGINT 0/1 and times are
/// milliseconds since the epoch, so the same statements and decoders serve both backends.
const V1: &str = r#"
CREATE TABLE registry_seq (id BIGINT PRIMARY KEY, value BIGINT NOT NULL);
INSERT INTO registry_seq (id, value) VALUES (1, 0);

CREATE TABLE packages (
    name TEXT PRIMARY KEY,
    description TEXT NOT NULL DEFAULT '',
    category TEXT,
    author TEXT,
    license TEXT,
    repository TEXT,
    tags TEXT NOT NULL DEFAULT '[]',
    keywords TEXT NOT NULL DEFAULT '[]',
    downloads BIGINT NOT NULL DEFAULT 0,
    stars BIGINT NOT NULL DEFAULT 0,
    status TEXT NOT NULL DEFAULT 'active',
    prior_status TEXT,
    latest TEXT,
    quality DOUBLE PRECISION,
    quality_detail TEXT,
    production_ready BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    change_seq BIGINT NOT NULL
);
CREATE INDEX packages_change_seq ON packages (change_seq);

CREATE TABLE releases (
    package TEXT NOT NULL,
    version TEXT NOT NULL,
    published_at BIGINT NOT NULL,
    checksum TEXT,
    artifact TEXT,
    signature TEXT,
    signer TEXT,
    yanked BIGINT NOT NULL DEFAULT 0,
    quarantined BIGINT NOT NULL DEFAULT 0,
    change_seq BIGINT NOT NULL,
    PRIMARY KEY (package, version)
);
CREATE INDEX releases_change_seq ON releases (change_seq);

CREATE TABLE dependencies (
    package TEXT NOT NULL,
    version TEXT NOT NULL,
    dependency TEXT NOT NULL,
    requirement TEXT NOT NULL,
    PRIMARY KEY (package, version, dependency)
);
CREATE INDEX dependencies_dependency ON dependencies (dependency);

CREATE TABLE cursors (name TEXT PRIMARY KEY, value TEXT NOT NULL);

CREATE TABLE verification_cache (
    checksum TEXT NOT NULL,
    signature TEXT NOT NULL,
    public_key TEXT NOT NULL,
    valid BIGINT NOT NULL,
    verified_at BIGINT NOT NULL,
    PRIMARY KEY (checksum, signature, public_key)
);

CREATE TABLE release_observations (
    package TEXT NOT NULL,
    version TEXT NOT NULL,
    observed_at BIGINT NOT NULL,
    integrity TEXT NOT NULL,
    signature_state TEXT NOT NULL,
    signer TEXT,
    PRIMARY KEY (package, version)
);

CREATE TABLE findings (
    id TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    kind TEXT NOT NULL,
    severity TEXT NOT NULL,
    package TEXT NOT NULL,
    version TEXT,
    state TEXT NOT NULL,
    value DOUBLE PRECISION NOT NULL,
    message TEXT NOT NULL,
    labels TEXT NOT NULL,
    first_seen BIGINT NOT NULL,
    fired_at BIGINT,
    last_seen BIGINT NOT NULL,
    cleared_at BIGINT,
    resolved_at BIGINT,
    plan_state TEXT NOT NULL
);
CREATE INDEX findings_state ON findings (state);
CREATE INDEX findings_fingerprint ON findings (fingerprint);

CREATE TABLE remediations (
    id TEXT PRIMARY KEY,
    idempotency_key TEXT NOT NULL UNIQUE,
    finding_id TEXT,
    policy TEXT NOT NULL,
    action TEXT NOT NULL,
    params TEXT NOT NULL,
    package TEXT NOT NULL,
    version TEXT,
    mode TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    signature TEXT NOT NULL,
    inverse TEXT
);
CREATE INDEX remediations_status ON remediations (status);

CREATE TABLE audit_log (
    seq BIGINT PRIMARY KEY,
    at BIGINT NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT NOT NULL,
    subject TEXT NOT NULL,
    remediation_id TEXT,
    detail TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    signature TEXT NOT NULL
);
"#;

/// Version 2: the policy engine. Which gate stopped a remediation and until when it may wait;
/// maintainers' signed approvals and rejections.
const V2: &str = r#"
ALTER TABLE remediations ADD COLUMN gate TEXT;
ALTER TABLE remediations ADD COLUMN expires_at BIGINT;
CREATE INDEX remediations_policy ON remediations (policy, updated_at);

CREATE TABLE approvals (
    remediation_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    decision TEXT NOT NULL,
    at BIGINT NOT NULL,
    signature TEXT NOT NULL,
    PRIMARY KEY (remediation_id, key_id)
);
"#;

/// Version 3: the verification cache keyed by one digest of (checksum, signature, public key)
/// rather than the three long texts: a third of the size, and a quick primary key to insert
/// 100,000 rows into. It is a cache, so its old rows are dropped (verdicts are recomputed).
const V3: &str = r#"
DROP TABLE verification_cache;
CREATE TABLE verification_cache (
    key TEXT PRIMARY KEY,
    valid BIGINT NOT NULL,
    verified_at BIGINT NOT NULL
);
"#;

/// Version 4: why a package is deprecated (reason and successor, as JSON), for `deprecate`.
const V4: &str = r#"
ALTER TABLE packages ADD COLUMN deprecation TEXT;
"#;

/// Version 5: telemetry and what analysis learns. Install and download counts per release and
/// lookup latency histograms, in minute and hour buckets (`width` in ms) rather than one row per
/// event; every write stamped with the intake sequence (`seq`) so readers take only what changed.
/// Reports one row per (release, reporter, category). Download baselines and quality scores
/// survive restarts.
const V5: &str = r#"
CREATE TABLE intake_seq (id BIGINT PRIMARY KEY, value BIGINT NOT NULL);
INSERT INTO intake_seq (id, value) VALUES (1, 0);

CREATE TABLE telemetry_buckets (
    package TEXT NOT NULL,
    version TEXT NOT NULL,
    width BIGINT NOT NULL,
    bucket BIGINT NOT NULL,
    installs_ok BIGINT NOT NULL,
    installs_failed BIGINT NOT NULL,
    downloads BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    PRIMARY KEY (package, version, width, bucket)
);
CREATE INDEX telemetry_buckets_seq ON telemetry_buckets (seq);
CREATE INDEX telemetry_buckets_bucket ON telemetry_buckets (width, bucket);

CREATE TABLE lookup_buckets (
    width BIGINT NOT NULL,
    bucket BIGINT NOT NULL,
    bound BIGINT NOT NULL,
    lookups BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    PRIMARY KEY (width, bucket, bound)
);
CREATE INDEX lookup_buckets_seq ON lookup_buckets (seq);

CREATE TABLE reports (
    package TEXT NOT NULL,
    version TEXT NOT NULL,
    reporter TEXT NOT NULL,
    category TEXT NOT NULL,
    at BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    PRIMARY KEY (package, version, reporter, category)
);
CREATE INDEX reports_seq ON reports (seq);

CREATE TABLE download_baselines (
    package TEXT PRIMARY KEY,
    mean DOUBLE PRECISION NOT NULL,
    var DOUBLE PRECISION NOT NULL,
    samples BIGINT NOT NULL,
    last_hour BIGINT NOT NULL
);

CREATE TABLE quality_scores (
    package TEXT PRIMARY KEY,
    score DOUBLE PRECISION NOT NULL,
    band TEXT NOT NULL,
    failed TEXT NOT NULL,
    peak DOUBLE PRECISION NOT NULL,
    peak_band TEXT NOT NULL,
    peak_at BIGINT NOT NULL,
    computed_at BIGINT NOT NULL
);
"#;

/// Verification, escalation and learning: a remediation's attempt and verdict, a finding handed
/// to a policy for another attempt, and each policy's standing (demoted or not).
const V6: &str = r#"
ALTER TABLE remediations ADD COLUMN attempt BIGINT NOT NULL DEFAULT 1;
ALTER TABLE remediations ADD COLUMN verify_after_ms BIGINT;
ALTER TABLE remediations ADD COLUMN verify_at BIGINT;
ALTER TABLE remediations ADD COLUMN verdict TEXT;
CREATE INDEX remediations_verify_at ON remediations (verify_at);
CREATE INDEX remediations_finding ON remediations (finding_id);

ALTER TABLE findings ADD COLUMN attempt BIGINT NOT NULL DEFAULT 0;
ALTER TABLE findings ADD COLUMN handed_to TEXT;

CREATE TABLE policy_standing (
    policy TEXT PRIMARY KEY,
    demoted_at BIGINT,
    reason TEXT,
    counted_from BIGINT NOT NULL
);
"#;

/// The registry's search index (rebuilt by `reindex`) and the outbox of webhook notices.
const V7: &str = r#"
CREATE TABLE search_index (
    term TEXT NOT NULL,
    package TEXT NOT NULL,
    PRIMARY KEY (term, package)
);

CREATE TABLE outbox (
    id TEXT PRIMARY KEY,
    url TEXT,
    body TEXT NOT NULL,
    status TEXT NOT NULL,
    tries BIGINT NOT NULL,
    next_at BIGINT NOT NULL,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX outbox_due ON outbox (status, next_at);
"#;

/// The leader's lease: one row per lease name; `token` grows by one with every new holder and
/// fences the writes of a holder that lost it.
const V8: &str = r#"
CREATE TABLE lease (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    token BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    acquired_at BIGINT NOT NULL
);
"#;

/// Version 9: telemetry as one row per intake commit (its counts as JSON), instead of one row
/// per release and bucket; each release counted is a numbered series, named by its number in
/// the batches. The buckets of version 5 are converted when the store opens
/// (`Store::adopt_bucket_tables`), which then drops their tables.
const V9: &str = r#"
CREATE TABLE telemetry_series (
    id BIGINT PRIMARY KEY,
    package TEXT NOT NULL,
    version TEXT NOT NULL,
    UNIQUE (package, version)
);

CREATE TABLE telemetry_batches (
    seq BIGINT PRIMARY KEY,
    width BIGINT NOT NULL,
    first_bucket BIGINT NOT NULL,
    last_bucket BIGINT NOT NULL,
    events BIGINT NOT NULL,
    reports BIGINT NOT NULL,
    body BYTEA NOT NULL
);
CREATE INDEX telemetry_batches_age ON telemetry_batches (width, last_bucket);
"#;

/// Version 10: counting quarantined and deprecated packages and quarantined releases (the
/// planner's guards, the simulator's timeline) reads an index instead of every row.
const V10: &str = r#"
CREATE INDEX packages_status ON packages (status);
CREATE INDEX releases_quarantined ON releases (quarantined) WHERE quarantined = 1;
"#;

/// Version 11: what analysis learns of the whole registry, saved as one snapshot a kind (the
/// download baselines: one row, not one per package).
const V11: &str = r#"
CREATE TABLE learned_snapshots (
    name TEXT PRIMARY KEY,
    taken_at BIGINT NOT NULL,
    body TEXT NOT NULL
);
"#;

/// Version 12: the published catalog's overlay (a ggen marketplace's) reads the yanked releases
/// and the packages with a quality score through indexes, as it does the quarantined ones.
const V12: &str = r#"
CREATE INDEX releases_yanked ON releases (yanked) WHERE yanked = 1;
CREATE INDEX packages_quality ON packages (quality) WHERE quality IS NOT NULL;
"#;

/// Version 13: one row the daemon writes to learn whether the store still takes writes (a full
/// disk, a read-only file), where reading it would say all is well.
const V13: &str = r#"
CREATE TABLE store_probe (
    id BIGINT PRIMARY KEY,
    at BIGINT NOT NULL
);
"#;

pub fn migrator() -> Migrator {
    let step = |version, name, sql| {
        Migration::new(
            version,
            Cow::Borrowed(name),
            MigrationType::Simple,
            SqlStr::from_static(sql),
            false,
        )
    };
    Migrator {
        migrations: Cow::Owned(vec![
            step(1, "registry and knowledge", V1),
            step(2, "policy engine", V2),
            step(3, "compact verification cache", V3),
            step(4, "deprecation notes", V4),
            step(5, "telemetry and learned state", V5),
            step(6, "verification and learning", V6),
            step(7, "search index and notice outbox", V7),
            step(8, "leader lease", V8),
            step(9, "telemetry batches", V9),
            step(10, "status indexes", V10),
            step(11, "learned snapshots", V11),
            step(12, "overlay indexes", V12),
            step(13, "store probe", V13),
        ]),
        ..Migrator::DEFAULT
    }
}
