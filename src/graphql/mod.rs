//! The GraphQL schema: thin resolvers, one module per domain, merged into one schema. Resolvers
//! parse input, call the domain service with the request's [`RequestContext`], and shape output.

pub mod audit;
pub mod bots;
pub mod events;
pub mod media;
pub mod orders;
pub mod queue;
pub mod shared;
pub mod system;
pub mod templates;
pub mod webhooks;
pub mod whatsapp;

use async_graphql::{
    Context, MergedObject, MergedSubscription, Positioned, Schema,
    parser::types::{DocumentOperations, ExecutableDocument, OperationDefinition},
};

use crate::{AppState, auth::RequestContext};

#[derive(MergedObject, Default)]
pub struct QueryRoot(
    templates::TemplateQuery,
    media::MediaQuery,
    queue::QueueQuery,
    audit::AuditQuery,
    events::EventQuery,
    system::SystemQuery,
    webhooks::WebhookQuery,
    orders::OrderQuery,
    whatsapp::WhatsAppQuery,
    bots::BotQuery,
);

#[derive(MergedObject, Default)]
pub struct MutationRoot(
    templates::TemplateMutation,
    media::MediaMutation,
    queue::QueueMutation,
    events::EventMutation,
    webhooks::WebhookMutation,
    orders::OrderMutation,
    whatsapp::WhatsAppMutation,
    bots::BotMutation,
);

#[derive(MergedSubscription, Default)]
pub struct SubscriptionRoot(system::SystemSubscription, events::EventSubscription);

pub type AppSchema = Schema<QueryRoot, MutationRoot, SubscriptionRoot>;

/// The operation of `doc` that a request runs, by async-graphql's rule: the named one, or the
/// only one. `None` where async-graphql answers with an error.
pub(crate) fn chosen_operation<'a>(
    doc: &'a ExecutableDocument,
    name: Option<&str>,
) -> Option<&'a Positioned<OperationDefinition>> {
    match (&doc.operations, name) {
        (DocumentOperations::Single(op), None) => Some(op),
        (DocumentOperations::Multiple(ops), Some(name)) => ops.get(name),
        (DocumentOperations::Multiple(ops), None) if ops.len() == 1 => ops.values().next(),
        _ => None,
    }
}

/// The schema without runtime data: for `smartbot schema` and the drift test.
pub fn schema_builder() -> async_graphql::SchemaBuilder<QueryRoot, MutationRoot, SubscriptionRoot> {
    Schema::build(
        QueryRoot::default(),
        MutationRoot::default(),
        SubscriptionRoot::default(),
    )
}

/// The runtime schema. It holds no state: each request brings the [`AppState`] and its
/// [`RequestContext`] as request data, so the schema and the state never point at each other.
pub fn build_schema(config: &crate::Config) -> AppSchema {
    schema_builder()
        .limit_depth(config.graphql_max_depth)
        .limit_complexity(config.graphql_max_complexity)
        .extension(ErrorCodes)
        .extension(TextInput)
        .extension(Expansion {
            max: config.graphql_max_complexity,
        })
        .extension(RootFields)
        .finish()
}

/// Puts a response's root fields in the order the operation selects them, and makes `data` null
/// when a non-null root field failed, as the GraphQL spec asks. async-graphql resolves a query's
/// root fields at once and writes each as it finishes, so `{ templates orders }` came back in
/// either order; and it leaves a failed field out of `data` instead of propagating its null, so
/// `{ version template(id: …) }` answered `data` without the `Template!` it promises.
struct RootFields;

impl async_graphql::extensions::ExtensionFactory for RootFields {
    fn create(&self) -> std::sync::Arc<dyn async_graphql::extensions::Extension> {
        std::sync::Arc::new(RootFieldsOf::default())
    }
}

/// One request's root fields: response key, and whether its type is non-null; and whether a
/// non-null mutation field has failed.
#[derive(Default)]
struct RootFieldsOf(
    std::sync::Mutex<Vec<(String, bool)>>,
    std::sync::atomic::AtomicBool,
);

#[async_trait::async_trait]
impl async_graphql::extensions::Extension for RootFieldsOf {
    async fn parse_query(
        &self,
        ctx: &async_graphql::extensions::ExtensionContext<'_>,
        query: &str,
        variables: &async_graphql::Variables,
        next: async_graphql::extensions::NextParseQuery<'_>,
    ) -> async_graphql::ServerResult<async_graphql::parser::types::ExecutableDocument> {
        let doc = next.run(ctx, query, variables).await?;
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = root_fields(&doc, ctx.schema_env);
        Ok(doc)
    }

