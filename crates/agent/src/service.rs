//! The gRPC edge: requests parsed into commands for the kit's executors (one per aggregate),
//! queries over the projections, the routing dry run, and the two streams the dispatcher serves
//! (`ConnectAgent`, `SendMessage`).

use std::sync::Arc;

use cim_aggregate::CommandExecutor;
use cim_core::AggregateId;
use cim_proto::agent as pb;
use cim_proto::agent::agent_service_server::AgentService;
use cim_runtime::edge::{Caller, KeysetPage, handle, instant, json};
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use crate::agent::{Agent, AgentCommand as A, AgentState, AgentType, ModelConfiguration};
use crate::dispatch::{DispatchStream, Dispatcher, ResponseStream};
use crate::error::ServiceError;
use crate::metrics::{ROUTE_DECISIONS_TOTAL, UNKNOWN_CAPABILITIES_TOTAL};
use crate::names::{Names, PATTERN, strings};
use crate::task::{Submission, Task, TaskCommand as T, TaskState};
use crate::{queries, routing};

mod convert;

use convert::{agent_as_of, id, names, new_id, respond};

type Reply<T> = Result<Response<T>, Status>;

#[derive(Debug, Clone)]
pub struct AgentApi {
    agents: CommandExecutor<Agent>,
    tasks: CommandExecutor<Task>,
    pool: PgPool,
    dispatcher: Arc<Dispatcher>,
}

impl AgentApi {
    pub fn new(agents: CommandExecutor<Agent>, tasks: CommandExecutor<Task>, dispatcher: Arc<Dispatcher>) -> Self {
        let pool = agents.store().pool().clone();
        Self { agents, tasks, pool, dispatcher }
    }

    async fn agent(
        &self,
        caller: &Caller,
        id: AggregateId,
        command: A,
        o: Option<cim_proto::common::CommandOptions>,
    ) -> Result<pb::CommandResponse, ServiceError> {
        let done = self.agents.execute(caller, id, &command, &cim_aggregate::CommandOptions::from(o)).await;
        if done.is_ok() {
            // Its state, capabilities or limit may have changed: the dispatcher reads it again.
            self.dispatcher.agent_changed(caller.tenant, id);
        }
        Ok(respond(done?))
    }

    /// A task's requirements, each declared by some agent of the tenant: a name nobody declares
    /// is most likely a typo, which would otherwise wait unassigned until the deadline.
    async fn requirements(&self, caller: &Caller, field: &str, raw: &[String]) -> Result<Names, ServiceError> {
        let required = names(field, raw)?;
        self.known(caller, field, raw, &required).await?;
        Ok(required)
    }

    /// Fails unless some agent of the tenant declares each of `required` (parsed from `raw`).
    async fn known(&self, caller: &Caller, field: &str, raw: &[String], required: &Names) -> Result<(), ServiceError> {
        let unknown = queries::unknown_capabilities(&self.pool, caller.tenant, &strings(required)).await?;
        if let Some(first) = unknown.first() {
            metrics::counter!(UNKNOWN_CAPABILITIES_TOTAL).increment(1);
            let at = raw.iter().position(|r| r == first).unwrap_or_default();
            return Err(ServiceError::invalid(
                format!("{field}[{at}]"),
                format!("unknown capability {first:?}: no agent of this tenant declares it"),
            ));
        }
        Ok(())
    }
}

fn agent_id(s: &str) -> Result<AggregateId, ServiceError> {
    id("agent_id", s)
}

fn task_id(s: &str) -> Result<AggregateId, ServiceError> {
    id("task_id", s)
}

fn one_of(field: &str, names: &[&str]) -> ServiceError {
    ServiceError::invalid(field, format!("one of {}", names.join(", ")))
}

#[tonic::async_trait]
impl AgentService for AgentApi {
    async fn deploy_agent(&self, req: Request<pb::DeployAgentRequest>) -> Reply<pb::CommandResponse> {
        handle(req, |caller, r| async move {
            let id = new_id("agent_id", &r.agent_id)?;
            let agent_type = AgentType::parse(&r.agent_type).ok_or_else(|| one_of("agent_type", AgentType::NAMES))?;
            // Whoever deploys an agent answers for it unless they name someone else.
            let owner = if r.owner.is_empty() { caller.actor.to_string() } else { r.owner };
            let max_concurrent_tasks = r.max_concurrent_tasks.max(1);
            let command = A::Deploy { owner, name: r.name, agent_type, max_concurrent_tasks };
            self.agent(&caller, id, command, r.options).await
        })
        .await
    }

    async fn assign_model_configuration(
        &self,
        req: Request<pb::AssignModelConfigurationRequest>,
    ) -> Reply<pb::CommandResponse> {
        handle(req, |caller, r| async move {
            let id = agent_id(&r.agent_id)?;
            let model = r.model.ok_or_else(|| ServiceError::invalid("model", "required"))?;
            let provider = model
                .provider
                .parse()
                .map_err(|_| ServiceError::invalid("model.provider", format!("expected {PATTERN}")))?;
            let parameters = json("model.parameters", model.parameters)?;
            let model = ModelConfiguration { provider, model: model.model, parameters };
            self.agent(&caller, id, A::AssignModel(model), r.options).await
        })
        .await
    }

