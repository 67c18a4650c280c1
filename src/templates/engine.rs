//! The template engine: pure functions, no I/O.
//!
//! * [`render`] substitutes `{{ name }}` variables everywhere text can appear. A missing variable is
//!   an error listing every missing name, never a silent blank.
//! * [`extract_variables`] lists the names a template uses, in order of first use.
//! * [`validate`] checks the WhatsApp Cloud API limits and returns every violation with its field.
//! * [`payload`] builds the exact Cloud API message JSON (text, interactive button, interactive
//!   list, image by link or media id).

use std::collections::BTreeSet;

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
    /// A media link (the Cloud API takes URLs; 2 KB is the practical URL ceiling).
    pub const MEDIA_LINK: usize = 2048;
    pub const MEDIA_ID: usize = 256;

    // Caps on what a caller may hand the renderer, checked before any work.
    /// The variables object, measured as the text it holds (keys, strings, numbers).
    pub const VARIABLES_BYTES: usize = 32 * 1024;
    /// Values and keys in the variables object, nested ones included.
    pub const VARIABLES_ENTRIES: usize = 1000;
    /// How deep `{{ a.b.c }}` lookups may go.
    pub const VARIABLES_DEPTH: usize = 8;
    /// The rendered message, all fields together. A stored template is at most a few KB, so a
    /// larger result can only come from oversized values.
    pub const RENDERED_BYTES: usize = 64 * 1024;
}

/// A quick-reply button: `id` and `title`. In REST bodies a bare title is accepted too, as the
/// seed allowed; its id is then made from the title.
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

/// A button as JSON gives it: an object (`id` optional), or the seed's bare title. Read by a
/// visitor of its own, not `#[serde(untagged)]`: untagged buffers the value and reads the
/// object from an array too (`["yes", "Yes"]`), and its error names no shape.
enum ButtonRepr {
    Full { id: Option<String>, title: String },
    Title(String),
}

impl<'de> Deserialize<'de> for ButtonRepr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Repr;
        #[derive(Deserialize)]
        struct Full {
            #[serde(default)]
            id: Option<String>,
            title: String,
        }
        impl<'de> serde::de::Visitor<'de> for Repr {
            type Value = ButtonRepr;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a button: an object with `title` (and `id`), or a title")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ButtonRepr, E> {
                Ok(ButtonRepr::Title(v.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<ButtonRepr, A::Error> {
                let f = Full::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(ButtonRepr::Full {
                    id: f.id,
                    title: f.title,
                })
            }
        }
        d.deserialize_any(Repr)
    }
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
    // A title of symbols or emoji only gives no word to make an id of.
    if s.chars().any(char::is_alphanumeric) {
        s
    } else {
        "button".into()
    }
}

impl Button {
    /// Buttons as JSON gives them. An id left out is made from the title, and a made id that
    /// another button of the list has (or is given) gets `_2`, `_3`, …: `Yes please` and
    /// `Yes-please` are `yes_please` and `yes_please_2`, where they were refused as duplicate
    /// ids the client never sent. Ids the client gave are kept as given (two equal ones are
    /// VALIDATION).
    fn from_reprs(reprs: Vec<ButtonRepr>) -> Vec<Button> {
        let given: BTreeSet<String> = reprs
            .iter()
            .filter_map(|r| match r {
                ButtonRepr::Full { id: Some(id), .. } if !id.is_empty() => Some(id.clone()),
                _ => None,
            })
            .collect();
        let mut used = BTreeSet::new();
        reprs
            .into_iter()
            .map(|r| {
                let (id, title) = match r {
                    ButtonRepr::Full {
                        id: Some(id),
                        title,
                    } if !id.is_empty() => (id, title),
                    ButtonRepr::Full { title, .. } | ButtonRepr::Title(title) => {
                        let base = slug(&title);
                        let mut id = base.clone();
                        for n in 2.. {
                            if !given.contains(&id) && !used.contains(&id) {
                                break;
                            }
                            id = format!("{base}_{n}");
                        }
                        (id, title)
                    }
                };
                used.insert(id.clone());
                Button { id, title }
            })
            .collect()
    }
}

/// `#[serde(deserialize_with)]` for a list of buttons: see [`Button::from_reprs`].
pub fn deserialize_buttons<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<Button>, D::Error> {
    Ok(Button::from_reprs(Vec::<ButtonRepr>::deserialize(d)?))
}

