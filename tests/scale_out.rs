//! Scale-out for real: several daemons at once, each on a "host" of its own (a network namespace
//! with its own address, reached over a veth link), sharing one PostgreSQL and one spool
//! directory, sending to one PACS (DCMTK storescp). Studies sent to both receivers are analysed
//! once and reported with one SR; a worker killed (SIGKILL) or stalled (SIGSTOP) mid-job loses
//! it to the other host after its lease, and a stalled one that resumes commits nothing; and
//! receive, analyse and send run as separate processes (`[process] roles`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::netns::NetNs;
use common::*;
use sqlx::PgPool;

/// A daemon on a host of its own.
struct Host {
    daemon: Daemon,
    // dropped after the daemon (fields drop in order): its namespace outlives it
    _ns: NetNs,
}

/// What every host shares: the database, the spool directory, the PACS.
struct Site {
    db: TestDb,
    pool: PgPool,
    pacs: StoreScp,
    shared: PathBuf,
}

impl Site {
    async fn new() -> Self {
        let db = TestDb::create().await;
        let pool = db.pool().await;
        Self {
            db,
            pool,
            pacs: StoreScp::start(),
            shared: tempfile::tempdir().unwrap().keep(),
        }
    }

    /// Start a daemon named `name` in a namespace of its own: DICOM on the namespace's address,
    /// the database through a relay, the spool in the shared directory, SRs to the PACS.
    /// `roles`: a `[process] roles` list, or `None` for the default (everything).
    fn host(&self, name: &str, roles: Option<&str>, lease_secs: f64) -> Host {
        let ns = NetNs::create();
        let dir = self.shared.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let process = roles.map_or(String::new(), |r| format!("[process]\nroles = {r}\n"));
        let sections = format!(
            r#"
{process}
[study]
quiet_period_secs = 2
workers = 1
poll_interval_secs = 0.2
lease_secs = {lease_secs}

[report]
retry_base_secs = 0.5

[[destinations]]
ae_title = "PACS"
host = "{}"
port = {}
outputs = ["sr"]
"#,
            ns.host_ip, self.pacs.port
        );
        let config = write_config_with(&dir, &ns.database_url(&self.db.url), "", &sections);
        let text = std::fs::read_to_string(&config).unwrap();
        let text = text
            .replacen(
                "listen = \"127.0.0.1:0\"\nread_timeout_secs",
                &format!("listen = \"{}:0\"\nread_timeout_secs", ns.ns_ip),
                1,
            )
            .replacen(
                "dir = \"spool\"",
                &format!("dir = \"{}\"", self.spool().display()),
                1,
            );
        std::fs::write(&config, text).unwrap();
        let daemon = Daemon::start_in(&ns.name, dir, config);
        if roles.is_none_or(|r| r.contains("receive")) {
            assert_eq!(daemon.addr.ip(), ns.ns_ip, "listens on its host's address");
        }
        Host { daemon, _ns: ns }
    }

    fn spool(&self) -> PathBuf {
        self.shared.join("spool")
    }

    async fn count(&self, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.pool).await.unwrap()
    }

    /// Wait until the worker of one of `hosts` holds a job; that host's index.
    async fn holder(&self, hosts: &[&Host]) -> usize {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let owner: Option<String> =
                sqlx::query_scalar("SELECT lease_owner FROM jobs WHERE state = 'running' LIMIT 1")
                    .fetch_optional(&self.pool)
                    .await
                    .unwrap()
                    .flatten();
            if let Some(owner) = owner {
                return hosts
                    .iter()
                    .position(|h| owner.contains(&format!(":{}:", h.daemon.pid())))
                    .unwrap_or_else(|| panic!("lease owner {owner} is none of the hosts"));
            }
            assert!(Instant::now() < deadline, "no worker took the job");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// After a takeover: one report, one SR queued and delivered, the job done after two takes.
    async fn assert_one_report_after_two_takes(&self, log: &str) {
        let (reports, outbox, attempts, state): (i64, i64, i32, String) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM reports), (SELECT count(*) FROM outbox),
                    (SELECT max(attempts) FROM jobs), (SELECT min(state) FROM jobs)",
        )
        .fetch_one(&self.pool)
        .await
        .unwrap();
        assert_eq!((reports, outbox), (1, 1), "{log}");
        assert_eq!(attempts, 2, "the first host's take and the second's");
        assert_eq!(state, "done");
        assert_eq!(self.pacs.files().len(), 1, "one SR at the PACS");
    }
}

