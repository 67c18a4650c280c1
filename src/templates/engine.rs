//! The template engine: pure functions, no I/O.
//!
//! * [`render`] substitutes `{{ name }}` variables everywhere text can appear. A missing variable is
//!   an error listing every missing name, never a silent blank.
//! * [`extract_variables`] lists the names a template uses, in order of first use.
//! * [`validate`] checks the WhatsApp Cloud API limits and returns every violation with its field.
//! * [`payload`] builds the exact Cloud API message JSON (text, interactive button, interactive
//!   list, image by link or media id).

use std::{collections::BTreeSet, sync::LazyLock};

use entity::TemplateType;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::error::FieldError;

/// WhatsApp Cloud API limits (Meta's interactive-message reference and its SDK).
pub mod limits {
    pub const MAX_REPLY_BUTTONS: usize = 3;
    pub const BUTTON_TITLE: usize = 20;
    pub const BUTTON_ID: usize = 256;
    pub const MAX_SECTIONS: usize = 10;
    pub const MAX_ROWS_TOTAL: usize = 10;
    pub const LIST_BUTTON_TEXT: usize = 20;
    pub const ROW_ID: usize = 200;
    pub const ROW_TITLE: usize = 24;
    pub const ROW_DESCRIPTION: usize = 72;
    pub const SECTION_TITLE: usize = 24;
    pub const BODY: usize = 1024;
    pub const HEADER: usize = 60;
    pub const FOOTER: usize = 60;
    pub const NAME: usize = 100;
}

/// A quick-reply button. Deserializes from `{"id","title"}` or, as the seed allowed, a bare title.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    async_graphql::SimpleObject,
    async_graphql::InputObject,
)]
#[graphql(input_name = "ButtonInput", name = "TemplateButton")]
#[serde(from = "ButtonRepr")]
pub struct Button {
    pub id: String,
    pub title: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ButtonRepr {
    Full { id: Option<String>, title: String },
    Title(String),
}

impl From<ButtonRepr> for Button {
    fn from(r: ButtonRepr) -> Self {
        match r {
            ButtonRepr::Full { id, title } => Button {
                id: id.filter(|i| !i.is_empty()).unwrap_or_else(|| slug(&title)),
                title,
            },
            ButtonRepr::Title(title) => Button {
                id: slug(&title),
                title,
            },
        }
    }
}

fn slug(title: &str) -> String {
    let s: String = title
        .trim()
        .chars()
        .map(|c| {
            if c.is_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() { "button".into() } else { s }
}

#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    async_graphql::SimpleObject,
    async_graphql::InputObject,
)]
#[graphql(input_name = "ListRowInput", name = "ListRow")]
pub struct Row {
    pub id: String,
    pub title: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    async_graphql::SimpleObject,
    async_graphql::InputObject,
)]
#[graphql(input_name = "ListSectionInput", name = "ListSection")]
pub struct Section {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default)]
    #[graphql(default)]
    pub rows: Vec<Row>,
}

/// The media a MEDIA template sends: a public `link` or an uploaded WhatsApp media `id`.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    Default,
    async_graphql::SimpleObject,
    async_graphql::InputObject,
)]
#[graphql(input_name = "TemplateMediaInput", name = "TemplateMedia")]
pub struct Media {
    /// Only `image` is supported by the builders today.
    #[serde(default = "default_media_kind", rename = "type")]
    #[graphql(name = "type", default_with = "default_media_kind()")]
    pub kind: String,
    #[serde(default, alias = "url", skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

fn default_media_kind() -> String {
    "image".into()
}

/// Everything that makes up a template's message. Stored in message_templates and snapshotted
/// into template_versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateContent {
    #[serde(rename = "type")]
    pub kind: TemplateType,
    pub body: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub footer: Option<String>,
    /// The label of the button that opens a LIST.
    #[serde(default, alias = "buttonText", skip_serializing_if = "Option::is_none")]
    pub button_text: Option<String>,
    #[serde(default)]
    pub buttons: Vec<Button>,
    #[serde(default)]
    pub sections: Vec<Section>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<Media>,
}

