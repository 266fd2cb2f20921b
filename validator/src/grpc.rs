//! The validator's gRPC API (`trias.v1.Validator`): a thin mapping onto [`Validator`].
//!
//! Under mTLS a caller's identity decides its audience (see [`Validator::audience_of`]): a
//! request naming another audience is denied `wrong_audience`, and a caller bound to no
//! audience is refused. In development plain text the request's `audience` field is used.

use std::collections::BTreeMap;

use tonic::{Request, Response, Status};
use trias_proto::v1 as pb;
use trias_proto::v1::validator_server::{self, Validator as ValidatorApi};
use trias_runtime::clock::{from_unix_seconds, timestamp};
use trias_runtime::tls::Caller;

use crate::error::Error;
use crate::validator::{CheckInput, Validator, Verdict};

/// The most checks one `CheckBatch` may carry.
pub const MAX_BATCH: usize = 1000;

/// The gRPC service; wrap with [`ValidatorService::into_server`].
#[derive(Debug, Clone)]
pub struct ValidatorService {
    validator: Validator,
}

impl ValidatorService {
    pub fn new(validator: Validator) -> Self {
        ValidatorService { validator }
    }

    pub fn into_server(self) -> validator_server::ValidatorServer<Self> {
        // A full batch of maximal tokens must fit.
        let max = MAX_BATCH * (self.validator.settings().max_token_bytes + 1024);
        validator_server::ValidatorServer::new(self).max_decoding_message_size(max)
    }
}

/// Who is asking: under mTLS the caller's identity and the audience it is bound to.
#[derive(Debug, Clone, Default)]
struct Asker {
    identity: Option<String>,
    audience: Option<String>,
}

impl ValidatorService {
    /// The caller of `request`; one whose identity is bound to no audience is refused (and
    /// the refusal recorded).
    async fn asker<T>(&self, request: &Request<T>, rpc: &str) -> Result<Asker, Status> {
        let caller = Caller::of(&self.validator.settings().transport, request)?;
        let Caller::Authenticated(id) = caller else {
            return Ok(Asker::default());
        };
        match self.validator.audience_of(&id) {
            Some(audience) => Ok(Asker {
                identity: Some(id),
                audience: Some(audience),
            }),
            None => {
                let why = format!("{id} is bound to no audience of the policy");
                self.validator.record_access_denied(&id, rpc, &why).await;
                Err(Status::permission_denied(why))
            }
        }
    }
}

fn input(request: pb::CheckRequest, asker: &Asker) -> Result<CheckInput, Error> {
    if request.action.is_empty() {
        return Err(Error::InvalidRequest("action is required".into()));
    }
    let (audience, declared_audience) = match &asker.audience {
        Some(bound) => {
            let declared = (!request.audience.is_empty() && request.audience != *bound)
                .then_some(request.audience);
            (bound.clone(), declared)
        }
        None if request.audience.is_empty() => {
            return Err(Error::InvalidRequest("audience is required".into()));
        }
        None => (request.audience, None),
    };
    Ok(CheckInput {
        token: request.token,
        action: Some(request.action),
        resource: request.resource,
        audience,
        declared_audience,
        caller: asker.identity.clone(),
        context: request.context.into_iter().collect::<BTreeMap<_, _>>(),
        via: "grpc",
    })
}

fn decision(verdict: Verdict) -> pb::CheckDecision {
    let mut decision = pb::CheckDecision {
        allowed: verdict.allowed,
        reason: verdict.reason as i32,
        detail: verdict.detail,
        ..Default::default()
    };
    if verdict.allowed
        && let Some(claims) = verdict.claims
    {
        decision.subject = claims.sub.clone();
        decision.client_id = claims.client_id.clone();
        decision.scopes = claims.scopes.to_vec();
        decision.token_id = claims.jti.clone();
        decision.acr = claims.acr.clone().unwrap_or_default();
        decision.expires_at = Some(timestamp(from_unix_seconds(claims.exp)));
    }
    decision
}

#[tonic::async_trait]
impl ValidatorApi for ValidatorService {
    async fn check(
        &self,
        request: Request<pb::CheckRequest>,
    ) -> Result<Response<pb::CheckDecision>, Status> {
        let asker = self.asker(&request, "Check").await?;
        let input = input(request.into_inner(), &asker)?;
        let verdict = self.validator.check(&input).await?;
        Ok(Response::new(decision(verdict)))
    }

    async fn check_batch(
        &self,
        request: Request<pb::CheckBatchRequest>,
    ) -> Result<Response<pb::CheckBatchResponse>, Status> {
        let asker = self.asker(&request, "CheckBatch").await?;
        let checks = request.into_inner().checks;
        if checks.len() > MAX_BATCH {
            return Err(
                Error::InvalidRequest(format!("a batch holds at most {MAX_BATCH} checks")).into(),
            );
        }
        let inputs = checks
            .into_iter()
            .map(|check| input(check, &asker))
            .collect::<Result<Vec<_>, _>>()?;
        // Concurrently, so the outbox commits the batch's events together.
        let mut tasks = tokio::task::JoinSet::new();
        for (index, input) in inputs.into_iter().enumerate() {
            let validator = self.validator.clone();
            // Each check's span stays a child of the batch request's.
            let check = async move { (index, validator.check(&input).await) };
            tasks.spawn(tracing::Instrument::in_current_span(check));
        }
        let mut decisions = vec![pb::CheckDecision::default(); tasks.len()];
        while let Some(joined) = tasks.join_next().await {
            let (index, verdict) =
                joined.map_err(|e| Status::from(Error::Internal(format!("check task: {e}"))))?;
            if let Some(slot) = decisions.get_mut(index) {
                *slot = decision(verdict?);
            }
        }
        Ok(Response::new(pb::CheckBatchResponse { decisions }))
    }
}
