//! Media: validation and image processing ([`process`]), content-addressed [`storage`], and the
//! Actor-scoped [`service`] that REST, GraphQL and the media_processing job share.

pub mod process;
pub mod service;
pub mod storage;