    /// A mutation's fields run one after another; once a non-null one has failed, the rest do
    /// not run (its null propagates to `data`, as in graphql-js). They ran, and committed,
    /// while the answer said nothing of them.
    async fn resolve(
        &self,
        ctx: &async_graphql::extensions::ExtensionContext<'_>,
        info: async_graphql::extensions::ResolveInfo<'_>,
        next: async_graphql::extensions::NextResolve<'_>,
    ) -> async_graphql::ServerResult<Option<async_graphql::Value>> {
        use std::sync::atomic::Ordering;
        let registry = &ctx.schema_env.registry;
        let mutation_root = info.path_node.parent.is_none()
            && registry.mutation_type.as_deref() == Some(info.parent_type);
        if !mutation_root {
            return next.run(ctx, info).await;
        }
        if self.1.load(Ordering::Acquire) {
            let mut e = async_graphql::ServerError::new(
                "not run: an earlier field of this mutation failed, so nothing of this one was done",
                None,
            );
            let mut ext = async_graphql::ErrorExtensionValues::default();
            ext.set("code", "NOT_RUN");
            e.extensions = Some(ext);
            return Err(e);
        }
        let non_null = info.return_type.ends_with('!');
        let res = next.run(ctx, info).await;
        if res.is_err() && non_null {
            self.1.store(true, Ordering::Release);
        }
        res
    }

    async fn execute(
        &self,
        ctx: &async_graphql::extensions::ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: async_graphql::extensions::NextExecute<'_>,
    ) -> async_graphql::Response {
        let mut response = next.run(ctx, operation_name).await;
        let fields = std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()));
        order_root_fields(&mut response, &fields);
        response
    }
}

/// The root fields of the document's operation (its only one, or the first with a name: the
/// request's operation name is not seen here, and a document with several operations selects
/// one by name, which [`order_root_fields`] tolerates by keeping keys it does not know).
fn root_fields(
    doc: &async_graphql::parser::types::ExecutableDocument,
    env: &async_graphql::SchemaEnv,
) -> Vec<(String, bool)> {
    use async_graphql::parser::types::OperationType;
    let mut operations = doc.operations.iter();
    let Some((_, op)) = operations.next() else {
        return Vec::new();
    };
    if operations.next().is_some() {
        return Vec::new();
    }
    let registry = &env.registry;
    let root = match op.node.ty {
        OperationType::Query => registry.types.get(&registry.query_type),
        OperationType::Mutation => registry
            .mutation_type
            .as_ref()
            .and_then(|m| registry.types.get(m)),
        OperationType::Subscription => return Vec::new(),
    };
    let mut out: Vec<(String, bool)> = Vec::new();
    each_root_field(&op.node.selection_set.node, doc, 0, &mut |f| {
        let key = f.response_key().node.as_str();
        if !out.iter().any(|(k, _)| k == key) {
            let non_null = root
                .and_then(|t| t.field_by_name(&f.name.node))
                .is_some_and(|m| m.ty.ends_with('!'));
            out.push((key.to_owned(), non_null));
        }
    });
    out
}

/// Calls `visit` with every field a root selection set selects, in order, its fragment spreads
/// and inline fragments expanded (to a depth of 8).
fn each_root_field<'a>(
    set: &'a async_graphql::parser::types::SelectionSet,
    doc: &'a async_graphql::parser::types::ExecutableDocument,
    depth: usize,
    visit: &mut dyn FnMut(&'a async_graphql::parser::types::Field),
) {
    use async_graphql::parser::types::Selection;
    if depth > 8 {
        return;
    }
    for item in &set.items {
        match &item.node {
            Selection::Field(f) => visit(&f.node),
            Selection::InlineFragment(i) => {
                each_root_field(&i.node.selection_set.node, doc, depth + 1, visit)
            }
            Selection::FragmentSpread(s) => {
                if let Some(frag) = doc.fragments.get(&s.node.fragment_name.node) {
                    each_root_field(&frag.node.selection_set.node, doc, depth + 1, visit);
                }
            }
        }
    }
}