/// `n` copies of the real chest CR (RG1_UNCR) with new instance and series UIDs in `study`.
fn chest_copies(dir: &Path, study: &str, n: usize) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    (0..n).map(|_| chest_copy(dir, study).1).collect()
}

/// Four studies, each with one image sent to host A and one to host B at the same time: every
/// study is analysed once (one job, one take, both images in it) and gets one SR; both hosts
/// stored what they were sent into the one spool, and nothing is left staged.
#[tokio::test(flavor = "multi_thread")]
async fn studies_sent_to_two_hosts_are_analysed_once_with_one_sr_each() {
    let site = Site::new().await;
    let a = site.host("a", None, 60.0);
    let b = site.host("b", None, 60.0);
    let studies: Vec<String> = (0..4).map(|_| dul::new_uid()).collect();
    let (mut to_a, mut to_b) = (Vec::new(), Vec::new());
    for study in &studies {
        let files = chest_copies(&site.shared.join("input"), study, 2);
        to_a.push(files[0].clone());
        to_b.push(files[1].clone());
    }
    let (acks_a, acks_b) = std::thread::scope(|s| {
        let sa = s.spawn(|| pynetdicom_send(&a.daemon, "MODALITY", 1, &to_a));
        let sb = s.spawn(|| pynetdicom_send(&b.daemon, "MODALITY", 1, &to_b));
        (sa.join().unwrap(), sb.join().unwrap())
    });
    assert!(acks_a.iter().chain(&acks_b).all(|x| x.status == 0));
    wait_for(
        &site.pool,
        "SELECT count(*) FROM outbox WHERE state = 'sent'",
        4,
        Duration::from_secs(180),
    )
    .await;
    // settle: a second report of any study would come within a quiet period and a poll
    tokio::time::sleep(Duration::from_secs(3)).await;
    let per_study: Vec<(String, i64, i32, String, i64)> = sqlx::query_as(
        "SELECT j.study_instance_uid, count(*) OVER (PARTITION BY j.study_instance_uid),
                j.attempts, j.state,
                (SELECT count(*) FROM reports r WHERE r.study_instance_uid = j.study_instance_uid)
         FROM jobs j ORDER BY 1",
    )
    .fetch_all(&site.pool)
    .await
    .unwrap();
    assert_eq!(per_study.len(), 4, "{per_study:?}");
    for (study, jobs, attempts, state, reports) in &per_study {
        assert!(studies.contains(study));
        assert_eq!(
            (*jobs, *attempts, state.as_str(), *reports),
            (1, 1, "done", 1),
            "{study}"
        );
    }
    assert_eq!(
        site.count("SELECT count(*) FROM instances WHERE state = 'analysed'")
            .await,
        8,
        "both images of every study analysed in its one job"
    );
    assert_eq!(
        site.count("SELECT count(*) FROM reports WHERE instance_number = 1")
            .await,
        4,
        "no revision: each study reported once"
    );
    assert_eq!(site.pacs.files().len(), 4, "one SR per study at the PACS");
    for (host, n) in [(&a, 4), (&b, 4)] {
        let stored = host
            .daemon
            .log_text()
            .lines()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| v["message"] == "stored")
            })
            .count();
        assert_eq!(stored, n, "each receiver stored what it was sent");
    }
    assert!(
        staged_files(&site.spool()).is_empty(),
        "{:?}",
        staged_files(&site.spool())
    );
}