static VAR_RE: LazyLock<VarScanner> = LazyLock::new(VarScanner::default);

/// Finds `{{ name }}` placeholders: names are letters, digits, `_`, `.` and `-`.
#[derive(Default)]
struct VarScanner;

impl VarScanner {
    /// Calls `f(range_of_placeholder, name)` for each placeholder in `text`.
    fn scan(&self, text: &str, mut f: impl FnMut(std::ops::Range<usize>, &str)) {
        let mut from = 0;
        while let Some(open) = text[from..].find("{{") {
            let start = from + open;
            let Some(close) = text[start + 2..].find("}}") else {
                break;
            };
            let end = start + 2 + close + 2;
            let name = text[start + 2..end - 2].trim();
            if !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_alphanumeric() || matches!(c, '_' | '.' | '-'))
            {
                f(start..end, name);
                from = end;
            } else {
                from = start + 2;
            }
        }
    }
}

impl TemplateContent {
    /// Every piece of text a variable may appear in, in message order.
    fn texts(&self) -> Vec<&str> {
        let mut out = vec![];
        out.extend(self.header.as_deref());
        out.push(self.body.as_str());
        out.extend(self.footer.as_deref());
        out.extend(self.button_text.as_deref());
        for b in &self.buttons {
            out.push(&b.title);
        }
        for s in &self.sections {
            out.extend(s.title.as_deref());
            for r in &s.rows {
                out.push(&r.title);
                out.extend(r.description.as_deref());
            }
        }
        if let Some(m) = &self.media {
            out.extend(m.link.as_deref());
        }
        out
    }

    fn map_texts(&self, mut f: impl FnMut(&str) -> String) -> Self {
        let mut c = self.clone();
        let mut opt = |o: &mut Option<String>| {
            if let Some(s) = o {
                *s = f(s);
            }
        };
        opt(&mut c.header);
        opt(&mut c.footer);
        opt(&mut c.button_text);
        if let Some(m) = &mut c.media {
            opt(&mut m.link);
        }
        for s in &mut c.sections {
            opt(&mut s.title);
            for r in &mut s.rows {
                opt(&mut r.description);
            }
        }
        c.body = f(&c.body);
        for b in &mut c.buttons {
            b.title = f(&b.title);
        }
        for s in &mut c.sections {
            for r in &mut s.rows {
                r.title = f(&r.title);
            }
        }
        c
    }
}

/// The variable names a template uses, each once, in order of first use.
pub fn extract_variables(content: &TemplateContent) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let mut out = vec![];
    for text in content.texts() {
        VAR_RE.scan(text, |_, name| {
            if seen.insert(name.to_owned()) {
                out.push(name.to_owned());
            }
        });
    }
    out
}

/// Substituting failed: these names had no value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("missing template variables: {}", .0.join(", "))]
pub struct MissingVariables(pub Vec<String>);

fn lookup<'a>(vars: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(v) = vars.get(name) {
        return Some(v);
    }
    // Dotted names walk into objects: {{ customer.name }}.
    let mut parts = name.split('.');
    let mut cur = vars.get(parts.next()?)?;
    for p in parts {
        cur = cur.as_object()?.get(p)?;
    }
    Some(cur)
}

fn value_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// Substitutes every variable, or lists every missing one.
pub fn render(
    content: &TemplateContent,
    vars: &Map<String, Value>,
) -> Result<TemplateContent, MissingVariables> {
    let missing: Vec<String> = extract_variables(content)
        .into_iter()
        .filter(|n| lookup(vars, n).and_then(value_text).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(MissingVariables(missing));
    }
    Ok(content.map_texts(|text| {
        let mut out = String::with_capacity(text.len());
        let mut last = 0;
        VAR_RE.scan(text, |range, name| {
            out.push_str(&text[last..range.start]);
            out.push_str(&lookup(vars, name).and_then(value_text).unwrap_or_default());
            last = range.end;
        });
        out.push_str(&text[last..]);
        out
    }))
}

