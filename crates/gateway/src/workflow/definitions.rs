//! Workflow definitions: JSON documents, validated by the service and versioned by content id.

use super::*;

/// Create a workflow definition
///
/// Validates the definition (a step kind it does not know, a dependency cycle, an expression that does not parse are refused naming the field) and stores it as its first version, named by its content id.
#[utoipa::path(post, path = "/api/v1/workflow-definitions", tag = "workflow definitions", request_body = NewDefinition,
    params(CommandQuery), responses((status = 201, body = WorkflowCommandResult)))]
pub async fn create_definition(
    State(state): State<Arc<WorkflowState>>,
    Extension(p): Extension<Principal>,
    Options(options): Options,
    ApiJson(body): ApiJson<NewDefinition>,
) -> ApiResult<impl IntoResponse> {
    let msg = pb::CreateDefinitionRequest {
        definition_id: body.definition_id.unwrap_or_default(),
        definition: structure(&body.definition),
        options,
    };
    Ok((StatusCode::CREATED, done(command!(state.upstream, p, create_definition, msg))))
}

/// Revise a workflow definition
///
/// A new version of the definition, validated like the first. Running instances keep the version they started with.
#[utoipa::path(put, path = "/api/v1/workflow-definitions/{definition_id}", tag = "workflow definitions",
    request_body = Revision, params(("definition_id" = String, Path), CommandQuery),
    responses((status = 200, body = WorkflowCommandResult)))]
pub async fn revise_definition(
    State(state): State<Arc<WorkflowState>>,
    Extension(p): Extension<Principal>,
    ApiPath(definition_id): ApiPath<String>,
    Options(options): Options,
    ApiJson(body): ApiJson<Revision>,
) -> ApiResult<Json<WorkflowCommandResult>> {
    let msg = pb::ReviseDefinitionRequest { definition_id, definition: structure(&body.definition), options };
    Ok(done(command!(state.upstream, p, revise_definition, msg)))
}

/// Get a workflow definition
///
/// The current version, or the one `content_id` names, with the list of every version.
#[utoipa::path(get, path = "/api/v1/workflow-definitions/{definition_id}", tag = "workflow definitions",
    params(("definition_id" = String, Path), DefinitionQuery), responses((status = 200, body = Definition)))]
pub async fn get_definition(
    State(state): State<Arc<WorkflowState>>,
    Extension(p): Extension<Principal>,
    ApiPath(definition_id): ApiPath<String>,
    ApiQuery(q): ApiQuery<DefinitionQuery>,
) -> ApiResult<Json<Definition>> {
    let msg = pb::GetDefinitionRequest { definition_id, content_id: q.content_id.unwrap_or_default() };
    Ok(Json(definition(query!(state.upstream, p, get_definition, msg))))
}

/// List workflow definitions
///
/// The tenant's definitions, a page at a time.
#[utoipa::path(get, path = "/api/v1/workflow-definitions", tag = "workflow definitions", params(crate::rest::PageQuery),
    responses((status = 200, body = Page<Definition>)))]
pub async fn list_definitions(
    State(state): State<Arc<WorkflowState>>,
    Extension(p): Extension<Principal>,
    ApiQuery(q): ApiQuery<crate::rest::PageQuery>,
) -> ApiResult<Json<Page<Definition>>> {
    let msg = pb::ListDefinitionsRequest { page: page(q.page_size, q.page_token) };
    let r = query!(state.upstream, p, list_definitions, msg);
    Ok(Page::of(r.definitions, definition, r.page))
}