/// See [`RootFields`].
fn order_root_fields(response: &mut async_graphql::Response, fields: &[(String, bool)]) {
    use async_graphql::Value;
    if fields.is_empty() {
        return;
    }
    // A non-null root field that failed (its error's path starts at it) nulls `data`.
    let failed_non_null = fields.iter().any(|(key, non_null)| {
        *non_null
            && response.errors.iter().any(|e| {
                matches!(e.path.first(), Some(async_graphql::PathSegment::Field(f)) if f == key)
            })
            && !matches!(&response.data, Value::Object(map) if map.get(key.as_str()).is_some_and(|v| !matches!(v, Value::Null)))
    });
    if failed_non_null {
        response.data = Value::Null;
        return;
    }
    let Value::Object(map) = &mut response.data else {
        return;
    };
    let mut ordered = async_graphql::indexmap::IndexMap::with_capacity(map.len());
    for (key, _) in fields {
        if let Some((k, v)) = map.shift_remove_entry(key.as_str()) {
            ordered.insert(k, v);
        }
    }
    // Keys the walk did not know (none, unless directives or several operations are involved)
    // keep their place after the rest.
    ordered.extend(std::mem::take(map));
    *map = ordered;
}

/// Refuses a document that selects more fields, once its fragment spreads are expanded, than
/// the complexity limit allows (every field costs at least 1). A fragment that spreads another
/// twice doubles what it selects, so thirty fragments of a few bytes each select 2^30 fields:
/// async-graphql's validation and complexity walk every expanded field, and such a kilobyte
/// held both cores and gigabytes of memory for as long as it ran. This counts once per
/// fragment (memoised), before any of that.
struct Expansion {
    max: usize,
}

impl async_graphql::extensions::ExtensionFactory for Expansion {
    fn create(&self) -> std::sync::Arc<dyn async_graphql::extensions::Extension> {
        std::sync::Arc::new(Expansion { max: self.max })
    }
}

#[async_trait::async_trait]
impl async_graphql::extensions::Extension for Expansion {
    /// Parses the document here (async-graphql keeps it and does not parse again) and counts it
    /// before async-graphql's own checks: its recursion-depth check already walks every
    /// expanded field, right after parsing.
    async fn prepare_request(
        &self,
        ctx: &async_graphql::extensions::ExtensionContext<'_>,
        mut request: async_graphql::Request,
        next: async_graphql::extensions::NextPrepareRequest<'_>,
    ) -> async_graphql::ServerResult<async_graphql::Request> {
        let doc = request.parsed_query()?;
        // The spec's single root field rule: a subscription's responses each answer one field,
        // so a second root field would leave every response without one of them.
        if let Some(n) = subscription_root_fields(doc).filter(|&n| n != 1) {
            return Err(server_error(crate::error::Error::validation(
                "query",
                format!("a subscription selects exactly one root field, not {n}"),
            )));
        }
        let selected = expanded_fields(doc);
        if selected > self.max {
            return Err(server_error(crate::error::Error::validation(
                "query",
                format!(
                    "the document selects more than {} fields once its fragments are expanded",
                    self.max
                ),
            )));
        }
        next.run(ctx, request).await
    }
}

/// How many root fields (distinct response keys, fragments expanded, `__typename` included)
/// the most of any subscription in `doc` selects; `None` without a subscription.
fn subscription_root_fields(
    doc: &async_graphql::parser::types::ExecutableDocument,
) -> Option<usize> {
    use async_graphql::parser::types::OperationType;
    doc.operations
        .iter()
        .filter(|(_, op)| op.node.ty == OperationType::Subscription)
        .map(|(_, op)| {
            let mut keys: Vec<&str> = Vec::new();
            each_root_field(&op.node.selection_set.node, doc, 0, &mut |f| {
                let key = f.response_key().node.as_str();
                if !keys.contains(&key) {
                    keys.push(key);
                }
            });
            keys.len()
        })
        .max()
}

