//! Receive → analyse → report → send, end to end: the real daemon with the tiny conforming
//! models, DCMTK storescp as the PACS that receives the SRs, validators on every SR.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod gate;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use gate::{dicom_field, image_outputs, sop_class, validate, validate_image};

/// The daemon sending its SRs to `pacs`.
fn start(db: &TestDb, pacs: &StoreScp) -> Daemon {
    let dir = tempfile::tempdir().unwrap().keep();
    let sections = analysis_sections(pacs.port);
    let config = write_config_with(&dir, &db.url, "", &sections);
    Daemon::start_with(dir, config)
}

/// The daemon sending to `pacs` with the default outputs (SR, SEG and SC).
fn start_all(db: &TestDb, pacs: &StoreScp) -> Daemon {
    let dir = tempfile::tempdir().unwrap().keep();
    let sections = analysis_sections_with(pacs.port, "");
    let config = write_config_with(&dir, &db.url, "", &sections);
    Daemon::start_with(dir, config)
}

const SR_CLASS: &str = "1.2.840.10008.5.1.4.1.1.88.34";
const SEG_CLASS: &str = "1.2.840.10008.5.1.4.1.1.66.4";
const SC_CLASS: &str = "1.2.840.10008.5.1.4.1.1.7";

/// What the PACS holds: every SR through the SR gate, every image output through dciodvfy and
/// read by highdicom.
fn received(pacs: &StoreScp) -> (Vec<(PathBuf, serde_json::Value)>, Vec<serde_json::Value>) {
    let (srs, images): (Vec<PathBuf>, Vec<PathBuf>) = pacs
        .files()
        .into_iter()
        .partition(|p| sop_class(p) == SR_CLASS);
    images.iter().for_each(|p| validate_image(p));
    let srs = srs
        .into_iter()
        .map(|p| {
            let v = validate(&p);
            (p, v)
        })
        .collect();
    (srs, image_outputs(&images, None))
}

/// The image outputs of one source image, of one SOP class.
fn outputs_of<'a>(
    images: &'a [serde_json::Value],
    source: &str,
    class: &str,
) -> Vec<&'a serde_json::Value> {
    images
        .iter()
        .filter(|v| v["sop_class_uid"] == class && v["sources"] == serde_json::json!([source]))
        .collect()
}