fn chars(s: &str) -> usize {
    s.chars().count()
}

/// Checks a template (raw or rendered) against the Cloud API limits. Empty means valid.
pub fn validate(c: &TemplateContent) -> Vec<FieldError> {
    use limits::*;
    let mut v = Vec::new();
    let mut bad = |field: String, message: String| v.push(FieldError { field, message });
    let too_long = |what: &str, max: usize| format!("{what} must be at most {max} characters");

    if c.body.trim().is_empty() && c.kind != TemplateType::Media {
        bad("body".into(), "body must not be empty".into());
    }
    if chars(&c.body) > BODY {
        bad("body".into(), too_long("body", BODY));
    }
    if let Some(h) = &c.header
        && chars(h) > HEADER
    {
        bad("header".into(), too_long("header", HEADER));
    }
    if let Some(f) = &c.footer
        && chars(f) > FOOTER
    {
        bad("footer".into(), too_long("footer", FOOTER));
    }

    match c.kind {
        TemplateType::Text => {}
        TemplateType::Buttons => {
            if c.buttons.is_empty() {
                bad(
                    "buttons".into(),
                    "a BUTTONS template needs at least one button".into(),
                );
            }
            if c.buttons.len() > MAX_REPLY_BUTTONS {
                bad(
                    "buttons".into(),
                    format!("at most {MAX_REPLY_BUTTONS} reply buttons are allowed"),
                );
            }
            let mut titles = BTreeSet::new();
            let mut ids = BTreeSet::new();
            for (i, b) in c.buttons.iter().enumerate() {
                if b.title.trim().is_empty() {
                    bad(
                        format!("buttons[{i}].title"),
                        "button title must not be empty".into(),
                    );
                } else if chars(&b.title) > BUTTON_TITLE {
                    bad(
                        format!("buttons[{i}].title"),
                        too_long("button title", BUTTON_TITLE),
                    );
                }
                if !titles.insert(b.title.trim().to_lowercase()) {
                    bad(
                        format!("buttons[{i}].title"),
                        "button titles must be unique".into(),
                    );
                }
                if b.id.is_empty() {
                    bad(
                        format!("buttons[{i}].id"),
                        "button id must not be empty".into(),
                    );
                } else if chars(&b.id) > BUTTON_ID {
                    bad(format!("buttons[{i}].id"), too_long("button id", BUTTON_ID));
                }
                if !ids.insert(b.id.as_str()) {
                    bad(
                        format!("buttons[{i}].id"),
                        "button ids must be unique".into(),
                    );
                }
            }
        }
        TemplateType::List => {
            match c.button_text.as_deref().map(str::trim) {
                None | Some("") => bad(
                    "buttonText".into(),
                    "a LIST template needs buttonText".into(),
                ),
                Some(t) if chars(t) > LIST_BUTTON_TEXT => bad(
                    "buttonText".into(),
                    too_long("list button text", LIST_BUTTON_TEXT),
                ),
                _ => {}
            }
            if c.sections.is_empty() {
                bad(
                    "sections".into(),
                    "a LIST template needs at least one section".into(),
                );
            }
            if c.sections.len() > MAX_SECTIONS {
                bad(
                    "sections".into(),
                    format!("at most {MAX_SECTIONS} sections are allowed"),
                );
            }
            let total: usize = c.sections.iter().map(|s| s.rows.len()).sum();
            if total > MAX_ROWS_TOTAL {
                bad(
                    "sections".into(),
                    format!("at most {MAX_ROWS_TOTAL} rows are allowed in total, got {total}"),
                );
            }
            let mut row_ids = BTreeSet::new();
            for (i, s) in c.sections.iter().enumerate() {
                match s.title.as_deref() {
                    Some(t) if chars(t) > SECTION_TITLE => bad(
                        format!("sections[{i}].title"),
                        too_long("section title", SECTION_TITLE),
                    ),
                    None | Some("") if c.sections.len() > 1 => bad(
                        format!("sections[{i}].title"),
                        "each section needs a title when there is more than one".into(),
                    ),
                    _ => {}
                }
                if s.rows.is_empty() {
                    bad(
                        format!("sections[{i}].rows"),
                        "a section needs at least one row".into(),
                    );
                }
                for (j, r) in s.rows.iter().enumerate() {
                    let at = format!("sections[{i}].rows[{j}]");
                    if r.title.trim().is_empty() {
                        bad(format!("{at}.title"), "row title must not be empty".into());
                    } else if chars(&r.title) > ROW_TITLE {
                        bad(format!("{at}.title"), too_long("row title", ROW_TITLE));
                    }
                    if let Some(d) = &r.description
                        && chars(d) > ROW_DESCRIPTION
                    {
                        bad(
                            format!("{at}.description"),
                            too_long("row description", ROW_DESCRIPTION),
                        );
                    }
                    if r.id.is_empty() {
                        bad(format!("{at}.id"), "row id must not be empty".into());
                    } else if chars(&r.id) > ROW_ID {
                        bad(format!("{at}.id"), too_long("row id", ROW_ID));
                    }
                    if !row_ids.insert(r.id.as_str()) {
                        bad(format!("{at}.id"), "row ids must be unique".into());
                    }
                }
            }
        }
        TemplateType::Media => match &c.media {
            None => bad(
                "media".into(),
                "a MEDIA template needs media (link or id)".into(),
            ),
            Some(m) => {
                if m.kind != "image" {
                    bad("media.type".into(), "only image media is supported".into());
                }
                match (m.link.as_deref(), m.id.as_deref()) {
                    (Some(_), Some(_)) => bad(
                        "media".into(),
                        "give either media.link or media.id, not both".into(),
                    ),
                    (None, None) => bad("media".into(), "media needs a link or an id".into()),
                    (Some(link), None)
                        if !(link.starts_with("https://")
                            || link.starts_with("http://")
                            || link.starts_with("{{")) =>
                    {
                        bad(
                            "media.link".into(),
                            "media.link must be an http(s) URL".into(),
                        )
                    }
                    _ => {}
                }
            }
        },
    }
    v
}

