//! The OpenAPI document, generated from the handlers' annotations, and the
//! Swagger UI that renders it (assets compiled into the binary: no CDN).

use axum::Router;
use utoipa::openapi::path::{Operation, Parameter, ParameterBuilder, ParameterIn, PathItem};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, KnownFormat, ObjectBuilder, Ref, RefOr, Required, ResponseBuilder,
    SchemaFormat, Type,
};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

use crate::dto::ErrorBody;
use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Booking Ledger",
        description = "The system of record for who holds which nights of which property."
    ),
    components(schemas(ErrorBody))
)]
pub struct ApiDoc;

/// The router of the documented routes and their finished document: the
/// paths come from the handlers (`crate::api_routes`), then the modifiers
/// below complete what every operation shares.
pub fn split(routes: OpenApiRouter<AppState>) -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (router, mut document) = routes.split_for_parts();
    let modifiers: [&dyn Modify; 4] = [&BearerAuth, &HealthAliases, &PathParameters, &TokenRoutes];
    for modifier in modifiers {
        modifier.modify(&mut document);
    }
    (router, document)
}

/// `/healthz` and `/readyz` answer exactly as `/health` and `/health/ready`:
/// the same operations under a second path, each with its own operationId.
struct HealthAliases;

impl Modify for HealthAliases {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, alias) in [("/health", "/healthz"), ("/health/ready", "/readyz")] {
            let Some(mut item) = openapi.paths.get_path_item(path).cloned() else {
                continue;
            };
            if let Some(get) = item.get.as_mut() {
                get.operation_id = get.operation_id.as_ref().map(|id| format!("{id}_z"));
            }
            openapi.paths.paths.insert(alias.to_owned(), item);
        }
    }
}

/// Declares every `{name}` of a path template on each of its operations that
/// does not declare it yet: a valid OpenAPI document needs them, and
/// generated clients and fuzzers need to know ids are UUIDs.
struct PathParameters;

impl Modify for PathParameters {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let names: Vec<String> = path
                .split('{')
                .skip(1)
                .filter_map(|rest| rest.split_once('}').map(|(name, _)| name.to_owned()))
                .collect();
            for operation in operations(item) {
                let parameters = operation.parameters.get_or_insert_with(Vec::new);
                for name in &names {
                    let declared = parameters.iter().any(|p| {
                        matches!(p, RefOr::T(p) if p.name == *name && p.parameter_in == ParameterIn::Path)
                    });
                    if !declared {
                        parameters.push(RefOr::T(path_parameter(name)));
                    }
                }
            }
        }
    }
}

/// The routes under `/api/` and `/ops/` take a bearer token and refuse with
/// the error body: declared here once for all of them rather than on each
/// handler. The health probes, the `.ics` feeds (their secret is in the
/// query) and this document take no token. A handler that documents its
/// refusals itself keeps its own `4XX`.
struct TokenRoutes;

impl Modify for TokenRoutes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !(path.starts_with("/api/") || path.starts_with("/ops/")) {
                continue;
            }
            for operation in operations(item) {
                operation
                    .responses
                    .responses
                    .entry("4XX".to_owned())
                    .or_insert_with(|| {
                        ResponseBuilder::new()
                            .description("refused: see the error code")
                            .content(
                                "application/json",
                                ContentBuilder::new()
                                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                                    .build(),
                            )
                            .build()
                            .into()
                    });
                operation
                    .security
                    .get_or_insert_with(Vec::new)
                    .push(SecurityRequirement::new("bearer", Vec::<String>::new()));
            }
        }
    }
}

/// The operations of a path, whatever their method.
fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.patch,
    ]
    .into_iter()
    .flatten()
}

/// `id`-like names are UUIDs; any other (a projection's name, a file) a string.
fn path_parameter(name: &str) -> Parameter {
    let format = (name == "id" || name.ends_with("_id")).then_some(KnownFormat::Uuid);
    parameter(
        name,
        ParameterIn::Path,
        Required::True,
        Type::String,
        format,
    )
}

/// An optional query parameter: how the extractors that read one
/// (`Paging`, `MinPosition`) document it.
pub fn query_parameter(name: &str, schema_type: Type, format: Option<KnownFormat>) -> Parameter {
    parameter(
        name,
        ParameterIn::Query,
        Required::False,
        schema_type,
        format,
    )
}

fn parameter(
    name: &str, parameter_in: ParameterIn, required: Required, schema_type: Type,
    format: Option<KnownFormat>,
) -> Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(parameter_in)
        .required(required)
        .schema(Some(
            ObjectBuilder::new()
                .schema_type(schema_type)
                .format(format.map(SchemaFormat::KnownFormat)),
        ))
        .build()
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

pub fn routes(document: utoipa::openapi::OpenApi) -> Router<AppState> {
    Router::from(SwaggerUi::new("/docs").url("/openapi.json", document))
}
