//! What the receiver accepts at association negotiation: the storage SOP classes and the transfer
//! syntaxes the decoder can decode. One list each, shared by the SCP, the config validation, the
//! conformance statement and the tests.

use dicom_dictionary_std::uids;

/// A storage SOP class this worker can receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageClass {
    pub uid: &'static str,
    pub name: &'static str,
    /// Accepted unless `[dicom] accepted_sop_classes` says otherwise. Secondary Capture is not:
    /// most SC objects are screen captures or scanned documents, not radiographs; a site turns it
    /// on for digitised films and datasets stored as SC.
    pub by_default: bool,
}

/// The storage SOP classes accepted by default: the chest radiograph image classes.
pub const STORAGE: &[StorageClass] = &[
    StorageClass {
        uid: uids::COMPUTED_RADIOGRAPHY_IMAGE_STORAGE,
        name: "Computed Radiography Image Storage",
        by_default: true,
    },
    StorageClass {
        uid: uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION,
        name: "Digital X-Ray Image Storage - For Presentation",
        by_default: true,
    },
    StorageClass {
        uid: uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PROCESSING,
        name: "Digital X-Ray Image Storage - For Processing",
        by_default: true,
    },
    StorageClass {
        uid: uids::SECONDARY_CAPTURE_IMAGE_STORAGE,
        name: "Secondary Capture Image Storage",
        by_default: false,
    },
];

/// Look up a supported storage SOP class by UID.
pub fn storage_class(uid: &str) -> Option<&'static StorageClass> {
    STORAGE.iter().find(|c| c.uid == uid)
}

/// A transfer syntax accepted for C-STORE: one the pixel decoder can decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferSyntax {
    pub uid: &'static str,
    pub name: &'static str,
}

/// Transfer syntaxes accepted at negotiation, each decodable by `pipeline::decode`.
/// JPEG Extended 12-bit (1.2.840.10008.1.2.4.51) is not here: the native decoder cannot decode
/// 12-bit JPEG, so a sender proposing it falls back to another syntax.
pub const TRANSFER_SYNTAXES: &[TransferSyntax] = &[
    TransferSyntax {
        uid: uids::EXPLICIT_VR_LITTLE_ENDIAN,
        name: "Explicit VR Little Endian",
    },
    TransferSyntax {
        uid: uids::IMPLICIT_VR_LITTLE_ENDIAN,
        name: "Implicit VR Little Endian",
    },
    TransferSyntax {
        uid: uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
        name: "Deflated Explicit VR Little Endian",
    },
    TransferSyntax {
        // Retired in the standard (the dictionary marks it deprecated) but still sent by old modalities.
        uid: "1.2.840.10008.1.2.2",
        name: "Explicit VR Big Endian (retired)",
    },
    TransferSyntax {
        uid: uids::JPEG_BASELINE8_BIT,
        name: "JPEG Baseline (Process 1)",
    },
    TransferSyntax {
        uid: uids::JPEG_LOSSLESS,
        name: "JPEG Lossless, Non-Hierarchical (Process 14)",
    },
    TransferSyntax {
        uid: uids::JPEG_LOSSLESS_SV1,
        name: "JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14, SV1)",
    },
    TransferSyntax {
        uid: uids::JPEGLS_LOSSLESS,
        name: "JPEG-LS Lossless",
    },
    TransferSyntax {
        uid: uids::JPEGLS_NEAR_LOSSLESS,
        name: "JPEG-LS Lossy (Near-Lossless)",
    },
    TransferSyntax {
        uid: uids::JPEG2000_LOSSLESS,
        name: "JPEG 2000 Image Compression (Lossless Only)",
    },
    TransferSyntax {
        uid: uids::JPEG2000,
        name: "JPEG 2000 Image Compression",
    },
    TransferSyntax {
        uid: uids::RLE_LOSSLESS,
        name: "RLE Lossless",
    },
];

/// Whether `uid` is an accepted transfer syntax.
pub fn is_accepted_transfer_syntax(uid: &str) -> bool {
    TRANSFER_SYNTAXES.iter().any(|t| t.uid == uid)
}