fn base(to: Option<&str>, kind: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("messaging_product".into(), json!("whatsapp"));
    m.insert("recipient_type".into(), json!("individual"));
    if let Some(to) = to {
        m.insert("to".into(), json!(to));
    }
    m.insert("type".into(), json!(kind));
    m
}

/// The Cloud API `POST /{phone-number-id}/messages` body for rendered content. `to` is left out
/// when unknown (previews).
pub fn payload(c: &TemplateContent, to: Option<&str>) -> Value {
    let interactive = |kind: &str, action: Value| {
        let mut i = Map::new();
        i.insert("type".into(), json!(kind));
        if let Some(h) = c.header.as_deref().filter(|h| !h.is_empty()) {
            i.insert("header".into(), json!({ "type": "text", "text": h }));
        }
        i.insert("body".into(), json!({ "text": c.body }));
        if let Some(f) = c.footer.as_deref().filter(|f| !f.is_empty()) {
            i.insert("footer".into(), json!({ "text": f }));
        }
        i.insert("action".into(), action);
        Value::Object(i)
    };
    let mut m;
    match c.kind {
        TemplateType::Text => {
            m = base(to, "text");
            m.insert(
                "text".into(),
                json!({ "preview_url": false, "body": c.body }),
            );
        }
        TemplateType::Buttons => {
            m = base(to, "interactive");
            let buttons: Vec<Value> = c
                .buttons
                .iter()
                .map(|b| json!({ "type": "reply", "reply": { "id": b.id, "title": b.title } }))
                .collect();
            m.insert(
                "interactive".into(),
                interactive("button", json!({ "buttons": buttons })),
            );
        }
        TemplateType::List => {
            m = base(to, "interactive");
            let sections: Vec<Value> = c
                .sections
                .iter()
                .map(|s| {
                    let mut o = Map::new();
                    if let Some(t) = s.title.as_deref().filter(|t| !t.is_empty()) {
                        o.insert("title".into(), json!(t));
                    }
                    o.insert("rows".into(), json!(s.rows));
                    Value::Object(o)
                })
                .collect();
            m.insert(
                "interactive".into(),
                interactive(
                    "list",
                    json!({ "button": c.button_text.clone().unwrap_or_default(), "sections": sections }),
                ),
            );
        }
        TemplateType::Media => {
            m = base(to, "image");
            let mut img = Map::new();
            if let Some(media) = &c.media {
                if let Some(id) = &media.id {
                    img.insert("id".into(), json!(id));
                } else if let Some(link) = &media.link {
                    img.insert("link".into(), json!(link));
                }
            }
            if !c.body.is_empty() {
                img.insert("caption".into(), json!(c.body));
            }
            m.insert("image".into(), Value::Object(img));
        }
    }
    Value::Object(m)
}

