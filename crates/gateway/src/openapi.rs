//! The OpenAPI 3.1 document's shared parts: what every operation has in common (its
//! credentials, its problem+json answer to bad requests). The paths come from the domains' route
//! tables (`crate::routes`); the app puts the two together (`app::openapi`).

use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, ResponseBuilder};
use utoipa::{OpenApi as _, PartialSchema, ToSchema};

use crate::problem::Problem;

/// The two ways to present credentials.
struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build()),
        );
        components
            .add_security_scheme("api_key", SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("x-api-key"))));
    }
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "CIM API", description = "REST/JSON over CIM's domain services. Errors are application/problem+json."),
    modifiers(&Security),
    security(("bearer" = []), ("api_key" = [])),
)]
struct Shared;

/// The whole document: the shared parts, `paths`, and on every operation the problem+json answer
/// every route gives a bad request (one place instead of one line per handler).
pub fn describe(paths: OpenApi) -> OpenApi {
    let mut doc = Shared::openapi();
    doc.merge(paths);
    let problem = ResponseBuilder::new()
        .description("The request was refused: a problem document (RFC 9457) with a stable `code`.")
        .content(
            "application/problem+json",
            ContentBuilder::new().schema(Some(Ref::from_schema_name(Problem::name()))).build(),
        )
        .build();
    for item in doc.paths.paths.values_mut() {
        let operations: [&mut Option<Operation>; 5] =
            [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch];
        for operation in operations.into_iter().flatten() {
            operation.responses.responses.entry("4XX".into()).or_insert_with(|| problem.clone().into());
        }
    }
    doc.components.get_or_insert_with(Default::default).schemas.insert(Problem::name().into_owned(), Problem::schema());
    doc
}