/// [`deserialize_buttons`] for a patch's field (with `default`): absent `None`, `null`
/// `Some(None)`.
pub fn deserialize_buttons_patch<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<Vec<Button>>>, D::Error> {
    Ok(Some(
        Option::<Vec<ButtonRepr>>::deserialize(d)?.map(Button::from_reprs),
    ))
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
    #[serde(default, deserialize_with = "deserialize_buttons")]
    pub buttons: Vec<Button>,
    #[serde(default)]
    pub sections: Vec<Section>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<Media>,
}

/// Calls `f(range_of_placeholder, name)` for each `{{ name }}` in `text`: optional whitespace,
/// a name of letters, digits, `_`, `.` and `-`, optional whitespace, `}}`.
///
/// Linear in `text`: a failed match stops at the first character outside that grammar, and none
/// of the characters it passed can start the next `{{`, so no byte is looked at more than twice.
fn scan_placeholders(text: &str, mut f: impl FnMut(std::ops::Range<usize>, &str)) {
    let mut from = 0;
    while let Some(open) = text[from..].find("{{") {
        let start = from + open;
        match placeholder_at(text, start + 2) {
            Some((name, end)) => {
                f(start..end, &text[name]);
                from = end;
            }
            // `{{{a}}` is a literal `{` before `{{a}}`.
            None => from = start + 1,
        }
    }
}

/// The name's range and the end of the placeholder whose `{{` ends at `i`.
fn placeholder_at(text: &str, i: usize) -> Option<(std::ops::Range<usize>, usize)> {
    let is_name = |c: char| c.is_alphanumeric() || matches!(c, '_' | '.' | '-');
    let rest = &text[i..];
    let lead = rest.len() - rest.trim_start().len();
    let name_start = i + lead;
    let name_len: usize = text[name_start..]
        .chars()
        .take_while(|c| is_name(*c))
        .map(char::len_utf8)
        .sum();
    if name_len == 0 {
        return None;
    }
    let name_end = name_start + name_len;
    let after = &text[name_end..];
    let trail = after.len() - after.trim_start().len();
    after[trail..]
        .starts_with("}}")
        .then(|| (name_start..name_end, name_end + trail + 2))
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
        scan_placeholders(text, |_, name| {
            if seen.insert(name.to_owned()) {
                out.push(name.to_owned());
            }
        });
    }
    out
}

/// Why a template could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// These names had no value.
    #[error("missing template variables: {}", .0.join(", "))]
    Missing(Vec<String>),
    /// These names hold an array or an object: a message carries text, and JSON text in a
    /// customer's message is never what was meant.
    #[error(
        "template variables must be text, a number or a boolean; these are arrays or objects: {}",
        .0.join(", ")
    )]
    NotText(Vec<String>),
    /// The rendered message would exceed [`limits::RENDERED_BYTES`].
    #[error("the rendered message is larger than {} bytes", limits::RENDERED_BYTES)]
    TooLarge,
}

/// Checks the variables object against the caps in [`limits`] before any rendering work.
pub fn check_variables(vars: &Map<String, Value>) -> Result<(), FieldError> {
    fn walk(v: &Value, depth: usize, bytes: &mut usize, entries: &mut usize) -> Result<(), String> {
        *entries += 1;
        if *entries > limits::VARIABLES_ENTRIES {
            return Err(format!(
                "variables may hold at most {} values",
                limits::VARIABLES_ENTRIES
            ));
        }
        if depth > limits::VARIABLES_DEPTH {
            return Err(format!(
                "variables may nest at most {} levels deep",
                limits::VARIABLES_DEPTH
            ));
        }
        match v {
            Value::String(s) => *bytes += s.len(),
            Value::Number(_) | Value::Bool(_) | Value::Null => *bytes += 8,
            Value::Array(items) => {
                for i in items {
                    walk(i, depth + 1, bytes, entries)?;
                }
            }
            Value::Object(map) => {
                for (k, i) in map {
                    *bytes += k.len();
                    walk(i, depth + 1, bytes, entries)?;
                }
            }
        }
        if *bytes > limits::VARIABLES_BYTES {
            return Err(format!(
                "variables may hold at most {} bytes of text",
                limits::VARIABLES_BYTES
            ));
        }
        Ok(())
    }
    let (mut bytes, mut entries) = (0, 0);
    for (k, v) in vars {
        bytes += k.len();
        walk(v, 1, &mut bytes, &mut entries).map_err(|message| FieldError {
            field: "variables".into(),
            message,
        })?;
    }
    Ok(())
}

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

