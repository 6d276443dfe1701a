//! The image outputs of a job: the anatomy Segmentation (SEG) and the Secondary Capture picture
//! (SC) of each image the job analysed, built off the async threads, archived with the durable
//! write, and recorded and queued with the report in the job's one transaction.
//!
//! They are per image: an image's SEG and SC say only what was found in that image, so a late
//! image of the study gets its own pair and the revised SR references the newest pair of every
//! image (earlier ones read back from `image_outputs`). Each kind keeps one series per study;
//! a new output takes the next instance number in it. An output that cannot be built (a
//! geometry the builder refuses) is left out with its reason in the job's summary: the findings
//! and the SR do not depend on it.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::NaiveDateTime;
use sqlx::{PgConnection, PgPool};

use super::{JobError, WorkerSettings, archive};
use crate::analyse::analyser::{Findings, LabelMap};
use crate::analyse::{masks, overlay};
use crate::config::Destination;
use crate::db::outputs::{self, NewImageOutput};
use crate::findings::ImageRef;
use crate::report::codes::ORGANS;
use crate::report::{
    BuiltObject, ImageOutputRefs, ModelInfo, Output, OutputKind, Placement, SegReference,
    SourceImage, SourceStudy, sc, seg,
};
use crate::send::outbox;

/// Series Number of the study's SEG series (the SR's is 9901).
const SEG_SERIES_NUMBER: u32 = 9902;
/// Series Number of the study's SC series.
const SC_SERIES_NUMBER: u32 = 9903;

/// What an analysed image leaves for its outputs: the image, its masks and maps and pictures.
pub(super) struct Visual {
    pub image: ImageRef,
    pub findings: Box<Findings>,
    pub probabilities: LabelMap<f32>,
}

/// One built and archived output.
struct Made {
    object: Arc<BuiltObject>,
    source_sop_instance_uid: String,
    instance_number: u32,
    archive_path: PathBuf,
}

/// The outputs made for one job: what to record and queue, the references of the fresh images
/// for the SR, and why any output was left out.
#[derive(Default)]
pub(super) struct Issued {
    made: Vec<Made>,
    pub refs: Vec<ImageOutputRefs>,
    pub problems: Vec<String>,
}

impl Issued {
    /// Archive a built output of `source` and keep it for recording, at `at`'s instance number;
    /// `at` moves on to the next number in the same series. Returns its reference.
    async fn keep(
        &mut self,
        s: &WorkerSettings,
        at: &mut Placement,
        object: BuiltObject,
        source: &str,
    ) -> Result<ImageRef, JobError> {
        let object = Arc::new(object);
        let reference = image_ref(&object);
        at.series_instance_uid = Some(object.series_instance_uid.clone());
        let archive_path = archive(s, object.clone()).await?;
        self.made.push(Made {
            object,
            source_sop_instance_uid: source.to_string(),
            instance_number: at.instance_number,
            archive_path,
        });
        at.instance_number += 1;
        Ok(reference)
    }
}

/// Where the next output of `kind` goes in the study: the existing series and the next number,
/// or a new series from 1.
async fn next_placement(
    pool: &PgPool,
    study: &str,
    kind: OutputKind,
    series_number: u32,
    at: NaiveDateTime,
) -> Result<Placement, JobError> {
    let (series, last) = match outputs::series(pool, study, kind.as_str()).await? {
        Some((uid, n)) => (Some(uid), n.max(0) as u32),
        None => (None, 0),
    };
    Ok(Placement {
        series_instance_uid: series,
        series_number,
        instance_number: last + 1,
        content_datetime: at,
        sop_instance_uid: None,
        uid_root: None,
    })
}

/// Which image outputs to make: those some destination takes (all of them when there is no
/// destination: the archive keeps them).
#[derive(Debug, Clone, Copy)]
pub(super) struct Wanted {
    seg: bool,
    sc: bool,
}

impl Wanted {
    pub(super) fn by(destinations: &[Destination]) -> Self {
        let any = |kind: &str| {
            destinations.is_empty() || destinations.iter().any(|d| d.outputs.takes(kind))
        };
        Self {
            seg: any(OutputKind::Seg.as_str()),
            sc: any(OutputKind::Sc.as_str()),
        }
    }
}

/// Build and archive the SEG and the SC (those `wanted`) of each image in `visuals`.
pub(super) async fn make(
    pool: &PgPool,
    s: &WorkerSettings,
    study: &SourceStudy,
    model: &ModelInfo,
    visuals: Vec<Visual>,
    wanted: Wanted,
    at: NaiveDateTime,
) -> Result<Issued, JobError> {
    let mut issued = Issued::default();
    if visuals.is_empty() || !(wanted.seg || wanted.sc) {
        return Ok(issued);
    }
    let uid = study.study_instance_uid.as_str();
    let mut seg_at = next_placement(pool, uid, OutputKind::Seg, SEG_SERIES_NUMBER, at).await?;
    let mut sc_at = next_placement(pool, uid, OutputKind::Sc, SC_SERIES_NUMBER, at).await?;
    for visual in visuals {
        let (study, model) = (study.clone(), model.clone());
        let (seg_place, sc_place) = (seg_at.clone(), sc_at.clone());
        let built = tokio::task::spawn_blocking(move || {
            build_pair(&study, &model, &visual, wanted, seg_place, sc_place)
        })
        .await
        .map_err(|e| JobError::Report(format!("image outputs: {e}")))?;
        let source = built.source;
        let mut refs = ImageOutputRefs {
            source_sop_instance_uid: source.clone(),
            seg: None,
            sc: None,
        };
        match built.seg {
            None => {}
            Some(Ok((object, segments))) => {
                let object = issued.keep(s, &mut seg_at, object, &source).await?;
                refs.seg = Some(SegReference { object, segments });
            }
            Some(Err(reason)) => issued
                .problems
                .push(format!("no SEG for {source}: {reason}")),
        }
        match built.sc {
            None => {}
            Some(Ok(object)) => refs.sc = Some(issued.keep(s, &mut sc_at, object, &source).await?),
            Some(Err(reason)) => issued
                .problems
                .push(format!("no SC for {source}: {reason}")),
        }
        issued.refs.push(refs);
    }
    Ok(issued)
}

