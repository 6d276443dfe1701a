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
    use crate::audit::{self, AuditEvent, Auditor, LocalUser};
    let Some(auditor) = Auditor::new(pool.clone(), &cfg.audit, cfg.dicom.ae_title.as_str()) else {
        return;
    };
    let sr = crate::report::sr::SR_SOP_CLASS_UID;
    let Some((patient, study)) = audit::one_object_of_study(pool, study, sr).await else {
        return;
    };
    for d in &cfg.destinations {
        let destination = audit::node_at(d.ae_title.as_str(), &d.host);
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