/// Appends a variable's text: strings as they are, numbers and booleans as JSON writes them
/// (null, arrays and objects never get here).
fn push_value(out: &mut String, v: &Value) {
    match v {
        Value::String(s) => out.push_str(s),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Null | Value::Array(_) | Value::Object(_) => {}
    }
}

/// Substitutes every variable, or lists every missing one. Linear in the template plus the
/// output, and the output is capped at [`limits::RENDERED_BYTES`] as it grows.
pub fn render(
    content: &TemplateContent,
    vars: &Map<String, Value>,
) -> Result<TemplateContent, RenderError> {
    let names = extract_variables(content);
    let with = |keep: fn(Option<&Value>) -> bool| -> Vec<String> {
        names
            .iter()
            .filter(|n| keep(lookup(vars, n)))
            .cloned()
            .collect()
    };
    let missing = with(|v| v.is_none_or(Value::is_null));
    if !missing.is_empty() {
        return Err(RenderError::Missing(missing));
    }
    let not_text = with(|v| v.is_some_and(|v| v.is_array() || v.is_object()));
    if !not_text.is_empty() {
        return Err(RenderError::NotText(not_text));
    }
    let mut budget = limits::RENDERED_BYTES;
    let mut too_large = false;
    let rendered = content.map_texts(|text| {
        if too_large {
            return String::new();
        }
        let mut out = String::with_capacity(text.len().min(budget));
        let mut last = 0;
        scan_placeholders(text, |range, name| {
            if too_large {
                return;
            }
            out.push_str(&text[last..range.start]);
            if let Some(v) = lookup(vars, name) {
                push_value(&mut out, v);
            }
            last = range.end;
            too_large = out.len() > budget;
        });
        out.push_str(&text[last..]);
        if out.len() > budget {
            too_large = true;
        } else {
            budget -= out.len();
        }
        out
    });
    if too_large {
        Err(RenderError::TooLarge)
    } else {
        Ok(rendered)
    }
}

fn chars(s: &str) -> usize {
    s.chars().count()
}

/// Checks a template (raw or rendered) against the Cloud API limits. Empty means valid.
pub fn validate(c: &TemplateContent) -> Vec<FieldError> {
    check(c).into_iter().map(|(_, e)| e).collect()
}

/// Only the size and count limits, which hold for every field of every template type. An inline
/// template that breaks one is refused before rendering: no stored template could be that large.
pub fn size_violations(c: &TemplateContent) -> Vec<FieldError> {
    check(c)
        .into_iter()
        .filter(|(kind, _)| *kind == Check::Size)
        .map(|(_, e)| e)
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// A length or count limit.
    Size,
    /// A rule of the template's type (required parts, uniqueness, formats).
    Rule,
}

/// Collects violations in message order, each tagged with its kind.
struct Violations(Vec<(Check, FieldError)>);

impl Violations {
    fn rule(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.push(Check::Rule, field.into(), message.into());
    }

    fn push(&mut self, kind: Check, field: String, message: String) {
        self.0.push((kind, FieldError { field, message }));
    }

    /// A text limit in characters; true when it held.
    fn max_chars(&mut self, field: impl Into<String>, what: &str, text: &str, max: usize) -> bool {
        // A byte length within the limit is within it in characters too: skip the count.
        if text.len() <= max || chars(text) <= max {
            return true;
        }
        self.push(
            Check::Size,
            field.into(),
            format!("{what} must be at most {max} characters"),
        );
        false
    }

    fn max_count(&mut self, field: &str, n: usize, max: usize, message: String) {
        if n > max {
            self.push(Check::Size, field.into(), message);
        }
    }
}

fn check(c: &TemplateContent) -> Vec<(Check, FieldError)> {
    use limits::*;
    let mut v = Violations(Vec::new());

    if c.body.trim().is_empty() && c.kind != TemplateType::Media {
        v.rule("body", "body must not be empty");
    }
    v.max_chars("body", "body", &c.body, BODY);
    if let Some(h) = &c.header {
        v.max_chars("header", "header", h, HEADER);
    }
    if let Some(f) = &c.footer {
        v.max_chars("footer", "footer", f, FOOTER);
    }
    check_buttons(c, &mut v);
    check_list(c, &mut v);
    check_media(c, &mut v);
    v.0
}