/// Two hosts; the worker that takes the study's job is killed (SIGKILL) mid-job. The other host
/// takes the job over once the lease has expired and reports the study: one SR.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_mid_job_is_taken_over_by_the_other_host() {
    let site = Site::new().await;
    let mut hosts = [site.host("a", None, 2.0), site.host("b", None, 2.0)];
    let files = chest_copies(&site.shared.join("input"), &dul::new_uid(), 5);
    let acks = pynetdicom_send(&hosts[0].daemon, "MODALITY", 1, &files);
    assert!(acks.iter().all(|x| x.status == 0), "{acks:?}");
    let holder = site.holder(&[&hosts[0], &hosts[1]]).await;
    hosts[holder].daemon.kill9();
    assert_eq!(site.count("SELECT count(*) FROM reports").await, 0);
    let other = &hosts[1 - holder];
    wait_for(
        &site.pool,
        "SELECT count(*) FROM outbox WHERE state = 'sent'",
        1,
        Duration::from_secs(120),
    )
    .await;
    site.assert_one_report_after_two_takes(&other.daemon.log_text())
        .await;
    assert_eq!(
        site.count("SELECT count(*) FROM instances WHERE state = 'analysed'")
            .await,
        5
    );
}

/// Two hosts; the worker that takes the study's job is stalled (SIGSTOP) past its lease. The
/// other host takes the job over and reports the study; resumed, the stalled worker finds its
/// lease gone and commits nothing: one report, one SR.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_worker_resumes_without_a_second_report() {
    let site = Site::new().await;
    let hosts = [site.host("a", None, 1.0), site.host("b", None, 1.0)];
    let files = chest_copies(&site.shared.join("input"), &dul::new_uid(), 5);
    let acks = pynetdicom_send(&hosts[1].daemon, "MODALITY", 1, &files);
    assert!(acks.iter().all(|x| x.status == 0), "{acks:?}");
    let holder = site.holder(&[&hosts[0], &hosts[1]]).await;
    let stalled = &hosts[holder].daemon;
    stalled.signal(libc::SIGSTOP);
    assert_eq!(
        site.count("SELECT count(*) FROM reports").await,
        0,
        "finished before it was stopped"
    );
    wait_for(
        &site.pool,
        "SELECT count(*) FROM outbox WHERE state = 'sent'",
        1,
        Duration::from_secs(120),
    )
    .await;
    let mark = stalled.log_len();
    stalled.signal(libc::SIGCONT);
    stalled.wait_log("lease lost", mark, Duration::from_secs(60));
    tokio::time::sleep(Duration::from_secs(2)).await;
    site.assert_one_report_after_two_takes(&stalled.log_text())
        .await;
}