/// How many fields the largest operation of `doc` selects with every fragment spread expanded
/// (saturating). Each fragment is counted once; a spread of an unknown fragment, or one that
/// spreads itself, counts nothing (validation refuses both).
pub(crate) fn expanded_fields(doc: &async_graphql::parser::types::ExecutableDocument) -> usize {
    use std::collections::HashMap;

    use async_graphql::parser::types::{Selection, SelectionSet};

    fn count<'a>(
        set: &'a SelectionSet,
        doc: &'a async_graphql::parser::types::ExecutableDocument,
        memo: &mut HashMap<&'a str, usize>,
        visiting: &mut Vec<&'a str>,
    ) -> usize {
        let mut n = 0usize;
        for item in &set.items {
            let add = match &item.node {
                Selection::Field(f) => {
                    1usize.saturating_add(count(&f.node.selection_set.node, doc, memo, visiting))
                }
                Selection::InlineFragment(f) => {
                    count(&f.node.selection_set.node, doc, memo, visiting)
                }
                Selection::FragmentSpread(s) => {
                    let name = s.node.fragment_name.node.as_str();
                    if let Some(&known) = memo.get(name) {
                        known
                    } else if visiting.contains(&name) {
                        0
                    } else if let Some((key, fragment)) = doc.fragments.get_key_value(name) {
                        visiting.push(key.as_str());
                        let c = count(&fragment.node.selection_set.node, doc, memo, visiting);
                        visiting.pop();
                        memo.insert(key.as_str(), c);
                        c
                    } else {
                        0
                    }
                }
            };
            n = n.saturating_add(add);
        }
        n
    }
    let mut memo = HashMap::new();
    doc.operations
        .iter()
        .map(|(_, op)| count(&op.node.selection_set.node, doc, &mut memo, &mut Vec::new()))
        .max()
        .unwrap_or(0)
}

/// Refuses NUL in a request's variables (see [`crate::input`]; [`check_document`] refuses it in
/// the document): VALIDATION with `field` the variable's path.
struct TextInput;

impl async_graphql::extensions::ExtensionFactory for TextInput {
    fn create(&self) -> std::sync::Arc<dyn async_graphql::extensions::Extension> {
        std::sync::Arc::new(TextInput)
    }
}

#[async_trait::async_trait]
impl async_graphql::extensions::Extension for TextInput {
    async fn parse_query(
        &self,
        ctx: &async_graphql::extensions::ExtensionContext<'_>,
        query: &str,
        variables: &async_graphql::Variables,
        next: async_graphql::extensions::NextParseQuery<'_>,
    ) -> async_graphql::ServerResult<async_graphql::parser::types::ExecutableDocument> {
        // A walk that copies nothing; only a refusal turns the variables into JSON, to name the
        // field by the one path finder.
        let refused = variables
            .values()
            .any(holds_nul)
            .then(|| serde_json::to_value(variables).ok())
            .flatten()
            .and_then(|v| crate::input::nul_path(&v))
            .map(|at| crate::input::nul_in(format!("variables.{at}")));
        if let Some(e) = refused {
            return Err(server_error(e));
        }
        next.run(ctx, query, variables).await
    }
}

/// A refusal of the whole request, before it runs, with the error's code and field.
fn server_error(e: crate::error::Error) -> async_graphql::ServerError {
    let e = async_graphql::Error::from(e);
    let mut server = async_graphql::ServerError::new(e.message, None);
    server.extensions = e.extensions;
    server
}

/// Whether a GraphQL value holds NUL in a string or an object key.
fn holds_nul(v: &async_graphql::Value) -> bool {
    use async_graphql::Value as V;
    match v {
        V::String(s) => s.contains('\0'),
        V::List(items) => items.iter().any(holds_nul),
        V::Object(map) => map
            .iter()
            .any(|(k, v)| k.as_str().contains('\0') || holds_nul(v)),
        _ => false,
    }
}

/// Gives every error a code. The service's errors carry theirs ([`crate::error::Error`]); the
/// ones async-graphql raises itself (an unknown field, a wrong argument type, a query too deep or
/// too complex, a missing operation name, an input that does not coerce) are the caller's input,
/// so they become VALIDATION, with `field` the response path or `query` for the whole document.
struct ErrorCodes;

impl async_graphql::extensions::ExtensionFactory for ErrorCodes {
    fn create(&self) -> std::sync::Arc<dyn async_graphql::extensions::Extension> {
        std::sync::Arc::new(ErrorCodes)
    }
}

#[async_trait::async_trait]
impl async_graphql::extensions::Extension for ErrorCodes {
    async fn request(
        &self,
        ctx: &async_graphql::extensions::ExtensionContext<'_>,
        next: async_graphql::extensions::NextRequest<'_>,
    ) -> async_graphql::Response {
        let mut response = next.run(ctx).await;
        code_errors(&mut response.errors);
        response
    }