/// Reply buttons: sizes for every type, the rest for BUTTONS templates.
fn check_buttons(c: &TemplateContent, v: &mut Violations) {
    use limits::*;
    let rules = c.kind == TemplateType::Buttons;
    if rules && c.buttons.is_empty() {
        v.rule("buttons", "a BUTTONS template needs at least one button");
    }
    v.max_count(
        "buttons",
        c.buttons.len(),
        MAX_REPLY_BUTTONS,
        format!("at most {MAX_REPLY_BUTTONS} reply buttons are allowed"),
    );
    let mut titles = BTreeSet::new();
    let mut ids = BTreeSet::new();
    // Past the count limit the rest is refused already: don't walk an unbounded list.
    for (i, b) in c.buttons.iter().take(MAX_REPLY_BUTTONS + 1).enumerate() {
        if b.title.trim().is_empty() {
            v.rule(
                format!("buttons[{i}].title"),
                "button title must not be empty",
            );
        } else {
            v.max_chars(
                format!("buttons[{i}].title"),
                "button title",
                &b.title,
                BUTTON_TITLE,
            );
        }
        if !titles.insert(b.title.trim().to_lowercase()) {
            v.rule(
                format!("buttons[{i}].title"),
                "button titles must be unique",
            );
        }
        if b.id.is_empty() {
            v.rule(format!("buttons[{i}].id"), "button id must not be empty");
        } else {
            v.max_chars(format!("buttons[{i}].id"), "button id", &b.id, BUTTON_ID);
        }
        if !ids.insert(b.id.as_str()) {
            v.rule(format!("buttons[{i}].id"), "button ids must be unique");
        }
    }
}

/// The list button and its sections: sizes for every type, the rest for LIST templates.
fn check_list(c: &TemplateContent, v: &mut Violations) {
    use limits::*;
    let rules = c.kind == TemplateType::List;
    match c.button_text.as_deref().map(str::trim) {
        None | Some("") if rules => v.rule("buttonText", "a LIST template needs buttonText"),
        Some(t) => {
            v.max_chars("buttonText", "list button text", t, LIST_BUTTON_TEXT);
        }
        None => {}
    }
    if rules && c.sections.is_empty() {
        v.rule("sections", "a LIST template needs at least one section");
    }
    v.max_count(
        "sections",
        c.sections.len(),
        MAX_SECTIONS,
        format!("at most {MAX_SECTIONS} sections are allowed"),
    );
    let total: usize = c.sections.iter().map(|s| s.rows.len()).sum();
    v.max_count(
        "sections",
        total,
        MAX_ROWS_TOTAL,
        format!("at most {MAX_ROWS_TOTAL} rows are allowed in total, got {total}"),
    );
    let mut row_ids = BTreeSet::new();
    for (i, s) in c.sections.iter().take(MAX_SECTIONS + 1).enumerate() {
        match s.title.as_deref() {
            Some(t) if !t.is_empty() => {
                v.max_chars(
                    format!("sections[{i}].title"),
                    "section title",
                    t,
                    SECTION_TITLE,
                );
            }
            _ if rules && c.sections.len() > 1 => v.rule(
                format!("sections[{i}].title"),
                "each section needs a title when there is more than one",
            ),
            _ => {}
        }
        if rules && s.rows.is_empty() {
            v.rule(
                format!("sections[{i}].rows"),
                "a section needs at least one row",
            );
        }
        for (j, r) in s.rows.iter().take(MAX_ROWS_TOTAL + 1).enumerate() {
            let at = format!("sections[{i}].rows[{j}]");
            if r.title.trim().is_empty() {
                v.rule(format!("{at}.title"), "row title must not be empty");
            } else {
                v.max_chars(format!("{at}.title"), "row title", &r.title, ROW_TITLE);
            }
            if let Some(d) = &r.description {
                v.max_chars(
                    format!("{at}.description"),
                    "row description",
                    d,
                    ROW_DESCRIPTION,
                );
            }
            if r.id.is_empty() {
                v.rule(format!("{at}.id"), "row id must not be empty");
            } else {
                v.max_chars(format!("{at}.id"), "row id", &r.id, ROW_ID);
            }
            if !row_ids.insert(r.id.as_str()) {
                v.rule(format!("{at}.id"), "row ids must be unique");
            }
        }
    }
}

