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

// ---- orders, deliveries, WhatsApp, bots (issue 11) --------------------------------------------

pub const ORDER_FIELDS: &str = "id merchantId customerPhone status reason totalAmount currency idempotencyKey items { productId name quantity unitPrice } payments { id reference amount currency }";

pub const SUBMIT_ORDER: &str = r#"mutation($input: SubmitOrderInput!) {
  submitOrder(input: $input) { id merchantId customerPhone status reason totalAmount currency idempotencyKey }
}"#;

pub const ORDER_BY_ID: &str = r#"query($id: ID!) {
  order(id: $id) { id merchantId status reason totalAmount currency payments { id reference amount currency method } }
}"#;

pub const ORDERS: &str = r#"query($m: String, $status: OrderStatus) {
  orders(merchantId: $m, status: $status, first: 100) { totalCount edges { node { id merchantId status } } }
}"#;

pub const UPDATE_ORDER_STATUS: &str = r#"mutation($id: ID!, $status: OrderStatus!) {
  updateOrderStatus(id: $id, status: $status) { id status }
}"#;

pub const RECORD_PAYMENT: &str = r#"mutation($order: ID!, $amount: Int!, $currency: String!, $ref: String!, $method: String) {
  recordPayment(orderId: $order, amount: $amount, currency: $currency, reference: $ref, method: $method) { id orderId amount currency reference method }
}"#;

pub const CREATE_DELIVERY: &str = r#"mutation($order: ID!, $pickup: LocationInput!, $dropoff: LocationInput!) {
  createDeliveryTask(orderId: $order, pickup: $pickup, dropoff: $dropoff) { id orderId status driver pickup { address } dropoff { address latitude } }
}"#;

pub const ASSIGN_DRIVER: &str = r#"mutation($id: ID!, $driver: String!) {
  assignDriver(id: $id, driver: $driver) { id status driver }
}"#;

pub const UPDATE_DELIVERY_STATUS: &str = r#"mutation($id: ID!, $status: DeliveryStatus!) {
  updateDeliveryStatus(id: $id, status: $status) { id status startedAt completedAt }
}"#;

pub const DELIVERY_TASKS: &str = r#"query($m: String, $status: DeliveryStatus) {
  deliveryTasks(merchantId: $m, status: $status, first: 100) { totalCount edges { node { id status orderId } } }
}"#;

pub const REPORT_BOT_STATUS: &str = r#"mutation($m: String!, $connected: Boolean!, $reason: String) {
  reportBotStatus(merchantId: $m, connected: $connected, reason: $reason) { merchantId connected reason lastSeenAt }
}"#;

pub const BOT_STATUS: &str = r#"query($m: String) {
  botStatus(merchantId: $m) { merchantId connected reason lastSeenAt changedAt }
}"#;

pub const UPDATE_PRODUCT: &str = r#"mutation($m: String!, $p: String!, $changes: JSON!) {
  updateProduct(merchantId: $m, productId: $p, changes: $changes) { id type payload }
}"#;

pub const RECENT_EVENTS: &str = r#"query($m: ID, $types: [EventType!]) {
  recentEvents(merchantId: $m, types: $types, first: 100) { edges { node { id type payload } } }
}"#;

pub const SEND_MESSAGE: &str = r#"mutation($input: SendMessageInput!) {
  sendMessage(input: $input) { id merchantId to status messageType templateId payload idempotencyKey }
}"#;

pub const MESSAGE_BY_ID: &str = r#"query($id: ID!) {
  message(id: $id) { id status statusHistory providerMessageId transport attempts error errorCode payload }
}"#;

pub const MESSAGES: &str = r#"query($m: String, $d: MessageDirection) {
  messages(merchantId: $m, direction: $d, first: 100) { totalCount edges { node { id direction to status messageType payload } } }
}"#;

pub const OUTBOX: &str = r#"query($m: String) {
  outbox(merchantId: $m, first: 100) { totalCount edges { node { id to status transport payload } } }
}"#;

pub const SET_WHATSAPP_CREDENTIALS: &str = r#"mutation($m: String, $pn: String!, $token: String!) {
  setWhatsAppCredentials(merchantId: $m, phoneNumberId: $pn, accessToken: $token) { merchantId phoneNumberId }
}"#;