    fn subscribe<'s>(
        &self,
        ctx: &async_graphql::extensions::ExtensionContext<'_>,
        stream: futures::stream::BoxStream<'s, async_graphql::Response>,
        next: async_graphql::extensions::NextSubscribe<'_>,
    ) -> futures::stream::BoxStream<'s, async_graphql::Response> {
        use futures::StreamExt;
        next.run(ctx, stream)
            .map(|mut response| {
                code_errors(&mut response.errors);
                response
            })
            .boxed()
    }
}

fn code_errors(errors: &mut [async_graphql::ServerError]) {
    for e in errors {
        let ext = e.extensions.get_or_insert_with(Default::default);
        if ext.get("code").is_some() {
            continue;
        }
        let field = if e.path.is_empty() {
            "query".to_owned()
        } else {
            e.path
                .iter()
                .map(|p| match p {
                    async_graphql::PathSegment::Field(f) => f.clone(),
                    async_graphql::PathSegment::Index(i) => i.to_string(),
                })
                .collect::<Vec<_>>()
                .join(".")
        };
        ext.set("code", "VALIDATION");
        ext.set("field", field);
    }
}

/// The complexity of a paginated field: what one item selects, times the items a page may
/// hold, plus one. An alias repeats a field and its cost: a query that asks for 500 pages of
/// 100 items under 500 aliases costs what those 50,000 items cost, not 500 (an invalid
/// `first` costs the most a page holds; it is refused when the field runs).
pub(crate) fn page_cost(first: Option<i32>, child_complexity: usize) -> usize {
    let items = match first {
        None => crate::pagination::DEFAULT_PAGE,
        Some(n) => u64::try_from(n)
            .ok()
            .filter(|&n| (1..=crate::pagination::MAX_PAGE).contains(&n))
            .unwrap_or(crate::pagination::MAX_PAGE),
    };
    (items as usize)
        .saturating_mul(child_complexity)
        .saturating_add(1)
}

/// How deep brackets may nest in a GraphQL document: selection sets, argument lists, list and
/// object values together. async-graphql's parser recurses once per level, so a document of a
/// few kilobytes of `[[[[…` would overflow a worker thread's stack and abort the process
/// before any depth or complexity limit runs. Real documents stay far below this.
pub const MAX_NESTING: usize = 64;

/// Refuses a document that nests deeper than [`MAX_NESTING`] or holds NUL ([`crate::input`]: a
/// raw NUL, or the escape `\u0000` in a quoted string; a block string takes no escapes), by one
/// linear scan that skips strings, block strings and comments. Every transport runs it before
/// anything parses the document; [`TextInput`] checks the variables.
pub fn check_document(query: &str) -> crate::error::Result<()> {
    let bytes = query.as_bytes();
    if bytes.contains(&0) {
        return Err(crate::input::nul_in("query"));
    }
    let (mut depth, mut i) = (0usize, 0usize);
    while i < bytes.len() {
        match bytes[i] {
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' && bytes[i] != b'\r' {
                    i += 1;
                }
            }
            b'"' if bytes[i..].starts_with(b"\"\"\"") => {
                i += 3;
                while i < bytes.len() && !bytes[i..].starts_with(b"\"\"\"") {
                    // An escaped triple quote stays inside the block string.
                    i += if bytes[i..].starts_with(b"\\\"\"\"") {
                        4
                    } else {
                        1
                    };
                }
                i += 2;
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' && bytes[i + 1..].starts_with(b"u0000") {
                        return Err(crate::input::nul_in("query"));
                    }
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'{' | b'[' | b'(' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(crate::error::Error::validation(
                        "query",
                        format!("the document nests deeper than {MAX_NESTING} levels"),
                    ));
                }
            }
            b'}' | b']' | b')' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// The SDL committed as schema.graphql.
pub fn sdl() -> String {
    schema_builder().finish().sdl()
}

/// The app state and the caller of this request.
pub(crate) fn req<'a>(ctx: &'a Context<'_>) -> (&'a AppState, &'a RequestContext) {
    (
        ctx.data_unchecked::<AppState>(),
        ctx.data_unchecked::<RequestContext>(),
    )
}

/// An input field that may be absent, null or a value, as the service's patches take it:
/// `None` absent, `Some(None)` null.
pub(crate) fn maybe<T>(v: async_graphql::MaybeUndefined<T>) -> Option<Option<T>> {
    match v {
        async_graphql::MaybeUndefined::Undefined => None,
        async_graphql::MaybeUndefined::Null => Some(None),
        async_graphql::MaybeUndefined::Value(v) => Some(Some(v)),
    }
}

