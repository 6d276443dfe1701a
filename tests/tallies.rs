//! The counters of migration 0009 agree with counting the tables: `tallies` (jobs and outbox rows
//! by state, the spool's instances and bytes) and `studies_unreported`, after inserts, state
//! changes, purges, restores, deletes, a fold and a TRUNCATE.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use cxr_worker::db;
use sqlx::PgPool;

/// What the tallies say must be what counting the tables says.
async fn assert_counts(pool: &PgPool, when: &str) {
    let snap = db::stats::snapshot(pool).await.unwrap();
    let jobs: Vec<(String, i64)> = sqlx::query_as(
        "SELECT s, (SELECT count(*) FROM jobs WHERE state = s)
         FROM unnest(ARRAY['queued', 'running', 'done', 'failed']) s",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(snap.jobs, jobs, "jobs by state, {when}");
    assert_eq!(
        db::jobs::count_by_state(pool).await.unwrap(),
        jobs,
        "{when}"
    );
    let outbox: Vec<(String, i64)> = sqlx::query_as(
        "SELECT s, (SELECT count(*) FROM outbox WHERE state = s)
         FROM unnest(ARRAY['queued', 'sending', 'sent', 'failed']) s",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(snap.outbox, outbox, "outbox by state, {when}");
    let spool: (i64, i64) = sqlx::query_as(
        "SELECT count(*), COALESCE(sum(size_bytes), 0)::int8 FROM instances
         WHERE purged_at IS NULL",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        (snap.spool_instances, snap.spool_bytes),
        spool,
        "spool, {when}"
    );
    let unreported: Vec<String> = sqlx::query_scalar(
        "SELECT study_instance_uid FROM studies s WHERE NOT EXISTS
             (SELECT 1 FROM reports r WHERE r.study_instance_uid = s.study_instance_uid)
         ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let kept: Vec<String> =
        sqlx::query_scalar("SELECT study_instance_uid FROM studies_unreported ORDER BY 1")
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(kept, unreported, "unreported studies, {when}");
}

async fn exec(pool: &PgPool, sql: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn the_counters_agree_with_counting_the_tables() {
    let db = TestDb::create().await;
    let pool = db.pool().await;
    db::migrate(&pool).await.unwrap();
    assert_counts(&pool, "empty").await;

    // three studies of two instances, a job each, an SR each for two of them, two destinations
    exec(
        &pool,
        "INSERT INTO studies (study_instance_uid) SELECT 's' || g FROM generate_series(1, 3) g;
         INSERT INTO series (series_instance_uid, study_instance_uid)
             SELECT 's' || g || '.1', 's' || g FROM generate_series(1, 3) g;
         INSERT INTO instances (sop_instance_uid, series_instance_uid, study_instance_uid,
             sop_class_uid, transfer_syntax_uid, calling_ae_title, called_ae_title, peer_address,
             spool_key, size_bytes)
             SELECT 's' || g || '.1.' || k, 's' || g || '.1', 's' || g, '1.2', '1.2.840.10008.1.2.1',
                    'A', 'B', '127.0.0.1', 'k' || g || k, 1000 * g + k
             FROM generate_series(1, 3) g, generate_series(1, 2) k;
         INSERT INTO jobs (study_instance_uid) SELECT 's' || g FROM generate_series(1, 3) g;
         INSERT INTO reports (study_instance_uid, kind, sr_sop_instance_uid,
             sr_series_instance_uid, instance_number, analysed_images, archive_path)
             SELECT 's' || g, 'findings', 's' || g || '.9.1', 's' || g || '.9', 1, 2, 'a'
             FROM generate_series(1, 2) g;
         INSERT INTO outbox (kind, study_instance_uid, sop_class_uid, sop_instance_uid,
             destination_name, destination_ae_title, destination_host, destination_port,
             archive_path)
             SELECT 'sr', 's' || g, '1.2', 's' || g || '.9.1', d, d, 'h', 104, 'a'
             FROM generate_series(1, 2) g, unnest(ARRAY['PACS', 'VNA']) d;",
    )
    .await;
    assert_counts(&pool, "after the inserts").await;

    exec(
        &pool,
        "UPDATE jobs SET state = 'running', lease_expires_at = now() WHERE study_instance_uid = 's1';
         UPDATE jobs SET state = 'done' WHERE study_instance_uid = 's2';
         UPDATE jobs SET attempts = attempts + 1;
         UPDATE outbox SET state = 'sent', sent_at = now() WHERE destination_name = 'PACS';
         UPDATE outbox SET state = 'failed' WHERE destination_name = 'VNA' AND study_instance_uid = 's1';
         UPDATE instances SET purged_at = now() WHERE study_instance_uid = 's2';
         UPDATE instances SET size_bytes = size_bytes + 5 WHERE study_instance_uid = 's3';",
    )
    .await;
    assert_counts(&pool, "after the state changes").await;

    assert!(db::stats::fold_tallies(&pool).await.unwrap() > 0);
    assert_counts(&pool, "after a fold").await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM tallies")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(
        rows <= 4 + 2 * 4 + 1,
        "one row per key after a fold: {rows}"
    );

    // a restore (file stored again), deletes, a report deleted, more changes after the fold
    exec(
        &pool,
        "UPDATE instances SET purged_at = NULL, size_bytes = 7 WHERE sop_instance_uid = 's2.1.1';
         UPDATE jobs SET state = 'failed' WHERE study_instance_uid = 's1';
         DELETE FROM outbox WHERE destination_name = 'VNA' AND study_instance_uid = 's2';
         DELETE FROM outbox WHERE study_instance_uid = 's1' AND destination_name = 'PACS';
         DELETE FROM reports WHERE study_instance_uid = 's1';
         DELETE FROM instances WHERE sop_instance_uid = 's3.1.2';
         DELETE FROM jobs WHERE study_instance_uid = 's3';",
    )
    .await;
    assert_counts(&pool, "after the deletes").await;

    exec(
        &pool,
        "TRUNCATE outbox CASCADE; TRUNCATE jobs CASCADE;
         INSERT INTO jobs (study_instance_uid) VALUES ('s3');",
    )
    .await;
    assert_counts(&pool, "after a TRUNCATE").await;
}