/// The media part: sizes for every type, the rest for MEDIA templates.
fn check_media(c: &TemplateContent, v: &mut Violations) {
    use limits::*;
    let rules = c.kind == TemplateType::Media;
    let Some(m) = &c.media else {
        if rules {
            v.rule("media", "a MEDIA template needs media (link or id)");
        }
        return;
    };
    if v.max_chars("media.type", "media type", &m.kind, 16) && rules && m.kind != "image" {
        v.rule("media.type", "only image media is supported");
    }
    if let Some(link) = &m.link {
        v.max_chars("media.link", "media link", link, MEDIA_LINK);
    }
    if let Some(id) = &m.id {
        v.max_chars("media.id", "media id", id, MEDIA_ID);
    }
    if !rules {
        return;
    }
    match (m.link.as_deref(), m.id.as_deref()) {
        (Some(_), Some(_)) => v.rule("media", "give either media.link or media.id, not both"),
        (None, None) => v.rule("media", "media needs a link or an id"),
        (Some(link), None)
            if !(link.starts_with("https://")
                || link.starts_with("http://")
                || link.starts_with("{{")) =>
        {
            v.rule("media.link", "media.link must be an http(s) URL")
        }
        _ => {}
    }
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
        // A blank header or footer is no header or footer, as an empty one is.
        if let Some(h) = c.header.as_deref().filter(|h| !h.trim().is_empty()) {
            i.insert("header".into(), json!({ "type": "text", "text": h }));
        }
        i.insert("body".into(), json!({ "text": c.body }));
        if let Some(f) = c.footer.as_deref().filter(|f| !f.trim().is_empty()) {
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

/// The plain text a person reads in the message [`payload`] sends: header, body and footer of
/// an interactive (BUTTONS, LIST) message; the body alone of a TEXT message and the caption of
/// a MEDIA one, which the Cloud API sends without a header or footer.
pub fn text(c: &TemplateContent) -> String {
    let framed = matches!(c.kind, TemplateType::Buttons | TemplateType::List);
    let shown = |s: &&str| framed && !s.trim().is_empty();
    [
        c.header.as_deref().filter(shown),
        Some(c.body.as_str()),
        c.footer.as_deref().filter(shown),
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

    #[test]
    fn the_text_is_what_the_message_carries() {
        let mut c = TemplateContent {
            kind: TemplateType::Text,
            body: "caption".into(),
            header: Some("HEAD".into()),
            footer: Some("FOOT".into()),
            button_text: None,
            buttons: vec![],
            sections: vec![],
            media: Some(Media {
                kind: "image".into(),
                link: Some("https://example.com/a.jpg".into()),
                id: None,
            }),
        };
        for kind in [TemplateType::Text, TemplateType::Media] {
            c.kind = kind;
            let sent = payload(&c, None).to_string();
            assert!(!sent.contains("HEAD") && !sent.contains("FOOT"), "{sent}");
            assert_eq!(text(&c), "caption", "{kind:?}");
        }
        c.kind = TemplateType::Buttons;
        c.buttons = vec![Button {
            id: "y".into(),
            title: "Yes".into(),
        }];
        let sent = payload(&c, None).to_string();
        assert!(sent.contains("HEAD") && sent.contains("FOOT"), "{sent}");
        assert_eq!(text(&c), "HEAD\n\ncaption\n\nFOOT");
    }

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
        assert_eq!(
            err,
            RenderError::Missing(vec!["order_id".into(), "total".into()])
        );
        assert!(err.to_string().contains("order_id, total"));
    }

    #[test]
    fn arrays_and_objects_are_refused_by_name_and_scalars_render() {
        let t = text_tpl("{{a}} {{b}} {{c}} {{d}} {{e}} {{customer.name}}");
        let err = render(
            &t,
            &vars(json!({"a":"x","b":[1,2],"c":{"k":1},"d":true,"e":7,"customer":{"name":"Ann"}})),
        )
        .unwrap_err();
        assert_eq!(err, RenderError::NotText(vec!["b".into(), "c".into()]));
        let out = render(
            &t,
            &vars(json!({"a":"x","b":-1.5,"c":false,"d":true,"e":7,"customer":{"name":"Ann"}})),
        )
        .unwrap();
        assert_eq!(out.body, "x -1.5 false true 7 Ann");
    }

    #[test]
    fn dotted_names_and_non_placeholders() {
        let t = text_tpl("{{ customer.name }} pays {{ }} {{not valid!}} {{x");
        assert_eq!(extract_variables(&t), vec!["customer.name"]);
        let out = render(&t, &vars(json!({"customer":{"name":"Bo"}}))).unwrap();
        assert_eq!(out.body, "Bo pays {{ }} {{not valid!}} {{x");
    }

    #[test]
    fn scanning_is_linear_on_hostile_input() {
        // Each rejected `{{` used to restart a search for `}}` to the end: quadratic. At this
        // size the old scanner takes minutes; the linear one, milliseconds.
        let hostile = format!("{}}}}}", "{{!".repeat(200_000));
        assert!(extract_variables(&text_tpl(&hostile)).is_empty());
        let spaces = format!("{{{{{}x", " ".repeat(300_000));
        assert!(extract_variables(&text_tpl(&spaces.repeat(3))).is_empty());
        // Still exact on ordinary input, including braces around placeholders.
        let t = text_tpl("{{{a}}} {{ b }} {{c }}{{ d}} {{e f}} {{}}");
        assert_eq!(extract_variables(&t), vec!["a", "b", "c", "d"]);
        let out = render(&t, &vars(json!({"a": 1, "b": "B", "c": true, "d": 2.5}))).unwrap();
        assert_eq!(out.body, "{1} B true2.5 {{e f}} {{}}");
    }

    #[test]
    fn variables_and_output_are_capped() {
        assert!(check_variables(&vars(json!({"a": "x".repeat(limits::VARIABLES_BYTES)}))).is_err());
        assert!(check_variables(&vars(json!({"a": "x".repeat(1000)}))).is_ok());
        let deep = (0..20).fold(json!("x"), |v, _| json!({ "k": v }));
        assert!(check_variables(&vars(json!({ "d": deep }))).is_err());
        let many: Map<String, Value> = (0..2000).map(|i| (format!("k{i}"), json!(i))).collect();
        assert!(check_variables(&many).is_err());

        let t = text_tpl(&"{{a}}".repeat(200));
        let err = render(&t, &vars(json!({"a": "x".repeat(1000)}))).unwrap_err();
        assert_eq!(err, RenderError::TooLarge);
        assert!(render(&t, &vars(json!({"a": "x".repeat(100)}))).is_ok());
    }

    #[test]
    fn size_limits_hold_for_every_type() {
        let mut t = text_tpl("hello");
        t.button_text = Some("b".repeat(21));
        t.buttons = (0..5)
            .map(|i| Button {
                id: format!("b{i}"),
                title: "t".repeat(21),
            })
            .collect();
        let fields: Vec<String> = size_violations(&t).into_iter().map(|v| v.field).collect();
        assert_eq!(
            fields,
            vec![
                "buttons",
                "buttons[0].title",
                "buttons[1].title",
                "buttons[2].title",
                "buttons[3].title",
                "buttonText"
            ]
        );
        // Type rules are not size limits: a TEXT template needs no list parts.
        assert!(size_violations(&text_tpl("")).is_empty());
        assert!(!validate(&text_tpl("")).is_empty());
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
        // A blank header or footer goes out as none, as an empty one does.
        let mut blank = b.clone();
        blank.header = Some("   ".into());
        blank.footer = Some(" \n".into());
        let sent = payload(&blank, None);
        assert!(
            sent["interactive"].get("header").is_none()
                && sent["interactive"].get("footer").is_none(),
            "{sent}"
        );
        assert_eq!(text(&blank), "Confirm?");
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

    #[test]
    fn ids_made_from_titles_never_collide() {
        let content: TemplateContent = serde_json::from_value(json!({
            "type": "BUTTONS", "body": "b",
            "buttons": ["Yes please", {"title": "Yes-please"}, "🙂", "👍", {"id": "yes_please_2", "title": "Given"}],
        }))
        .unwrap();
        let ids: Vec<&str> = content.buttons.iter().map(|b| b.id.as_str()).collect();
        // The made ids step around each other and around the one given later in the list.
        assert_eq!(
            ids,
            [
                "yes_please",
                "yes_please_3",
                "button",
                "button_2",
                "yes_please_2"
            ]
        );
        // (Five is over the Cloud API's three, which is its own violation.)
        let violations = validate(&content);
        assert!(
            !violations.iter().any(|e| e.field.ends_with(".id")),
            "{violations:?}"
        );
        // Ids the client gave stay as given: two equal ones are still a violation.
        let given: TemplateContent = serde_json::from_value(json!({
            "type": "BUTTONS", "body": "b",
            "buttons": [{"id": "x", "title": "A"}, {"id": "x", "title": "B"}],
        }))
        .unwrap();
        assert!(
            validate(&given).iter().any(|e| e.field == "buttons[1].id"),
            "{:?}",
            validate(&given)
        );
    }
}