/// Parses a GraphQL `ID` holding a UUID.
pub(crate) fn parse_id(id: &async_graphql::ID, field: &str) -> crate::error::Result<uuid::Uuid> {
    uuid::Uuid::parse_str(id.as_str())
        .map_err(|_| crate::error::Error::validation(field, format!("{field} is not a valid id")))
}

/// A Relay connection with `totalCount` over one page of a service list.
pub(crate) fn connection<T, N: async_graphql::OutputType>(
    page: crate::pagination::Page<T>,
    has_previous_page: bool,
    cursor: impl Fn(&T) -> String,
    node: impl Fn(T) -> N,
) -> async_graphql::connection::Connection<String, N, audit::CountFields> {
    let mut conn = async_graphql::connection::Connection::with_additional_fields(
        has_previous_page,
        page.has_next_page,
        audit::CountFields {
            total_count: page.total_count,
        },
    );
    conn.edges.extend(
        page.items
            .into_iter()
            .map(|m| async_graphql::connection::Edge::new(cursor(&m), node(m))),
    );
    conn
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_are_counted_expanded_and_once_each() {
        let parse = |q: &str| async_graphql::parser::parse_query(q).unwrap();
        let doc =
            parse("query { a b { c ...F } ... on QueryRoot { d } } fragment F on B { e f { g } }");
        // a, b, c, d, and F's e, f, g.
        assert_eq!(expanded_fields(&doc), 7);
        // Each fragment spreads the one before twice: 2^n fields from a few bytes each.
        let bomb = |n: usize| {
            let mut q = format!("query {{ ...F{n} }} fragment F0 on QueryRoot {{ __typename }}");
            for i in 1..=n {
                q += &format!(
                    " fragment F{i} on QueryRoot {{ ...F{j} ...F{j} }}",
                    j = i - 1
                );
            }
            q
        };
        assert_eq!(expanded_fields(&parse(&bomb(10))), 1024);
        assert_eq!(expanded_fields(&parse(&bomb(200))), usize::MAX);
        // A fragment that spreads itself counts nothing more (validation refuses it).
        let cycle = parse("query { ...A } fragment A on Q { x ...B } fragment B on Q { ...A y }");
        assert_eq!(expanded_fields(&cycle), 2);
    }

    #[test]
    fn nesting_is_capped_outside_strings_and_comments() {
        let deep = |n: usize| format!("{{ __typename(x: {}{}) }}", "[".repeat(n), "]".repeat(n));
        assert!(check_document(&deep(MAX_NESTING - 2)).is_ok());
        assert!(check_document(&deep(MAX_NESTING)).is_err());
        assert!(check_document(&deep(100_000)).is_err());
        let fenced = "[".repeat(10_000);
        for ok in [
            format!("{{ a(s: \"{fenced}\") }}"),
            format!("{{ a(s: \"\"\"{fenced}\\\"\"\"{fenced}\"\"\") }}"),
            format!("# {fenced}\n{{ a }}"),
            "{ a(s: \"\\\"[[[\") }".to_owned(),
        ] {
            assert!(check_document(&ok).is_ok(), "{ok}");
        }
        // The parser agrees with what was let through.
        assert!(async_graphql::parser::parse_query(deep(MAX_NESTING - 2)).is_ok());
    }

    #[test]
    fn nul_is_found_as_the_parser_reads_strings() {
        for (doc, nul) in [
            (r#"{ a(x: "b\u0000") }"#, true),
            (r#"{ a(x: "b\\u0000") }"#, false),
            (r#"{ a(x: """\u0000""") }"#, false),
            ("{ a(x: \"b\0\") }", true),
            ("# \\u0000\n{ a }", false),
            (r#"{ a(x: "\"", y: "\u0000") }"#, true),
            (r#"{ a(x: "\u0041") }"#, false),
        ] {
            let refused = check_document(doc).is_err();
            assert_eq!(refused, nul, "{doc}");
            if let Ok(parsed) = async_graphql::parser::parse_query(doc) {
                // The scan agrees with the parser on every document that parses.
                let text = format!("{parsed:?}");
                assert_eq!(text.contains("\\0"), nul, "{doc}: {text}");
            }
        }
    }
}