    async fn configure_system_prompt(
        &self,
        req: Request<pb::ConfigureSystemPromptRequest>,
    ) -> Reply<pb::CommandResponse> {
        handle(req, |caller, r| async move {
            let id = agent_id(&r.agent_id)?;
            self.agent(&caller, id, A::ConfigurePrompt(r.system_prompt), r.options).await
        })
        .await
    }

    async fn update_capabilities(&self, req: Request<pb::UpdateCapabilitiesRequest>) -> Reply<pb::CommandResponse> {
        handle(req, |caller, r| async move {
            let id = agent_id(&r.agent_id)?;
            let capabilities = names("capabilities", &r.capabilities)?;
            self.agent(&caller, id, A::UpdateCapabilities(capabilities), r.options).await
        })
        .await
    }

    async fn grant_permissions(&self, req: Request<pb::NamesRequest>) -> Reply<pb::CommandResponse> {
        handle(req, |caller, r| async move {
            let id = agent_id(&r.agent_id)?;
            self.agent(&caller, id, A::GrantPermissions(names("names", &r.names)?), r.options).await
        })
        .await
    }

    async fn revoke_permissions(&self, req: Request<pb::NamesRequest>) -> Reply<pb::CommandResponse> {
        handle(req, |caller, r| async move {
            let id = agent_id(&r.agent_id)?;
            self.agent(&caller, id, A::RevokePermissions(names("names", &r.names)?), r.options).await
        })
        .await
    }

    async fn enable_tools(&self, req: Request<pb::NamesRequest>) -> Reply<pb::CommandResponse> {
        handle(req, |caller, r| async move {
            let id = agent_id(&r.agent_id)?;
            self.agent(&caller, id, A::EnableTools(names("names", &r.names)?), r.options).await
        })
        .await
    }

    async fn disable_tools(&self, req: Request<pb::NamesRequest>) -> Reply<pb::CommandResponse> {
        handle(req, |caller, r| async move {
            let id = agent_id(&r.agent_id)?;
            self.agent(&caller, id, A::DisableTools(names("names", &r.names)?), r.options).await
        })
        .await
    }

    async fn set_concurrency_limit(&self, req: Request<pb::SetConcurrencyLimitRequest>) -> Reply<pb::CommandResponse> {
        handle(req, |caller, r| async move {
            let id = agent_id(&r.agent_id)?;
            self.agent(&caller, id, A::SetConcurrencyLimit(r.max_concurrent_tasks), r.options).await
        })
        .await
    }

    async fn activate_agent(&self, req: Request<pb::AgentCommand>) -> Reply<pb::CommandResponse> {
        handle(req, |caller, r| async move {
            let id = agent_id(&r.agent_id)?;
            self.agent(&caller, id, A::Activate, r.options).await
        })
        .await
    }

    async fn suspend_agent(&self, req: Request<pb::AgentCommand>) -> Reply<pb::CommandResponse> {
        handle(req, |caller, r| async move {
            let id = agent_id(&r.agent_id)?;
            self.agent(&caller, id, A::Suspend { reason: r.reason }, r.options).await
        })
        .await
    }

    async fn mark_agent_offline(&self, req: Request<pb::AgentCommand>) -> Reply<pb::CommandResponse> {
        handle(req, |caller, r| async move {
            let id = agent_id(&r.agent_id)?;
            self.agent(&caller, id, A::GoOffline { reason: r.reason }, r.options).await
        })
        .await
    }

    async fn decommission_agent(&self, req: Request<pb::AgentCommand>) -> Reply<pb::CommandResponse> {
        handle(req, |caller, r| async move {
            let id = agent_id(&r.agent_id)?;
            self.agent(&caller, id, A::Decommission { reason: r.reason }, r.options).await
        })
        .await
    }

    async fn get_agent(&self, req: Request<pb::GetAgentRequest>) -> Reply<pb::Agent> {
        handle(
            req,
            |caller, r| async move { queries::get_agent(&self.pool, caller.tenant, agent_id(&r.agent_id)?).await },
        )
        .await
    }

    async fn list_agents(&self, req: Request<pb::ListAgentsRequest>) -> Reply<pb::ListAgentsResponse> {
        handle(req, |caller, r| async move {
            let page = KeysetPage::parse(r.page, queries::DEFAULT_PAGE, queries::MAX_PAGE)?;
            let state = match r.state.as_str() {
                "" => None,
                s => Some(AgentState::parse(s).ok_or_else(|| one_of("state", AgentState::NAMES))?),
            };
            let capabilities = strings(&names("capabilities", &r.capabilities)?);
            let (agents, next) = queries::list_agents(&self.pool, caller.tenant, state, &capabilities, page).await?;
            Ok::<_, ServiceError>(pb::ListAgentsResponse { agents, page: Some(next) })
        })
        .await
    }

