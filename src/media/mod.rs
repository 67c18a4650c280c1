//! Media: what an upload is ([`intake`]), who may see and change it ([`access`]), validation and
//! image processing ([`process`]) within a memory [`budget`], content-addressed [`storage`], and the
//! [`service`] that REST, GraphQL and the media_processing job share.

pub mod access;
pub mod budget;
pub mod intake;
pub mod process;
pub mod service;
pub mod storage;

use budget::{DecodeBudget, SingleFlight};

/// The process's shared media machinery: the decode budget and the in-flight uploads.
pub struct MediaRuntime {
    pub budget: DecodeBudget,
    /// Uploads being stored, keyed by (merchant, sha256).
    pub uploads: SingleFlight<(Option<String>, String), entity::media_file::Model>,
}

impl MediaRuntime {
    pub fn new(decode_budget_bytes: u64) -> Self {
        Self {
            budget: DecodeBudget::new(decode_budget_bytes),
            uploads: SingleFlight::default(),
        }
    }
}
