//! The gRPC edge: requests parsed into commands for the kit's executors (one per aggregate) and
//! queries over the projections. Every command that may make an instance's work due wakes this
//! replica's engine; other replicas find it on their next poll.

use std::sync::Arc;

use cim_aggregate::{CommandExecutor, CommandOptions};
use cim_core::AggregateId;
use cim_proto::workflow as pb;
use cim_proto::workflow::workflow_service_server::WorkflowService;
use cim_runtime::edge::{Caller, KeysetPage, handle, instant, json};
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use crate::definition::{DefinitionCommand, WorkflowDefinition};
use crate::engine::Engine;
use crate::error::ServiceError;
use crate::instance::{Tick, Workflow, WorkflowCommand as W, WorkflowStatus};
use crate::queries::{self, DEFAULT_PAGE, InstanceFilter, MAX_PAGE};
use crate::spec::Definition;

mod convert;

use convert::{history_event, id, new_id, person, respond, roles, workflow};

type Reply<T> = Result<Response<T>, Status>;

#[derive(Debug, Clone)]
pub struct WorkflowApi {
    definitions: CommandExecutor<WorkflowDefinition>,
    workflows: CommandExecutor<Workflow>,
    pool: PgPool,
    engine: Arc<Engine>,
}

impl WorkflowApi {
    pub fn new(
        definitions: CommandExecutor<WorkflowDefinition>,
        workflows: CommandExecutor<Workflow>,
        engine: Arc<Engine>,
    ) -> Self {
        let pool = workflows.store().pool().clone();
        Self { definitions, workflows, pool, engine }
    }

    async fn define(
        &self,
        caller: &Caller,
        id: AggregateId,
        document: Option<prost_types::Struct>,
        revise: bool,
        o: Option<cim_proto::common::CommandOptions>,
    ) -> Result<pb::CommandResponse, ServiceError> {
        if document.is_none() {
            return Err(ServiceError::invalid("definition", "required"));
        }
        let definition = Definition::parse(&json("definition", document)?)?;
        let content_id = definition.content_id();
        let command =
            if revise { DefinitionCommand::Revise(definition) } else { DefinitionCommand::Create(definition) };
        let done = self.definitions.execute(caller, id, &command, &CommandOptions::from(o)).await?;
        Ok(respond(done, content_id))
    }

    async fn instance(
        &self,
        caller: &Caller,
        id: AggregateId,
        command: W,
        o: Option<cim_proto::common::CommandOptions>,
    ) -> Result<pb::CommandResponse, ServiceError> {
        let done = self.workflows.execute(caller, id, &command, &CommandOptions::from(o)).await?;
        self.engine.wake();
        Ok(respond(done, String::new()))
    }
}

fn instance_id(s: &str) -> Result<AggregateId, ServiceError> {
    id("instance_id", s)
}

fn definition_id(s: &str) -> Result<AggregateId, ServiceError> {
    id("definition_id", s)
}

#[tonic::async_trait]
impl WorkflowService for WorkflowApi {
    async fn create_definition(&self, req: Request<pb::CreateDefinitionRequest>) -> Reply<pb::CommandResponse> {
        handle(req, |caller, r| async move {
            let id = new_id("definition_id", &r.definition_id)?;
            self.define(&caller, id, r.definition, false, r.options).await
        })
        .await
    }

    async fn revise_definition(&self, req: Request<pb::ReviseDefinitionRequest>) -> Reply<pb::CommandResponse> {
        handle(req, |caller, r| async move {
            let id = definition_id(&r.definition_id)?;
            self.define(&caller, id, r.definition, true, r.options).await
        })
        .await
    }

    async fn get_definition(&self, req: Request<pb::GetDefinitionRequest>) -> Reply<pb::Definition> {
        handle(req, |caller, r| async move {
            let id = definition_id(&r.definition_id)?;
            let content_id = Some(r.content_id.as_str()).filter(|c| !c.is_empty());
            queries::get_definition(&self.pool, caller.tenant, id, content_id).await
        })
        .await
    }