/// Receive, analyse and send as three processes on three hosts, started one after the other:
/// the receiver stores and queues the job but never runs it; the analyser reports the study but
/// never sends; the sender delivers the SR. Only the receiver listens for DICOM.
#[tokio::test(flavor = "multi_thread")]
async fn receive_analyse_and_send_run_as_separate_processes() {
    let site = Site::new().await;
    let receiver = site.host("receiver", Some(r#"["receive"]"#), 60.0);
    let files = chest_copies(&site.shared.join("input"), &dul::new_uid(), 2);
    let acks = pynetdicom_send(&receiver.daemon, "MODALITY", 1, &files);
    assert!(acks.iter().all(|x| x.status == 0), "{acks:?}");

    // past the quiet period the study is complete, but nobody schedules or analyses it
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        site.count("SELECT count(*) FROM instances WHERE state = 'received'")
            .await,
        2
    );
    assert_eq!(site.count("SELECT count(*) FROM jobs").await, 0);

    let analyser = site.host("analyser", Some(r#"["analyse"]"#), 60.0);
    assert!(!analyser.daemon.log_text().contains("\"listening\""));
    wait_for(
        &site.pool,
        "SELECT count(*) FROM reports",
        1,
        Duration::from_secs(120),
    )
    .await;
    // the SR is queued; nobody sends it
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        site.count("SELECT count(*) FROM outbox WHERE state = 'queued' AND attempts = 0")
            .await,
        1
    );
    assert!(site.pacs.files().is_empty());

    let sender = site.host("sender", Some(r#"["send"]"#), 60.0);
    assert!(!sender.daemon.log_text().contains("\"listening\""));
    wait_for(
        &site.pool,
        "SELECT count(*) FROM outbox WHERE state = 'sent'",
        1,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(site.pacs.files().len(), 1);
    assert_eq!(
        site.count("SELECT count(*) FROM instances WHERE state = 'analysed'")
            .await,
        2
    );
    // each did its part only
    for (host, roles, done, delivered) in [
        (&receiver, "receive", false, false),
        (&analyser, "analyse", true, false),
        (&sender, "send", false, true),
    ] {
        let log = host.daemon.log_text();
        let running = log.lines().find(|l| l.contains("\"running\"")).unwrap();
        assert!(
            running.contains(&format!("\"roles\":\"{roles}\"")),
            "{running}"
        );
        assert_eq!(log.contains("\"job done\""), done, "{roles}: {log}");
        assert_eq!(log.contains("\"delivered\""), delivered, "{roles}: {log}");
    }
}

/// Start the C-STORE of `file` on a new association to `host` and send all but its last PDV; the
/// open association, the PDVs still to send, and the SOP Instance UID.
fn store_all_but_the_end(host: &Host, file: &Path) -> (std::net::TcpStream, Vec<Vec<u8>>, String) {
    use std::io::Write;
    let bytes = std::fs::read(file).unwrap();
    let sop = file.file_stem().unwrap().to_str().unwrap().to_string();
    let mut s = dul::associate(
        host.daemon.addr,
        "MODALITY",
        AE,
        &[(1, dul::CR, dul::EXPLICIT_LE)],
    )
    .unwrap();
    s.write_all(&dul::pdata(
        1,
        true,
        true,
        &dul::c_store_rq(7, dul::CR, &sop),
    ))
    .unwrap();
    let layout = cxr_worker::dicom::guard::check(&bytes, Default::default()).unwrap();
    let chunks: Vec<&[u8]> = bytes[layout.dataset_offset..].chunks(60 * 1024).collect();
    let (head, tail) = chunks.split_at(chunks.len() - 1);
    for c in head {
        s.write_all(&dul::pdata(1, false, false, c)).unwrap();
    }
    let rest = vec![dul::pdata(1, false, true, tail[0])];
    (s, rest, sop)
}

/// Wait until the shared spool holds `n` staged files; them. `host`'s log explains a failure.
fn wait_staged(spool: &Path, n: usize, host: &Host) -> Vec<PathBuf> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let staged = staged_files(spool);
        if staged.len() == n {
            return staged;
        }
        assert!(
            Instant::now() < deadline,
            "{staged:?} staged, not {n}: {}\n{}",
            text(&run("find", &[spool.to_str().unwrap()])),
            host.daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A receiver that starts never touches the files another running receiver is staging (each
/// stages in a directory of its own, locked while it runs); it sweeps only what a dead one left.
#[tokio::test(flavor = "multi_thread")]
async fn a_starting_receiver_sweeps_only_what_a_dead_one_left() {
    use std::io::Write;
    let site = Site::new().await;
    let mut a = site.host("a", Some(r#"["receive"]"#), 60.0);
    let files = chest_copies(&site.shared.join("input"), &dul::new_uid(), 2);

    // A is mid-transfer when B starts: A's staged file survives and A stores the instance
    let (mut s, rest, sop) = store_all_but_the_end(&a, &files[0]);
    let staged = wait_staged(&site.spool(), 1, &a);
    let _b = site.host("b", Some(r#"["receive"]"#), 60.0);
    assert!(staged[0].exists(), "B's start-up removed A's staged file");
    for pdu in rest {
        s.write_all(&pdu).unwrap();
    }
    let status = dul::status_of(&dul::read_one(&mut s).unwrap());
    assert_eq!(status, Some(0));
    dul::release(s);
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM instances WHERE sop_instance_uid = $1")
            .bind(&sop)
            .fetch_one(&site.pool)
            .await
            .unwrap();
    assert_eq!(stored, 1);

    // A dies mid-transfer: its staged file is left until the next receiver starts
    let (s, _, _) = store_all_but_the_end(&a, &files[1]);
    let staged = wait_staged(&site.spool(), 1, &a);
    a.daemon.kill9();
    drop(s);
    assert!(staged[0].exists());
    let c = site.host("c", Some(r#"["receive"]"#), 60.0);
    wait_staged(&site.spool(), 0, &c);
    assert_eq!(
        site.count("SELECT count(*) FROM instances").await,
        1,
        "the unfinished instance was never acknowledged nor recorded"
    );
}
