use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $value:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, async_graphql::Enum)]
        #[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
        #[serde(rename_all = "lowercase")]
        pub enum $name {
            $(
                #[sea_orm(string_value = $value)]
                $variant,
            )+
        }

        /// Read from JSON in any case (`text`, `TEXT`), as query parameters are ([`FromStr`]):
        /// a REST client that sends GraphQL's spelling is understood. Written in lower case.
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct Name;
                impl serde::de::Visitor<'_> for Name {
                    type Value = $name;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        write!(f, "one of: {}", [$($value),+].join(", "))
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$name, E> {
                        v.parse().map_err(|_| E::unknown_variant(v, &[$($value),+]))
                    }
                }
                d.deserialize_str(Name)
            }
        }

        impl $name {
            /// The value stored in the database and used by the REST API.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $value,)+ }
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s.to_ascii_lowercase().as_str() {
                    $($value => Ok(Self::$variant),)+
                    other => Err(format!(
                        "unknown {} {other:?}; expected one of: {}",
                        stringify!($name),
                        [$($value),+].join(", ")
                    )),
                }
            }
        }
    };
}

string_enum!(
    /// The four WhatsApp message shapes a template can produce.
    TemplateType { Text = "text", Buttons = "buttons", List = "list", Media = "media" }
);

string_enum!(
    /// Only ACTIVE templates are visible to anonymous callers.
    TemplateStatus { Draft = "draft", Active = "active", Archived = "archived" }
);

string_enum!(
    MediaStatus { Uploading = "uploading", Processing = "processing", Ready = "ready", Failed = "failed" }
);

string_enum!(
    DeliveryStatus {
        Pending = "pending",
        Assigned = "assigned",
        PickedUp = "picked_up",
        InTransit = "in_transit",
        Delivered = "delivered",
        Failed = "failed",
        Cancelled = "cancelled",
    }
);

string_enum!(
    WebhookAttemptStatus { Pending = "pending", Succeeded = "succeeded", Failed = "failed" }
);

string_enum!(
    /// The order lifecycle: PENDING -> CONFIRMED (or REJECTED by validation) -> PREPARING -> READY
    /// -> DELIVERED, or CANCELLED before delivery.
    OrderStatus {
        Pending = "pending",
        Confirmed = "confirmed",
        Rejected = "rejected",
        Preparing = "preparing",
        Ready = "ready",
        Delivered = "delivered",
        Cancelled = "cancelled",
    }
);

string_enum!(
    /// Which way a WhatsApp message went.
    MessageDirection { Outbound = "outbound", Inbound = "inbound" }
);

string_enum!(
    /// Outbound: QUEUED -> SENT -> DELIVERED -> READ, or FAILED. Inbound messages are RECEIVED.
    MessageStatus {
        Queued = "queued",
        Sent = "sent",
        Delivered = "delivered",
        Read = "read",
        Failed = "failed",
        Received = "received",
    }
);