    async fn list_definitions(&self, req: Request<pb::ListDefinitionsRequest>) -> Reply<pb::ListDefinitionsResponse> {
        handle(req, |caller, r| async move {
            let page = KeysetPage::parse(r.page, DEFAULT_PAGE, MAX_PAGE)?;
            let (definitions, page) = queries::list_definitions(&self.pool, caller.tenant, page).await?;
            Ok::<_, ServiceError>(pb::ListDefinitionsResponse { definitions, page: Some(page) })
        })
        .await
    }

    async fn start_workflow(&self, req: Request<pb::StartWorkflowRequest>) -> Reply<pb::CommandResponse> {
        handle(req, |caller, r| async move {
            let id = new_id("instance_id", &r.instance_id)?;
            let definition_id = definition_id(&r.definition_id)?;
            let pinned = Some(r.content_id.as_str()).filter(|c| !c.is_empty());
            let (content_id, definition) =
                queries::definition_version(&self.pool, caller.tenant, definition_id, pinned).await?;
            let context = json("context", r.context)?;
            let command = W::Create { definition_id, content_id, definition, context, start: Some(Tick::now(id)) };
            self.instance(&caller, id, command, r.options).await
        })
        .await
    }

    async fn pause_workflow(&self, req: Request<pb::WorkflowCommand>) -> Reply<pb::CommandResponse> {
        handle(req, |caller, r| async move {
            self.instance(&caller, instance_id(&r.instance_id)?, W::Pause { reason: r.reason }, r.options).await
        })
        .await
    }

    async fn resume_workflow(&self, req: Request<pb::WorkflowCommand>) -> Reply<pb::CommandResponse> {
        handle(req, |caller, r| async move {
            self.instance(&caller, instance_id(&r.instance_id)?, W::Resume, r.options).await
        })
        .await
    }

    async fn cancel_workflow(&self, req: Request<pb::WorkflowCommand>) -> Reply<pb::CommandResponse> {
        handle(req, |caller, r| async move {
            self.instance(&caller, instance_id(&r.instance_id)?, W::Cancel { reason: r.reason }, r.options).await
        })
        .await
    }

    async fn set_context_variable(&self, req: Request<pb::SetContextVariableRequest>) -> Reply<pb::CommandResponse> {
        handle(req, |caller, r| async move {
            let id = instance_id(&r.instance_id)?;
            let value = r.value.ok_or_else(|| ServiceError::invalid("value", "required"))?;
            let value =
                cim_proto::json::value_to_json(value).map_err(|e| ServiceError::invalid("value", e.to_string()))?;
            self.instance(&caller, id, W::SetVariable { key: r.key, value }, r.options).await
        })
        .await
    }

    async fn send_signal(&self, req: Request<pb::SendSignalRequest>) -> Reply<pb::CommandResponse> {
        handle(req, |caller, r| async move {
            let id = instance_id(&r.instance_id)?;
            let payload = json("payload", r.payload)?;
            self.instance(&caller, id, W::Signal { name: r.name, payload }, r.options).await
        })
        .await
    }

    async fn assign_task(&self, req: Request<pb::AssignTaskRequest>) -> Reply<pb::CommandResponse> {
        handle(req, |caller, r| async move {
            let id = instance_id(&r.instance_id)?;
            self.instance(&caller, id, W::AssignTask { step: r.step_id, assignee: r.assignee }, r.options).await
        })
        .await
    }

    async fn complete_step(&self, req: Request<pb::CompleteStepRequest>) -> Reply<pb::CommandResponse> {
        let held = roles(req.metadata());
        handle(req, |caller, r| async move {
            let id = instance_id(&r.instance_id)?;
            let output = json("output", r.output)?;
            let by = person(&caller.actor, held);
            self.instance(&caller, id, W::CompleteStep { step: r.step_id, by, output }, r.options).await
        })
        .await
    }

