//! The GraphQL documents the tests send, in one place. Each selects what the assertions read.

pub const CREATE_TEMPLATE: &str = r#"mutation($input: CreateTemplateInput!) {
  createTemplate(input: $input) { id name status merchantId createdBy body version }
}"#;

/// Sets the body to `$body`.
pub const UPDATE_TEMPLATE_BODY: &str = r#"mutation($id: ID!, $body: String!) {
  updateTemplate(id: $id, input: { body: $body }) { id body version }
}"#;

pub const SET_TEMPLATE_STATUS: &str = r#"mutation($id: ID!, $status: TemplateStatus!) {
  setTemplateStatus(id: $id, status: $status) { id status }
}"#;

pub const DELETE_TEMPLATE: &str = r#"mutation($id: ID!) { deleteTemplate(id: $id) { id } }"#;

pub const TEMPLATE_BY_ID: &str =
    r#"query($id: ID!) { template(id: $id) { id name status merchantId body version } }"#;

pub const TEMPLATE_BY_NAME: &str =
    r#"query($name: String!) { template(name: $name) { id name status merchantId body version } }"#;

pub const TEMPLATE_NAMES: &str =
    r#"{ templates(first: 100) { totalCount edges { node { name status merchantId } } } }"#;

pub const TEMPLATE_COUNT: &str = "{ templates { totalCount } }";

pub const TEMPLATE_VERSIONS: &str =
    r#"query($id: ID!) { templateVersions(templateId: $id) { id version content } }"#;

pub const UPLOAD_MEDIA_BASE64: &str = r#"mutation($i: UploadMediaBase64Input!) {
  uploadMediaBase64(input: $i) { id merchantId url thumbnailUrl mimeType width height }
}"#;

pub const MEDIA_BY_ID: &str = r#"query($id: ID!) { media(id: $id) { id merchantId url } }"#;

pub const MEDIA_LIST: &str = r#"query($merchantId: String) {
  mediaList(merchantId: $merchantId, first: 100) { totalCount nodes { id merchantId } }
}"#;

pub const DELETE_MEDIA: &str = r#"mutation($id: ID!) { deleteMedia(id: $id) }"#;

pub const ATTACH_MEDIA: &str = r#"mutation($product: String!, $media: ID!) {
  attachMediaToProduct(productId: $product, mediaId: $media) { id mediaId merchantId position }
}"#;

pub const DETACH_MEDIA: &str = r#"mutation($product: String!, $media: ID!) {
  detachMediaFromProduct(productId: $product, mediaId: $media)
}"#;

pub const REORDER_MEDIA: &str = r#"mutation($product: String!, $ids: [ID!]!) {
  reorderProductMedia(productId: $product, mediaIds: $ids) { mediaId position }
}"#;

pub const PRODUCT_MEDIA: &str = r#"query($product: String!, $merchantId: String) { productMedia(productId: $product, merchantId: $merchantId) { mediaId position } }"#;

pub const AUDIT_COUNT: &str = "{ auditLogs { totalCount } }";