fn sr_for_study<'a>(
    srs: &'a [(PathBuf, serde_json::Value)],
    study: &str,
) -> Vec<&'a (PathBuf, serde_json::Value)> {
    srs.iter()
        .filter(|(_, v)| v["study_instance_uid"] == study)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn chest_study_is_analysed_reported_sent_and_revised() {
    let db = TestDb::create().await;
    let pacs = StoreScp::start();
    let d = start_all(&db, &pacs);
    let pool = db.pool().await;
    let chest = fixture("RG1_UNCR.dcm"); // chest CR PA
    let dx = fixture("966_fixed.dcm"); // chest DX PA, another study
    let hip = fixture("RG2_RLE.dcm"); // not chest: its study gets a not-analysed report
    let acks = pynetdicom_send(&d, "MODALITY", 1, &[chest.clone(), dx.clone(), hip.clone()]);
    assert!(acks.iter().all(|a| a.status == 0), "{acks:?}");

    // three SRs, and a SEG and an SC for each of the two analysed images
    wait_for(
        &pool,
        "SELECT count(*) FROM outbox WHERE state = 'sent'",
        7,
        Duration::from_secs(120),
    )
    .await;

    // findings: 14 labels per analysed image, a call at the threshold, anatomy measured
    let analysed: Vec<(String, String, Option<bool>, Option<f64>)> = sqlx::query_as(
        "SELECT i.sop_instance_uid, i.state, a.trained, a.cardiothoracic_ratio
         FROM instances i LEFT JOIN analyses a USING (sop_instance_uid) ORDER BY i.received_at",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(analysed[0].1, "analysed");
    assert_eq!(analysed[1].1, "analysed");
    assert_eq!(analysed[0].2, Some(false), "tiny models are untrained");
    assert_eq!(analysed[2].1, "skipped");
    let reason: String =
        sqlx::query_scalar("SELECT state_reason FROM instances WHERE state = 'skipped'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(
        reason.to_lowercase().contains("chest") || reason.to_lowercase().contains("body"),
        "{reason}"
    );
    let per_label: Vec<(String, i64, bool)> = sqlx::query_as(
        "SELECT label, count(*), bool_and(present = (probability >= threshold)) FROM findings GROUP BY label",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(per_label.len(), 14);
    assert!(
        per_label
            .iter()
            .all(|(_, n, consistent)| *n == 2 && *consistent),
        "{per_label:?}"
    );
    let latest: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT report_kind, accession_number FROM latest_results ORDER BY report_kind",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        latest.iter().filter(|r| r.0 == "findings").count(),
        2,
        "{latest:?}"
    );
    assert_eq!(
        latest.iter().filter(|r| r.0 == "not_analysed").count(),
        1,
        "{latest:?}"
    );

    // every SR that reached the PACS passes the validators and says what the database says
    let (srs, images) = received(&pacs);
    assert_eq!(srs.len(), 3);
    assert_eq!(images.len(), 4, "{images:#?}");
    let chest_study = dicom_field(&chest, "0020,000d");
    let chest_sop = dicom_field(&chest, "0008,0018");
    let mine = sr_for_study(&srs, &chest_study);
    assert_eq!(mine.len(), 1);
    let sr = &mine[0].1;
    assert_eq!(sr["sop_class_uid"], "1.2.840.10008.5.1.4.1.1.88.34");
    assert_eq!(sr["evidence"], serde_json::json!([chest_sop]));
    let rows: Vec<(String, f32, bool)> = sqlx::query_as(
        "SELECT label, probability, present FROM findings WHERE sop_instance_uid = $1 ORDER BY label_index",
    )
    .bind(&chest_sop)
    .fetch_all(&pool)
    .await
    .unwrap();
    let found = sr["findings"].as_array().unwrap();
    assert_eq!(found.len(), 14);
    for (label, p, present) in &rows {
        let coding = cxr_worker::report::codes::coding_for_label(label).unwrap();
        let f = found
            .iter()
            .find(|f| f["code"] == coding.finding.value && f["scheme"] == coding.finding.scheme)
            .unwrap_or_else(|| panic!("{label} not in the SR"));
        assert!(
            (f["probability"].as_f64().unwrap() - *p as f64).abs() < 1e-5,
            "{label}"
        );
        assert_eq!(f["present"].as_bool().unwrap(), *present, "{label}");
        assert_eq!(f["image"], chest_sop.as_str());
    }
    assert!(
        sr["texts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t.as_str().unwrap().contains("UNTRAINED"))
    );
    // the chest image's SEG (three organs, at the source geometry) and SC (an RGB picture with
    // burned-in annotation, colour on it), in the same study, referenced by the SR
    let seg = outputs_of(&images, &chest_sop, SEG_CLASS);
    let sc = outputs_of(&images, &chest_sop, SC_CLASS);
    assert_eq!((seg.len(), sc.len()), (1, 1), "{images:#?}");
    let (seg, sc) = (seg[0], sc[0]);
    for o in [seg, sc] {
        assert_eq!(o["study_instance_uid"], chest_study.as_str());
        assert_eq!(o["instance_number"], 1);
    }
    let labels: Vec<&str> = seg["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["Right lung", "Left lung", "Heart"]);
    assert_eq!(seg["frames"], 3);
    assert_eq!(sc["photometric"], "RGB");
    assert_eq!(sc["burned_in"], "YES");
    assert!(
        sc["rows"]
            .as_u64()
            .unwrap()
            .max(sc["columns"].as_u64().unwrap())
            >= 1024
    );
    assert!(sc["colour_pixels"].as_u64().unwrap() > 1000, "{sc}");
    let mut made = vec![
        seg["sop_instance_uid"].as_str().unwrap(),
        sc["sop_instance_uid"].as_str().unwrap(),
    ];
    made.sort();
    assert_eq!(sr["other_evidence"], serde_json::json!(made));
    let regions = sr["regions"].as_array().unwrap();
    assert_eq!(regions.len(), 3, "{sr}");
    assert!(
        regions
            .iter()
            .all(|r| r["seg"] == seg["sop_instance_uid"] && r["source"] == chest_sop.as_str()),
        "{regions:?}"
    );
    assert_eq!(
        seg["device_uid"], sr["device_uid"],
        "one Device UID for SR and SEG"
    );
    // its masks are the pipeline's, pixel for pixel at the source geometry: the same models
    // run by `cxr-worker infer --masks` on the same file write the masks the SEG must hold
    let masks = tempfile::tempdir().unwrap().keep();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cxr-worker"))
        .args(["infer", "--json", "--config"])
        .arg(&d.config)
        .arg("--masks")
        .arg(&masks)
        .arg(&chest)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let seg_path = PathBuf::from(seg["path"].as_str().unwrap());
    let read = image_outputs(&[seg_path], Some(&masks));
    assert_eq!(read[0]["masks_equal"], true, "{}", read[0]);

    let hip_study = dicom_field(&hip, "0020,000d");
    let hip_sr = &sr_for_study(&srs, &hip_study)[0].1;
    assert!(
        hip_sr["texts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t.as_str().unwrap().starts_with("not analysed")),
        "{hip_sr}"
    );

    // a late image of the chest study: a revised SR that names its predecessor
    let first_sr = sr["predecessor"].clone();
    assert_eq!(first_sr, serde_json::json!([]));
    let first_uid: String =
        sqlx::query_scalar("SELECT sr_sop_instance_uid FROM reports WHERE study_instance_uid = $1")
            .bind(&chest_study)
            .fetch_one(&pool)
            .await
            .unwrap();
    let late = fixture("RG1_J2KR.dcm"); // same study, another instance
    assert_eq!(dicom_field(&late, "0020,000d"), chest_study);
    let acks = pynetdicom_send(&d, "MODALITY", 1, std::slice::from_ref(&late));
    assert_eq!(acks[0].status, 0);
    // the revised SR, and the late image's SEG and SC
    wait_for(
        &pool,
        "SELECT count(*) FROM outbox WHERE state = 'sent'",
        10,
        Duration::from_secs(120),
    )
    .await;
    let (srs, images) = received(&pacs);
    let revised: Vec<_> = sr_for_study(&srs, &chest_study)
        .into_iter()
        .filter(|(_, v)| v["instance_number"] == 2)
        .collect();
    assert_eq!(revised.len(), 1);
    let revised = &revised[0].1;
    assert_eq!(revised["predecessor"], serde_json::json!([first_uid]));
    assert_eq!(revised["evidence"].as_array().unwrap().len(), 2);
    // every output revised consistently: the late image's SEG and SC continue the study's SEG
    // and SC series, and the revised SR references the SEG and SC of both images
    let late_sop = dicom_field(&late, "0008,0018");
    let late_seg = outputs_of(&images, &late_sop, SEG_CLASS);
    let late_sc = outputs_of(&images, &late_sop, SC_CLASS);
    assert_eq!((late_seg.len(), late_sc.len()), (1, 1), "{images:#?}");
    for (new, first) in [(late_seg[0], seg), (late_sc[0], sc)] {
        assert_eq!(new["series_instance_uid"], first["series_instance_uid"]);
        assert_eq!(new["instance_number"], 2);
    }
    let mut want: Vec<String> = [seg, sc, late_seg[0], late_sc[0]]
        .iter()
        .map(|o| o["sop_instance_uid"].as_str().unwrap().to_string())
        .collect();
    want.sort();
    assert_eq!(revised["other_evidence"], serde_json::json!(want));
    assert_eq!(revised["regions"].as_array().unwrap().len(), 6, "{revised}");

    // no patient names or IDs in the logs
    let log = d.log_text();
    for f in [&chest, &dx, &hip, &late] {
        for tag in ["0010,0010", "0010,0020"] {
            let v = dicom_field(f, tag);
            if v.len() > 2 {
                assert!(!log.contains(&v), "{tag} of {} in the log", f.display());
            }
        }
    }
}

/// Each destination gets the outputs it chose: one with `outputs = ["sr"]` and `not_analysed =
/// false` gets the findings SR only; one with the defaults gets the SRs (the "not analysed" one
/// too), the SEG and the SC.
#[tokio::test(flavor = "multi_thread")]
async fn each_destination_gets_the_outputs_it_chose() {
    let db = TestDb::create().await;
    let (full, sr_only) = (StoreScp::start(), StoreScp::start());
    let dir = tempfile::tempdir().unwrap().keep();
    let sections = format!(
        "{}\n[[destinations]]\nname = \"sr-only\"\nae_title = \"PACS\"\nhost = \"127.0.0.1\"\n\
         port = {}\noutputs = [\"sr\"]\nnot_analysed = false\n",
        analysis_sections_with(full.port, ""),
        sr_only.port
    );
    let config = write_config_with(&dir, &db.url, "", &sections);
    let d = Daemon::start_with(dir, config);
    let pool = db.pool().await;
    let chest = fixture("RG1_UNCR.dcm");
    let hip = fixture("RG2_RLE.dcm"); // not chest: a "not analysed" SR
    let acks = pynetdicom_send(&d, "MODALITY", 1, &[chest.clone(), hip]);
    assert!(acks.iter().all(|a| a.status == 0), "{acks:?}");
    // outbox rows are written with their report, in one transaction: once both reports exist
    // every row is there
    wait_for(
        &pool,
        "SELECT count(*) FROM reports",
        2,
        Duration::from_secs(120),
    )
    .await;
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT destination_name, kind FROM outbox ORDER BY destination_name, kind")
            .fetch_all(&pool)
            .await
            .unwrap();
    let of = |name: &str| {
        rows.iter()
            .filter(|r| r.0 == name)
            .map(|r| r.1.as_str())
            .collect::<Vec<_>>()
    };
    assert_eq!(of("PACS"), ["sc", "seg", "sr", "sr"], "{rows:?}");
    assert_eq!(of("sr-only"), ["sr"], "{rows:?}");
    wait_for(
        &pool,
        "SELECT count(*) FROM outbox WHERE state = 'sent'",
        5,
        Duration::from_secs(120),
    )
    .await;
    let files = sr_only.files();
    assert_eq!(files.len(), 1);
    assert_eq!(sop_class(&files[0]), SR_CLASS);
    let sr = validate(&files[0]);
    assert_eq!(
        sr["study_instance_uid"],
        dicom_field(&chest, "0020,000d").as_str()
    );
    assert_eq!(full.files().len(), 4);
}

/// UIDs are referenced exactly as received: a study whose UIDs have leading-zero components
/// (not conformant, but sent by real devices) is stored, analysed and reported, and its SR names
/// the study and image with the very same UIDs (before issue 9 the SR step refused them on every
/// retry).
#[tokio::test(flavor = "multi_thread")]
async fn a_study_with_leading_zero_uids_gets_its_sr() {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags;
    let db = TestDb::create().await;
    let pacs = StoreScp::start();
    let d = start(&db, &pacs);
    let pool = db.pool().await;
    let (study, series, sop) = ("1.02.3.004", "1.02.3.004.05", "1.02.3.004.05.06");
    let mut obj = dicom_object::open_file(fixture("RG1_UNCR.dcm")).unwrap();
    for (tag, uid) in [
        (tags::STUDY_INSTANCE_UID, study),
        (tags::SERIES_INSTANCE_UID, series),
        (tags::SOP_INSTANCE_UID, sop),
    ] {
        obj.put(DataElement::new(tag, VR::UI, PrimitiveValue::from(uid)));
    }
    obj.meta_mut().media_storage_sop_instance_uid = sop.to_string();
    let file = tempfile::tempdir().unwrap().keep().join("leading-zero.dcm");
    obj.write_to_file(&file).unwrap();
    let acks = pynetdicom_send(&d, "MODALITY", 1, &[file]);
    assert_eq!(acks[0].status, 0, "{acks:?}");
    wait_for(
        &pool,
        "SELECT count(*) FROM outbox WHERE state = 'sent'",
        1,
        Duration::from_secs(120),
    )
    .await;
    let kind: String = sqlx::query_scalar("SELECT kind FROM reports WHERE study_instance_uid = $1")
        .bind(study)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(kind, "findings");
    let sr = pacs.files().pop().unwrap();
    let obj = dicom_object::open_file(&sr).unwrap();
    let text = |tag| {
        obj.element(tag)
            .unwrap()
            .to_str()
            .unwrap()
            .trim_end_matches('\0')
            .to_string()
    };
    assert_eq!(text(tags::STUDY_INSTANCE_UID), study);
    let dump = String::from_utf8_lossy(&std::fs::read(&sr).unwrap()).to_string();
    assert!(
        dump.contains(sop),
        "the SR references the image as received"
    );
}

/// Chest films stored as Secondary Capture (digitised films, datasets such as SIIM's): refused at
/// negotiation by default, analysed and reported once `accepted_sop_classes` lists SC.
#[tokio::test(flavor = "multi_thread")]
async fn a_secondary_capture_chest_film_is_analysed_when_sc_is_configured() {
    let siim = fixture("siim_1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm");
    let pacs = StoreScp::start();

    // the default: CR and DX only
    let db = TestDb::create().await;
    let d = start(&db, &pacs);
    let acks = pynetdicom_send(&d, "MODALITY", 1, std::slice::from_ref(&siim));
    assert_eq!(acks[0].status, -1, "SC refused by default: {acks:?}");
    drop(d);

    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap().keep();
    let sc = r#"accepted_sop_classes = ["1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1.1", "1.2.840.10008.5.1.4.1.1.7"]"#;
    let config = write_config_with(&dir, &db.url, sc, &analysis_sections(pacs.port));
    let d = Daemon::start_with(dir, config);
    let acks = pynetdicom_send(&d, "MODALITY", 1, std::slice::from_ref(&siim));
    assert_eq!(acks[0].status, 0, "{acks:?}");
    let pool = db.pool().await;
    wait_for(
        &pool,
        "SELECT count(*) FROM outbox WHERE state = 'sent'",
        1,
        Duration::from_secs(120),
    )
    .await;
    let (state, trained): (String, Option<bool>) = sqlx::query_as(
        "SELECT i.state, a.trained FROM instances i LEFT JOIN analyses a USING (sop_instance_uid)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(state, "analysed", "{}", d.log_text());
    assert_eq!(trained, Some(false));
    // its SR passes the validators and names the SC image as its source
    let srs = pacs.files();
    assert_eq!(srs.len(), 1);
    let v = validate(&srs[0]);
    assert_eq!(
        v["study_instance_uid"].as_str(),
        Some(dicom_field(&siim, "0020,000d").as_str()),
        "{v}"
    );
}
