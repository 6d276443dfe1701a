//! The PDU reader and association negotiation: a PDU as it arrives (its header checked against
//! the cap of its type, its body decoded by dicom-ul's codec, or by ours for P-DATA-TF), and an A-ASSOCIATE-RQ answered.
#![no_main]

use cxr_worker::dicom::ae::AeTitle;
use cxr_worker::receive::ScpSettings;
use cxr_worker::receive::association::negotiate;
use cxr_worker::dicom::pdu::decode_checked;
use dicom_ul::pdu::Pdu;
use libfuzzer_sys::fuzz_target;
use std::time::Duration;

fuzz_target!(|data: &[u8]| {
    let Ok(pdu) = decode_checked(data, 16_384) else {
        return;
    };
    if let Pdu::AssociationRQ(rq) = pdu {
        let Ok(ae_title) = AeTitle::parse("CXR_WORKER") else {
            return;
        };
        let settings = ScpSettings {
            ae_title,
            allowed: Vec::new(),
            max_associations: 4,
            max_associations_per_host: 4,
            max_pending_associations: 8,
            max_pending_per_host: 4,
            association_request_timeout: Duration::from_secs(1),
            max_pdu_length: 16_384,
            read_timeout: Duration::from_secs(1),
            write_timeout: Duration::from_secs(1),
            max_dataset_bytes: 1 << 20,
            accepted_sop_classes: vec!["1.2.840.10008.5.1.4.1.1.1".into()],
            tls: None,
            certificate_names: Vec::new(),
        };
        let _ = negotiate(&rq, &settings, std::net::Ipv4Addr::LOCALHOST.into(), None);
    }
});