    async fn approve_step(&self, req: Request<pb::ApprovalDecision>) -> Reply<pb::CommandResponse> {
        let held = roles(req.metadata());
        handle(req, |caller, r| async move {
            let id = instance_id(&r.instance_id)?;
            let by = person(&caller.actor, held);
            self.instance(&caller, id, W::Approve { step: r.step_id, by, comment: r.comment }, r.options).await
        })
        .await
    }

    async fn reject_step(&self, req: Request<pb::ApprovalDecision>) -> Reply<pb::CommandResponse> {
        let held = roles(req.metadata());
        handle(req, |caller, r| async move {
            let id = instance_id(&r.instance_id)?;
            let by = person(&caller.actor, held);
            self.instance(&caller, id, W::Reject { step: r.step_id, by, comment: r.comment }, r.options).await
        })
        .await
    }

    async fn get_workflow(&self, req: Request<pb::GetWorkflowRequest>) -> Reply<pb::Workflow> {
        handle(req, |caller, r| async move {
            let id = instance_id(&r.instance_id)?;
            let summary = queries::workflow_summary(&self.pool, caller.tenant, id).await?;
            let (state, version) = self.workflows.load(caller.tenant, id).await?;
            // The row may trail the replay by a commit: the replayed version is the truth.
            Ok::<_, ServiceError>(workflow(&state, pb::WorkflowSummary { version, ..summary }))
        })
        .await
    }

    async fn list_workflows(&self, req: Request<pb::ListWorkflowsRequest>) -> Reply<pb::ListWorkflowsResponse> {
        handle(req, |caller, r| async move {
            let page = KeysetPage::parse(r.page, DEFAULT_PAGE, MAX_PAGE)?;
            let status = match r.status.as_str() {
                "" => None,
                s => Some(WorkflowStatus::parse(s).ok_or_else(|| {
                    ServiceError::invalid("status", "one of draft, running, completed, failed, paused, cancelled")
                })?),
            };
            let definition = Some(r.definition_id.as_str()).filter(|d| !d.is_empty()).map(definition_id).transpose()?;
            let correlation = match r.correlation_id.as_str() {
                "" => None,
                c => {
                    Some(uuid::Uuid::try_parse(c).map_err(|e| ServiceError::invalid("correlation_id", e.to_string()))?)
                }
            };
            let filter = InstanceFilter {
                status,
                definition,
                correlation,
                created_after: instant("created_after", r.created_after)?,
                created_before: instant("created_before", r.created_before)?,
            };
            let (workflows, page) = queries::list_workflows(&self.pool, caller.tenant, &filter, page).await?;
            Ok::<_, ServiceError>(pb::ListWorkflowsResponse { workflows, page: Some(page) })
        })
        .await
    }

    async fn get_workflow_history(&self, req: Request<pb::GetWorkflowHistoryRequest>) -> Reply<pb::WorkflowHistory> {
        handle(req, |caller, r| async move {
            let id = instance_id(&r.instance_id)?;
            let history = self.workflows.store().history_of(caller.tenant, id, crate::instance::AGGREGATE_TYPE).await?;
            if history.is_empty() {
                return Err(ServiceError::not_found(format!("workflow {id} not found")));
            }
            let events = history.iter().map(history_event).collect();
            Ok(pb::WorkflowHistory { instance_id: id.to_string(), events })
        })
        .await
    }

    async fn get_workflow_at_version(&self, req: Request<pb::GetWorkflowAtVersionRequest>) -> Reply<pb::Workflow> {
        handle(req, |caller, r| async move {
            let id = instance_id(&r.instance_id)?;
            let summary = queries::workflow_summary(&self.pool, caller.tenant, id).await?;
            let as_of = self.workflows.at_version(caller.tenant, id, r.version).await?;
            let summary = pb::WorkflowSummary {
                version: as_of.version,
                created_at: Some(cim_runtime::edge::timestamp(as_of.created_at)),
                updated_at: Some(cim_runtime::edge::timestamp(as_of.updated_at)),
                ..summary
            };
            Ok::<_, ServiceError>(workflow(&as_of.state, summary))
        })
        .await
    }
}