    async fn get_agent_at_version(&self, req: Request<pb::GetAgentAtVersionRequest>) -> Reply<pb::Agent> {
        handle(req, |caller, r| async move {
            let id = agent_id(&r.agent_id)?;
            Ok::<_, ServiceError>(agent_as_of(id, &self.agents.at_version(caller.tenant, id, r.version).await?))
        })
        .await
    }

    async fn submit_task(&self, req: Request<pb::SubmitTaskRequest>) -> Reply<pb::CommandResponse> {
        handle(req, |caller, r| async move {
            let id = new_id("task_id", &r.task_id)?;
            let submission = Submission {
                required_capabilities: names("required_capabilities", &r.required_capabilities)?,
                payload: json("payload", r.payload)?,
                priority: r.priority,
                deadline: instant("deadline", r.deadline)?,
                correlation: r.correlation,
            };
            let now = chrono::Utc::now();
            let options = cim_aggregate::CommandOptions::from(r.options);
            // A retry with a key gets the first answer, whatever that assigned: such a submission
            // is never assigned as it is written.
            let claim = match &options.idempotency_key {
                None => self.dispatcher.claim(caller.tenant, id, &submission, now),
                Some(_) => None,
            };
            // An agent that can take it declares what it requires; otherwise a name nobody
            // declares is refused before anything is written.
            if claim.is_none() {
                let required = &submission.required_capabilities;
                self.known(&caller, "required_capabilities", &r.required_capabilities, required).await?;
            }
            let command = match claim {
                Some(c) => T::SubmitAndAssign {
                    submission: submission.clone(),
                    now,
                    agent: c.agent,
                    lease_until: c.lease_until,
                },
                None => T::Submit { submission: submission.clone(), now },
            };
            let done = self.tasks.execute(&caller, id, &command, &options).await;
            let committed = done.as_ref().is_ok_and(|d| !d.replayed);
            // Other replicas hear of it through the domain stream.
            self.dispatcher.after_submit(caller.tenant, id, &submission, now, claim, committed);
            Ok::<_, ServiceError>(respond(done?))
        })
        .await
    }

    async fn cancel_task(&self, req: Request<pb::CancelTaskRequest>) -> Reply<pb::CommandResponse> {
        handle(req, |caller, r| async move {
            let id = task_id(&r.task_id)?;
            let options = cim_aggregate::CommandOptions::from(r.options);
            let done = self.tasks.execute(&caller, id, &T::Cancel { reason: r.reason }, &options).await?;
            self.dispatcher.cancelled(caller.tenant, id, &done);
            Ok::<_, ServiceError>(respond(done))
        })
        .await
    }

    async fn get_task(&self, req: Request<pb::GetTaskRequest>) -> Reply<pb::Task> {
        handle(req, |caller, r| async move { queries::get_task(&self.pool, caller.tenant, task_id(&r.task_id)?).await })
            .await
    }

    async fn list_tasks(&self, req: Request<pb::ListTasksRequest>) -> Reply<pb::ListTasksResponse> {
        handle(req, |caller, r| async move {
            let page = KeysetPage::parse(r.page, queries::DEFAULT_PAGE, queries::MAX_PAGE)?;
            let state = match r.state.as_str() {
                "" => None,
                s => Some(TaskState::parse(s).ok_or_else(|| one_of("state", TaskState::NAMES))?.as_str()),
            };
            let (tasks, next) = queries::list_tasks(&self.pool, caller.tenant, state, page).await?;
            Ok::<_, ServiceError>(pb::ListTasksResponse { tasks, page: Some(next) })
        })
        .await
    }

    type ConnectAgentStream = DispatchStream;

    async fn connect_agent(&self, req: Request<tonic::Streaming<pb::WorkerMessage>>) -> Reply<DispatchStream> {
        self.dispatcher.connect(req).await
    }

    type SendMessageStream = ResponseStream;

    async fn send_message(&self, req: Request<pb::SendMessageRequest>) -> Reply<ResponseStream> {
        self.dispatcher.send_message(req).await
    }

    async fn route_task(&self, req: Request<pb::RouteTaskRequest>) -> Reply<pb::RouteTaskResponse> {
        handle(req, |caller, r| async move {
            let required = self.requirements(&caller, "required_capabilities", &r.required_capabilities).await?;
            let candidates = queries::covering_agents(&self.pool, caller.tenant, &strings(&required)).await?;
            let covering_agents = candidates.len() as u32;
            let chosen = routing::route(&required, &candidates);
            let outcome = if chosen.is_some() { "routed" } else { "no_agent" };
            metrics::counter!(ROUTE_DECISIONS_TOTAL, "outcome" => outcome).increment(1);
            Ok::<_, ServiceError>(match chosen {
                Some(c) => pb::RouteTaskResponse {
                    agent_id: c.agent.to_string(),
                    extra_capabilities: (c.capabilities.len() - required.len()) as u32,
                    running_tasks: c.running,
                    max_concurrent_tasks: c.limit,
                    covering_agents,
                },
                None => pb::RouteTaskResponse { covering_agents, ..Default::default() },
            })
        })
        .await
    }
}
