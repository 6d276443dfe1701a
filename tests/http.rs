//! The HTTP endpoints during a real run: `/healthz`, `/readyz` and `/metrics` answer while the
//! daemon receives, analyses (tiny models) and sends SRs to DCMTK storescp; the metrics count
//! what was sent; `/readyz` turns 503 while PostgreSQL is down and 200 when it is back.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn metrics(http: SocketAddr) -> BTreeMap<String, f64> {
    let (code, body) = http_get(http, "/metrics");
    assert_eq!(code, 200, "{body}");
    parse_metrics(&body)
}

fn metric(m: &BTreeMap<String, f64>, name: &str) -> f64 {
    *m.get(name).unwrap_or_else(|| {
        panic!(
            "{name} not in /metrics: {:#?}",
            m.keys().collect::<Vec<_>>()
        )
    })
}

/// Poll `/readyz` until it answers `want`.
fn wait_ready(http: SocketAddr, want: u16, within: Duration) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        let (code, body) = http_get(http, "/readyz");
        if code == want {
            return json(&body);
        }
        assert!(
            Instant::now() < deadline,
            "/readyz still {code} after {within:?}: {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn endpoints_answer_and_count_an_end_to_end_run() {
    let db = TestDb::create().await;
    let pacs = StoreScp::start();
    let dir = tempfile::tempdir().unwrap().keep();
    let sections = format!(
        "[study]\nquiet_period_secs = 1\nworkers = 1\npoll_interval_secs = 0.2\n\
         [report]\nretry_base_secs = 0.5\n\
         [[destinations]]\nae_title = \"PACS\"\nhost = \"127.0.0.1\"\nport = {}\n\
         outputs = [\"sr\"]\n",
        pacs.port
    );
    let config = write_config_with(
        &dir,
        &db.url,
        "allowed_calling_ae_titles = [\"MODALITY\"]",
        &sections,
    );
    let d = Daemon::start_with(dir, config);
    let http = d.http_addr();
    assert!(http.ip().is_loopback());
    let pool = db.pool().await;

    let (code, body) = http_get(http, "/healthz");
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["status"], "ok");
    let ready = wait_ready(http, 200, Duration::from_secs(10));
    assert_eq!(ready["ready"], true);
    for check in ["database", "models", "spool", "queue"] {
        assert_eq!(ready["checks"][check]["ok"], true, "{ready}");
    }
    assert!(
        ready["checks"]["models"]["detail"]
            .as_str()
            .unwrap()
            .contains("1 worker"),
        "{ready}"
    );
    let (code, _) = http_get(http, "/nothing-here");
    assert_eq!(code, 404);

    // one association refused in negotiation, one that stores two chest images
    let rogue = run(
        "echoscu",
        &["-aet", "ROGUE", "-aec", AE, "127.0.0.1", &d.port()],
    );
    assert!(!rogue.status.success(), "{}", text(&rogue));
    let files = [fixture("RG1_UNCR.dcm"), fixture("966_fixed.dcm")];
    let acks = pynetdicom_send(&d, "MODALITY", 1, &files);
    assert!(acks.iter().all(|a| a.status == 0), "{acks:?}");
    wait_for(
        &pool,
        "SELECT count(*) FROM outbox WHERE state = 'sent'",
        2,
        Duration::from_secs(120),
    )
    .await;

    let m = metrics(http);
    assert_eq!(metric(&m, "cxr_associations_total"), 2.0);
    assert_eq!(metric(&m, "cxr_associations_open"), 0.0);
    assert_eq!(
        metric(
            &m,
            "cxr_associations_rejected_total{reason=\"negotiation\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(&m, "cxr_associations_rejected_total{reason=\"disk_space\"}"),
        0.0
    );
    assert_eq!(metric(&m, "cxr_instances_received_total"), 2.0);
    let stored_bytes: i64 = sqlx::query_scalar("SELECT sum(size_bytes)::int8 FROM instances")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        metric(&m, "cxr_instances_received_bytes_total"),
        stored_bytes as f64
    );
    for reason in ["unreadable", "mismatch", "spool", "database", "oversize"] {
        assert_eq!(
            metric(
                &m,
                &format!("cxr_instances_rejected_total{{reason=\"{reason}\"}}")
            ),
            0.0
        );
    }
    // both images through both models, on the CPU provider
    for model in ["segmenter", "classifier"] {
        let labels = format!("model=\"{model}\",provider=\"cpu\"");
        assert_eq!(
            metric(
                &m,
                &format!("cxr_inference_duration_seconds_count{{{labels}}}")
            ),
            2.0
        );
        assert!(
            metric(
                &m,
                &format!("cxr_inference_duration_seconds_sum{{{labels}}}")
            ) > 0.0
        );
        assert_eq!(
            metric(
                &m,
                &format!("cxr_inference_duration_seconds_bucket{{{labels},le=\"+Inf\"}}")
            ),
            2.0
        );
    }
    assert_eq!(metric(&m, "cxr_decode_duration_seconds_count"), 2.0);
    assert_eq!(
        metric(
            &m,
            "cxr_sr_sends_total{destination=\"PACS\",outcome=\"sent\"}"
        ),
        2.0
    );
    assert_eq!(metric(&m, "cxr_jobs{state=\"done\"}"), 2.0);
    assert_eq!(metric(&m, "cxr_jobs{state=\"failed\"}"), 0.0);
    assert_eq!(metric(&m, "cxr_queue_depth"), 0.0);
    assert_eq!(metric(&m, "cxr_queue_oldest_age_seconds"), 0.0);
    assert_eq!(metric(&m, "cxr_outbox{state=\"sent\"}"), 2.0);
    assert_eq!(metric(&m, "cxr_database_up"), 1.0);
    assert_eq!(metric(&m, "cxr_spool_instances"), 2.0);
    assert_eq!(metric(&m, "cxr_spool_instances_bytes"), stored_bytes as f64);
    assert!(metric(&m, "cxr_spool_filesystem_size_bytes") > 0.0);
    assert!(metric(&m, "cxr_spool_filesystem_available_bytes") > 0.0);
    assert_eq!(metric(&m, "cxr_spool_above_watermark"), 0.0);
    assert!(m.keys().any(|k| k.starts_with("cxr_build_info{version=")));
    assert!(m.keys().all(|k| k.starts_with("cxr_")), "{m:#?}");

    let (code, body) = http_get(http, "/healthz");
    assert_eq!(code, 200, "{body}");
    let ready = wait_ready(http, 200, Duration::from_secs(10));
    assert_eq!(ready["checks"]["queue"]["ok"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_fails_while_the_database_is_down() {
    let pg = PrivatePg::start();
    let db = TestDb::create_on(&pg.admin_url()).await;
    let d = Daemon::start(&db.url, "");
    let http = d.http_addr();
    let ready = wait_ready(http, 200, Duration::from_secs(10));
    assert_eq!(
        ready["checks"]["models"]["detail"],
        "no analysis in this process (study.workers = 0, or process.roles without \"analyse\")"
    );

    pg.pg_stop();
    let down = wait_ready(http, 503, Duration::from_secs(10));
    assert_eq!(down["ready"], false);
    assert_eq!(down["checks"]["database"]["ok"], false, "{down}");
    assert_eq!(down["checks"]["spool"]["ok"], true, "{down}");
    // alive all the same, and the metrics say the database is down
    let (code, _) = http_get(http, "/healthz");
    assert_eq!(code, 200);
    let m = metrics(http);
    assert_eq!(metric(&m, "cxr_database_up"), 0.0);
    assert!(!m.contains_key("cxr_queue_depth"));
    assert!(m.contains_key("cxr_associations_total"));

    pg.pg_start();
    let back = wait_ready(http, 200, Duration::from_secs(30));
    assert_eq!(back["checks"]["database"]["ok"], true);
    assert_eq!(metric(&metrics(http), "cxr_database_up"), 1.0);
}