/// A built SEG and its segments (channel, number).
type SegWithSegments = (BuiltObject, Vec<(String, u16)>);

/// The SEG (with its segments) and the SC of one image, or why each could not be built
/// (`None`: not wanted).
struct Pair {
    source: String,
    seg: Option<Result<SegWithSegments, String>>,
    sc: Option<Result<BuiltObject, String>>,
}

/// Blocking: resample the masks to the source geometry, render the picture, build both.
fn build_pair(
    study: &SourceStudy,
    model: &ModelInfo,
    visual: &Visual,
    wanted: Wanted,
    seg_at: Placement,
    sc_at: Placement,
) -> Pair {
    let f = &visual.findings;
    let (rows, columns) = f.source_size;
    let source = SourceImage {
        image: visual.image.clone(),
        rows,
        columns,
        pixel_spacing: f.anatomy.pixel_spacing.map(|p| (p.row_mm, p.column_mm)),
    };
    let seg = wanted.seg.then(|| {
        let channels = masks::at_source(f);
        seg::build_seg(&seg::SegRequest {
            study: study.clone(),
            source: source.clone(),
            model: model.clone(),
            channels,
            placement: seg_at,
        })
        .map(|b| {
            let segments = b
                .segments
                .iter()
                .map(|x| (x.channel.clone(), x.number))
                .collect();
            (b.object, segments)
        })
        .map_err(|e| e.to_string())
    });
    let sc = wanted.sc.then(|| {
        let picture = overlay::render(f, &visual.probabilities);
        sc::build_sc(&sc::ScRequest {
            study: study.clone(),
            source: source.clone(),
            model: model.clone(),
            columns: picture.width,
            rows: picture.height,
            rgb: picture.rgb,
            placement: sc_at,
        })
        .map_err(|e| e.to_string())
    });
    Pair {
        source: visual.image.sop_instance_uid.clone(),
        seg,
        sc,
    }
}

fn image_ref(o: &BuiltObject) -> ImageRef {
    ImageRef {
        sop_class_uid: o.sop_class_uid.clone(),
        sop_instance_uid: o.sop_instance_uid.clone(),
        series_instance_uid: o.series_instance_uid.clone(),
    }
}

/// The references the SR needs for every analysed image of the study: this job's fresh ones,
/// and the newest recorded ones of the images analysed before (`keep` lists the analysed
/// images; others are ignored).
pub(super) async fn study_refs(
    pool: &PgPool,
    study: &str,
    issued: &Issued,
    keep: &[&str],
) -> Result<Vec<ImageOutputRefs>, JobError> {
    let mut refs = issued.refs.clone();
    let fresh = |uid: &str| refs.iter().any(|r| r.source_sop_instance_uid == uid);
    let mut earlier: Vec<ImageOutputRefs> = Vec::new();
    for row in outputs::latest(pool, study).await? {
        let source = row.source_sop_instance_uid.as_str();
        if fresh(source) || !keep.contains(&source) {
            continue;
        }
        let entry = match earlier
            .iter_mut()
            .position(|r| r.source_sop_instance_uid == source)
        {
            Some(i) => &mut earlier[i],
            None => {
                earlier.push(ImageOutputRefs {
                    source_sop_instance_uid: source.to_string(),
                    seg: None,
                    sc: None,
                });
                let last = earlier.len() - 1;
                &mut earlier[last]
            }
        };
        let object = ImageRef {
            sop_class_uid: row.sop_class_uid.clone(),
            sop_instance_uid: row.sop_instance_uid.clone(),
            series_instance_uid: row.series_instance_uid.clone(),
        };
        match row.kind.as_str() {
            // segment numbers follow ORGANS, one frame each (report::seg)
            "seg" => {
                entry.seg = Some(SegReference {
                    object,
                    segments: ORGANS
                        .iter()
                        .zip(1u16..)
                        .map(|(o, n)| (o.channel.to_string(), n))
                        .collect(),
                })
            }
            "sc" => entry.sc = Some(object),
            _ => {}
        }
    }
    refs.extend(earlier);
    Ok(refs)
}

/// Record every output made and queue it for the destinations that take its kind, in the
/// job's transaction.
pub(super) async fn record(
    tx: &mut PgConnection,
    job_id: i64,
    issued: &Issued,
    destinations: &[Destination],
) -> Result<(), JobError> {
    for m in &issued.made {
        let o = &m.object;
        let path = m.archive_path.display().to_string();
        outputs::insert(
            tx,
            &NewImageOutput {
                kind: o.kind.as_str(),
                study_instance_uid: &o.study_instance_uid,
                source_sop_instance_uid: &m.source_sop_instance_uid,
                sop_instance_uid: &o.sop_instance_uid,
                series_instance_uid: &o.series_instance_uid,
                sop_class_uid: &o.sop_class_uid,
                instance_number: m.instance_number as i32,
                job_id,
                archive_path: &path,
            },
        )
        .await?;
        outbox::enqueue(tx, &**o as &dyn Output, &m.archive_path, destinations)
            .await
            .map_err(|e| JobError::Report(format!("cannot queue the {}: {e}", o.kind.as_str())))?;
    }
    Ok(())
}
