//! One handler per queue. A queue gets workers in a process only when it has a handler here;
//! jobs enqueued for the others wait, durably, until a process that has one picks them up.

pub mod media_processing;
pub mod message_sending;
pub mod order_processing;
pub mod webhook_delivery;

use crate::{
    AppState,
    queue::{
        QueueName,
        worker::{FnHandler, Handlers},
    },
};

/// The handlers this build provides.
pub fn handlers(state: &AppState) -> Handlers {
    let media = state.clone();
    let hooks = state.clone();
    let messages = state.clone();
    let orders = state.clone();
    Handlers::new()
        .register(
            QueueName::MediaProcessing,
            FnHandler(move |job| {
                let state = media.clone();
                async move { media_processing::handle(&state, &job).await }
            }),
        )
        .register(
            QueueName::WebhookDelivery,
            FnHandler(move |job| {
                let state = hooks.clone();
                async move { webhook_delivery::handle(&state, &job).await }
            }),
        )
        .register(
            QueueName::MessageSending,
            FnHandler(move |job| {
                let state = messages.clone();
                async move { message_sending::handle(&state, &job).await }
            }),
        )
        .register(
            QueueName::OrderProcessing,
            FnHandler(move |job| {
                let state = orders.clone();
                async move { order_processing::handle(&state, &job).await }
            }),
        )
}
