//! The audit trail of admin commands: `findings` reads (Query) and `resend` (Export), recorded
//! when `[audit]` is enabled; the daemon's audit sender delivers them.

/// Record an admin's `findings` read in the audit trail (Query), when `[audit]` is enabled.
pub async fn audit_findings(
    pool: &sqlx::PgPool,
    cfg: &crate::config::Config,
    filter: &super::findings::Filter,
) {
    use crate::audit::{AuditEvent, Auditor, DatabaseQuery, LocalUser};
    let Some(auditor) = Auditor::new(pool.clone(), &cfg.audit, cfg.dicom.ae_title.as_str()) else {
        return;
    };
    let query = DatabaseQuery {
        name: "findings".into(),
        text: format!("{filter:?}"),
    };
    auditor
        .record(&AuditEvent::findings_queried(
            LocalUser::current(),
            auditor.application(None),
            query,
        ))
        .await;
}

/// Record an admin's `resend` of a study's SR to each destination (Export), when `[audit]` is
/// enabled.
pub async fn audit_resend(pool: &sqlx::PgPool, cfg: &crate::config::Config, study: &str) {
    use crate::audit::{self, AuditEvent, Auditor, LocalUser, NetworkAccessPoint, RemoteNode};
    let Some(auditor) = Auditor::new(pool.clone(), &cfg.audit, cfg.dicom.ae_title.as_str()) else {
        return;
    };
    let (patient_id, patient_name, accession) =
        match crate::db::audit::study_patient(pool, study).await {
            Ok(Some(p)) => p,
            Ok(None) => (None, None, None),
            Err(e) => {
                tracing::warn!(error = %e, "audit: cannot read the study");
                return;
            }
        };
    let transferred = crate::db::audit::TransferredStudy {
        study_instance_uid: study.to_string(),
        patient_id,
        patient_name,
        accession_number: accession,
        sop_classes: vec![(crate::report::sr::SR_SOP_CLASS_UID.to_string(), 1)],
    };
    let (patient, study) = audit::patient_and_study(&transferred);
    for d in &cfg.destinations {
        let destination = RemoteNode {
            ae_title: Some(d.ae_title.as_str().to_string()),
            access_point: d.host.parse().map_or_else(
                |_| NetworkAccessPoint::Name(d.host.clone()),
                NetworkAccessPoint::Ip,
            ),
        };
        auditor
            .record(&AuditEvent::sr_resent(
                LocalUser::current(),
                auditor.application(Some(d.calling_ae_title.as_str())),
                destination,
                patient.clone(),
                study.clone(),
            ))
            .await;
    }
}
