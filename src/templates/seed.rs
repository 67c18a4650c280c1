//! The default templates a fresh database starts with.

use sea_orm::{DatabaseConnection, EntityTrait, PaginatorTrait};
use serde_json::json;

use super::service::{self, NewTemplate};
use crate::{auth::RequestContext, error::Result};

fn defaults() -> Vec<NewTemplate> {
    let raw = json!([
        {
            "name": "welcome",
            "type": "text",
            "body": "Hi {{ customer_name }}! Welcome to {{ store_name }}. Reply MENU to see our catalog."
        },
        {
            "name": "order_confirmation",
            "type": "buttons",
            "header": "Order {{ order_id }}",
            "body": "Thanks {{ customer_name }}! Your order {{ order_id }} comes to {{ total }}. Shall we confirm it?",
            "footer": "Reply within 24 hours",
            "buttons": [
                { "id": "confirm_order", "title": "Confirm" },
                { "id": "change_order", "title": "Change order" },
                { "id": "cancel_order", "title": "Cancel" }
            ]
        },
        {
            "name": "catalog",
            "type": "list",
            "header": "{{ store_name }}",
            "body": "Browse our catalog and pick a category.",
            "footer": "Prices include VAT",
            "buttonText": "View catalog",
            "sections": [
                { "title": "Popular", "rows": [
                    { "id": "best_sellers", "title": "Best sellers", "description": "What everyone is buying" },
                    { "id": "new_arrivals", "title": "New arrivals" }
                ]},
                { "title": "Help", "rows": [
                    { "id": "track_order", "title": "Track my order" },
                    { "id": "talk_to_us", "title": "Talk to a person" }
                ]}
            ]
        },
        {
            "name": "product_photo",
            "type": "media",
            "body": "{{ product_name }}: {{ price }}",
            "media": { "type": "image", "link": "{{ image_url }}" }
        }
    ]);
    serde_json::from_value(raw).expect("default templates are valid JSON")
}

/// Inserts the defaults into an empty message_templates table (audited as the system).
pub async fn seed_defaults(db: &DatabaseConnection) -> Result<usize> {
    if entity::message_template::Entity::find().count(db).await? > 0 {
        return Ok(0);
    }
    let ctx = RequestContext::system();
    let mut n = 0;
    for t in defaults() {
        service::create(db, &ctx, t).await?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    #[test]
    fn defaults_pass_validation() {
        for t in super::defaults() {
            assert!(
                super::super::engine::validate(&t.content).is_empty(),
                "{}",
                t.name
            );
        }
    }
}