/// The plain text a person would read: header, body and footer.
pub fn text(c: &TemplateContent) -> String {
    [
        c.header.as_deref(),
        Some(c.body.as_str()),
        c.footer.as_deref(),
    ]
    .into_iter()
    .flatten()
    .filter(|s| !s.is_empty())
    .collect::<Vec<_>>()
    .join("\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_tpl(body: &str) -> TemplateContent {
        TemplateContent {
            kind: TemplateType::Text,
            body: body.into(),
            header: None,
            footer: None,
            button_text: None,
            buttons: vec![],
            sections: vec![],
            media: None,
        }
    }

    fn vars(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn render_substitutes_and_lists_every_missing_name() {
        let t = text_tpl("Hi {{ name }}, order {{order_id}} total {{ total }} for {{name}}");
        assert_eq!(extract_variables(&t), vec!["name", "order_id", "total"]);
        let out = render(
            &t,
            &vars(json!({"name":"Ann","order_id":"A1","total":12.5})),
        )
        .unwrap();
        assert_eq!(out.body, "Hi Ann, order A1 total 12.5 for Ann");
        let err = render(&t, &vars(json!({"name":"Ann","total":null}))).unwrap_err();
        assert_eq!(err.0, vec!["order_id", "total"]);
        assert!(err.to_string().contains("order_id, total"));
    }

    #[test]
    fn dotted_names_and_non_placeholders() {
        let t = text_tpl("{{ customer.name }} pays {{ }} {{not valid!}} {{x");
        assert_eq!(extract_variables(&t), vec!["customer.name"]);
        let out = render(&t, &vars(json!({"customer":{"name":"Bo"}}))).unwrap();
        assert_eq!(out.body, "Bo pays {{ }} {{not valid!}} {{x");
    }

    #[test]
    fn variables_in_buttons_and_rows_are_found() {
        let mut t = text_tpl("Pick");
        t.kind = TemplateType::Buttons;
        t.header = Some("{{h}}".into());
        t.buttons = vec![Button {
            id: "a".into(),
            title: "{{ b }}".into(),
        }];
        assert_eq!(extract_variables(&t), vec!["h", "b"]);
    }

    #[test]
    fn button_limits_name_their_fields() {
        let mut t = text_tpl("Pick one");
        t.kind = TemplateType::Buttons;
        t.buttons = (0..4)
            .map(|i| Button {
                id: format!("b{i}"),
                title: format!("Option {i}"),
            })
            .collect();
        t.buttons[1].title = "x".repeat(21);
        t.buttons[2].title = "Option 0".into();
        t.buttons[3].id = "i".repeat(257);
        let fields: Vec<String> = validate(&t).into_iter().map(|v| v.field).collect();
        assert_eq!(
            fields,
            vec![
                "buttons",
                "buttons[1].title",
                "buttons[2].title",
                "buttons[3].id"
            ]
        );
    }

    #[test]
    fn list_limits_name_their_fields() {
        let row = |i: usize| Row {
            id: format!("r{i}"),
            title: format!("Row {i}"),
            description: None,
        };
        let mut t = text_tpl("Menu");
        t.kind = TemplateType::List;
        t.button_text = Some("b".repeat(21));
        t.sections = vec![
            Section {
                title: Some("s".repeat(25)),
                rows: (0..6).map(row).collect(),
            },
            Section {
                title: None,
                rows: (6..11).map(row).collect(),
            },
        ];
        t.sections[0].rows[0].title = "t".repeat(25);
        t.sections[0].rows[1].description = Some("d".repeat(73));
        let fields: Vec<String> = validate(&t).into_iter().map(|v| v.field).collect();
        assert_eq!(
            fields,
            vec![
                "buttonText",
                "sections",
                "sections[0].title",
                "sections[0].rows[0].title",
                "sections[0].rows[1].description",
                "sections[1].title",
            ]
        );
        t.sections = (0..11)
            .map(|i| Section {
                title: Some(format!("S{i}")),
                rows: vec![row(i)],
            })
            .collect();
        let fields: Vec<String> = validate(&t).into_iter().map(|v| v.field).collect();
        assert!(fields.contains(&"sections".to_string()));
    }

    #[test]
    fn body_header_footer_limits() {
        let mut t = text_tpl(&"é".repeat(1024));
        t.header = Some("h".repeat(60));
        t.footer = Some("f".repeat(60));
        assert!(
            validate(&t).is_empty(),
            "limits are inclusive and count characters"
        );
        t.body.push('x');
        t.header = Some("h".repeat(61));
        t.footer = Some("f".repeat(61));
        let fields: Vec<String> = validate(&t).into_iter().map(|v| v.field).collect();
        assert_eq!(fields, vec!["body", "header", "footer"]);
    }

    #[test]
    fn payloads_match_cloud_api() {
        let t = text_tpl("Hello");
        assert_eq!(
            payload(&t, Some("263781564004")),
            json!({"messaging_product":"whatsapp","recipient_type":"individual","to":"263781564004",
                   "type":"text","text":{"preview_url":false,"body":"Hello"}})
        );
        let mut b = text_tpl("Confirm?");
        b.kind = TemplateType::Buttons;
        b.footer = Some("Thanks".into());
        b.buttons = vec![Button {
            id: "yes".into(),
            title: "Yes".into(),
        }];
        assert_eq!(
            payload(&b, None),
            json!({"messaging_product":"whatsapp","recipient_type":"individual","type":"interactive",
                   "interactive":{"type":"button","body":{"text":"Confirm?"},"footer":{"text":"Thanks"},
                   "action":{"buttons":[{"type":"reply","reply":{"id":"yes","title":"Yes"}}]}}})
        );
        let mut m = text_tpl("Look");
        m.kind = TemplateType::Media;
        m.media = Some(Media {
            kind: "image".into(),
            link: None,
            id: Some("123".into()),
        });
        assert_eq!(
            payload(&m, None),
            json!({"messaging_product":"whatsapp","recipient_type":"individual","type":"image",
                   "image":{"id":"123","caption":"Look"}})
        );
    }

    #[test]
    fn buttons_deserialize_from_seed_shapes() {
        let b: Vec<Button> = serde_json::from_value(
            json!(["Yes please", {"id":"n","title":"No"}, {"title":"Later"}]),
        )
        .unwrap();
        assert_eq!(
            b[0],
            Button {
                id: "yes_please".into(),
                title: "Yes please".into()
            }
        );
        assert_eq!(b[1].id, "n");
        assert_eq!(b[2].id, "later");
    }
}
