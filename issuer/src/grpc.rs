//! The issuer's gRPC API (`trias.v1.Issuer`): a thin mapping onto [`Issuer`].

use std::collections::BTreeSet;
use std::pin::Pin;
use std::time::Duration;
use trias_runtime::tls::Caller;

use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use trias_policy::GrantType;
use trias_proto::v1 as pb;
use trias_proto::v1::issuer_server;
use trias_runtime::clock::{from_unix_seconds, timestamp};

use crate::error::Error;
use crate::issuer::{Actor, ClientSpec, Issuer, LoginInput, TokenInput};
use crate::keys::{KeyAlgorithm, SigningKey};
use crate::store::{ClientRecord, RevocationRecord, RoleGrantRecord, UserRecord};

/// How often a revocation feed looks for revocations written by other issuers sharing the
/// database (its own are signalled at once).
const FEED_POLL: Duration = Duration::from_millis(500);
/// Revocations sent per database read on the feed.
const FEED_BATCH: i64 = 500;

/// The gRPC service; wrap with [`issuer_server::IssuerServer::new`].
#[derive(Debug, Clone)]
pub struct IssuerService {
    issuer: Issuer,
    /// Becomes true when the server shuts down, ending the revocation feeds (long-lived
    /// streams would otherwise keep a graceful shutdown waiting forever).
    stop: watch::Receiver<bool>,
}

impl IssuerService {
    pub fn new(issuer: Issuer, stop: watch::Receiver<bool>) -> Self {
        IssuerService { issuer, stop }
    }

    pub fn into_server(self) -> issuer_server::IssuerServer<Self> {
        issuer_server::IssuerServer::new(self).max_decoding_message_size(64 * 1024)
    }

    async fn admin<T>(
        &self,
        request: &Request<T>,
        scope: &str,
        operation: &str,
    ) -> Result<Actor, Status> {
        let bearer = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        Ok(self
            .issuer
            .authorize_admin(bearer, scope, operation)
            .await?)
    }
}

fn grant_from_pb(value: i32) -> Result<GrantType, Error> {
    match pb::GrantType::try_from(value) {
        Ok(pb::GrantType::ClientCredentials) => Ok(GrantType::ClientCredentials),
        Ok(pb::GrantType::AuthorizationCode) => Ok(GrantType::AuthorizationCode),
        Ok(pb::GrantType::RefreshToken) => Ok(GrantType::RefreshToken),
        Ok(pb::GrantType::Unspecified) => {
            Err(Error::InvalidRequest("grant_type is required".into()))
        }
        Err(_) => Err(Error::UnsupportedGrantType(value.to_string())),
    }
}

fn grant_to_pb(grant: GrantType) -> pb::GrantType {
    match grant {
        GrantType::ClientCredentials => pb::GrantType::ClientCredentials,
        GrantType::AuthorizationCode => pb::GrantType::AuthorizationCode,
        GrantType::RefreshToken => pb::GrantType::RefreshToken,
    }
}

fn some(value: String) -> Option<String> {
    if value.is_empty() { None } else { Some(value) }
}

fn client_to_pb(client: &ClientRecord) -> pb::Client {
    pb::Client {
        client_id: client.client_id.clone(),
        name: client.name.clone(),
        redirect_uris: client.redirect_uris.clone(),
        grant_types: client
            .grant_types
            .iter()
            .map(|g| grant_to_pb(*g) as i32)
            .collect(),
        scopes: client.scopes.iter().cloned().collect(),
        public: client.public,
        created_at: Some(timestamp(from_unix_seconds(client.created_at))),
    }
}

fn user_to_pb(user: &UserRecord, roles: Vec<String>) -> pb::User {
    pb::User {
        user_id: user.user_id.clone(),
        username: user.username.clone(),
        totp: user.totp_secret.is_some(),
        roles,
        created_at: Some(timestamp(from_unix_seconds(user.created_at))),
    }
}

fn grant_record_to_pb(grant: &RoleGrantRecord) -> pb::RoleGrant {
    let state = match grant.state.as_str() {
        "pending" => pb::RoleGrantState::Pending,
        "approved" => pb::RoleGrantState::Approved,
        "expired" => pb::RoleGrantState::Expired,
        "refused" => pb::RoleGrantState::Refused,
        _ => pb::RoleGrantState::Unspecified,
    };
    pb::RoleGrant {
        id: grant.id.clone(),
        subject: grant.subject.clone(),
        role: grant.role.clone(),
        justification: grant.justification.clone(),
        requested_by: grant.requested_by.clone(),
        approved_by: grant.approved_by.clone().unwrap_or_default(),
        state: state as i32,
        requested_at: Some(timestamp(from_unix_seconds(grant.requested_at))),
        expires_at: Some(timestamp(from_unix_seconds(grant.expires_at))),
    }
}

fn key_to_pb(key: &SigningKey) -> pb::KeyInfo {
    let ts = |t: i64| Some(timestamp(from_unix_seconds(t)));
    pb::KeyInfo {
        kid: key.kid.clone(),
        algorithm: match key.algorithm {
            KeyAlgorithm::EdDSA => pb::KeyAlgorithm::Eddsa,
            KeyAlgorithm::ES256 => pb::KeyAlgorithm::Es256,
        } as i32,
        published_at: ts(key.published_at),
        activates_at: ts(key.activates_at),
        retires_at: key.retires_at.and_then(ts),
        unpublished_at: key.unpublished_at.and_then(ts),
    }
}

/// The feed's wire form of a revocation.
pub fn revocation_to_pb(rev: &RevocationRecord) -> pb::Revocation {
    let target = match (&rev.token_id, &rev.family_id) {
        (Some(token_id), _) => Some(pb::revocation::Target::TokenId(token_id.clone())),
        (None, Some(family_id)) => Some(pb::revocation::Target::FamilyId(family_id.clone())),
        (None, None) => None,
    };
    pb::Revocation {
        seq: u64::try_from(rev.seq).unwrap_or(0),
        target,
        revoked_at: Some(timestamp(from_unix_seconds(rev.revoked_at))),
        expires_at: Some(timestamp(from_unix_seconds(rev.expires_at))),
        reason: rev.reason.clone(),
    }
}

type RevocationStream = Pin<Box<dyn Stream<Item = Result<pb::Revocation, Status>> + Send>>;

#[tonic::async_trait]
impl issuer_server::Issuer for IssuerService {
    #[tracing::instrument(skip_all, fields(client_id = %request.get_ref().client_id))]
    async fn token(
        &self,
        request: Request<pb::TokenRequest>,
    ) -> Result<Response<pb::TokenResponse>, Status> {
        let source = request.remote_addr().map(|addr| addr.ip());
        let r = request.into_inner();
        let grant_type = match grant_from_pb(r.grant_type) {
            Ok(grant) => grant.as_str().to_owned(),
            Err(Error::InvalidRequest(_)) => String::new(),
            Err(_) => format!("unknown({})", r.grant_type),
        };
        let issued = self
            .issuer
            .token(TokenInput {
                grant_type,
                client_id: r.client_id,
                client_secret: some(r.client_secret),
                scope: some(r.scope),
                resource: some(r.resource),
                code: some(r.code),
                code_verifier: some(r.code_verifier),
                redirect_uri: some(r.redirect_uri),
                refresh_token: some(r.refresh_token),
                source,
            })
            .await?;
        Ok(Response::new(pb::TokenResponse {
            access_token: issued.access_token,
            token_type: "Bearer".into(),
            expires_in: issued.expires_in,
            refresh_token: issued.refresh_token.unwrap_or_default(),
            scope: issued.scope,
            audience: issued.audience,
            token_id: issued.token_id,
        }))
    }

    #[tracing::instrument(skip_all, fields(client_id = %request.get_ref().client_id))]
    async fn login(
        &self,
        request: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        let r = request.into_inner();
        let outcome = self
            .issuer
            .login(LoginInput {
                client_id: r.client_id,
                redirect_uri: r.redirect_uri,
                code_challenge: r.code_challenge,
                code_challenge_method: r.code_challenge_method,
                scope: some(r.scope),
                resource: some(r.resource),
                username: r.username,
                password: r.password,
                totp: some(r.totp),
                // The peer is the frontend, relaying every user's login: not the user's
                // address, so not limited per source (the per-username limit applies).
                source: None,
            })
            .await?;
        Ok(Response::new(pb::LoginResponse {
            code: outcome.code,
            expires_in: outcome.expires_in,
            redirect_uri: outcome.redirect_uri,
            acr: outcome.acr.as_str().into(),
        }))
    }

    #[tracing::instrument(skip_all, fields(client_id = %request.get_ref().client_id))]
    async fn revoke(
        &self,
        request: Request<pb::RevokeRequest>,
    ) -> Result<Response<pb::RevokeResponse>, Status> {
        let source = request.remote_addr().map(|addr| addr.ip());
        let r = request.into_inner();
        self.issuer
            .revoke(
                &r.client_id,
                some(r.client_secret).as_deref(),
                &r.token,
                some(r.token_type_hint).as_deref(),
                source,
            )
            .await?;
        Ok(Response::new(pb::RevokeResponse {}))
    }

    async fn get_jwks(
        &self,
        _request: Request<pb::GetJwksRequest>,
    ) -> Result<Response<pb::Jwks>, Status> {
        Ok(Response::new(pb::Jwks {
            keys: self.issuer.jwks(),
        }))
    }

    type WatchRevocationsStream = RevocationStream;

    async fn watch_revocations(
        &self,
        request: Request<pb::WatchRevocationsRequest>,
    ) -> Result<Response<Self::WatchRevocationsStream>, Status> {
        // Only validators follow the feed: it tells which tokens are dead, and when.
        let settings = self.issuer.settings();
        let caller = Caller::of(&settings.transport, &request)?;
        let validators: Vec<&str> = settings.validators.iter().map(String::as_str).collect();
        if let Err(status) = caller.require(&validators, "WatchRevocations") {
            let id = caller.identity().unwrap_or_default();
            self.issuer
                .record_access_denied(id, "WatchRevocations", status.message())
                .await;
            return Err(status);
        }
        let mut after = i64::try_from(request.into_inner().after_seq)
            .map_err(|_| Status::from(Error::InvalidRequest("after_seq is out of range".into())))?;
        let issuer = self.issuer.clone();
        let mut signal = issuer.revocation_signal();
        let mut stop = self.stop.clone();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                // Subscribe-then-read: anything written after this read wakes the signal.
                signal.mark_unchanged();
                match issuer.revocations_after(after, FEED_BATCH).await {
                    Ok(batch) => {
                        let full = batch.len() as i64 == FEED_BATCH;
                        for rev in batch {
                            after = rev.seq;
                            if tx.send(Ok(revocation_to_pb(&rev))).await.is_err() {
                                return;
                            }
                        }
                        if full {
                            continue;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(Status::from(e))).await;
                        return;
                    }
                }
                tokio::select! {
                    changed = signal.changed() => if changed.is_err() { return },
                    () = tokio::time::sleep(FEED_POLL) => {}
                    () = tx.closed() => return,
                    _ = stop.wait_for(|stopping| *stopping) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn register_client(
        &self,
        request: Request<pb::RegisterClientRequest>,
    ) -> Result<Response<pb::RegisterClientResponse>, Status> {
        let actor = self
            .admin(&request, "admin:clients", "register_client")
            .await?;
        let r = request.into_inner();
        let grant_types = r
            .grant_types
            .iter()
            .map(|g| grant_from_pb(*g))
            .collect::<Result<BTreeSet<_>, _>>()?;
        let created = self
            .issuer
            .register_client(
                &actor,
                ClientSpec {
                    name: r.name,
                    redirect_uris: r.redirect_uris,
                    grant_types,
                    scopes: r.scopes.into_iter().collect(),
                    public: r.public,
                },
            )
            .await?;
        Ok(Response::new(pb::RegisterClientResponse {
            client: Some(client_to_pb(&created.client)),
            client_secret: created.secret.unwrap_or_default(),
        }))
    }

    async fn list_clients(
        &self,
        request: Request<pb::ListClientsRequest>,
    ) -> Result<Response<pb::ListClientsResponse>, Status> {
        self.admin(&request, "admin:clients", "list_clients")
            .await?;
        let clients = self.issuer.store().clients().await.map_err(Error::from)?;
        Ok(Response::new(pb::ListClientsResponse {
            clients: clients.iter().map(client_to_pb).collect(),
        }))
    }

    async fn create_user(
        &self,
        request: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::CreateUserResponse>, Status> {
        let actor = self.admin(&request, "admin:users", "create_user").await?;
        let r = request.into_inner();
        let created = self
            .issuer
            .create_user(&actor, &r.username, &r.password, r.totp)
            .await?;
        Ok(Response::new(pb::CreateUserResponse {
            user: Some(user_to_pb(&created.user, Vec::new())),
            totp_secret: created.totp_secret.unwrap_or_default(),
            totp_uri: created.totp_uri.unwrap_or_default(),
        }))
    }

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        self.admin(&request, "admin:users", "list_users").await?;
        let store = self.issuer.store();
        let mut users = Vec::new();
        for user in store.users().await.map_err(Error::from)? {
            let roles = store.roles_of(&user.user_id).await.map_err(Error::from)?;
            users.push(user_to_pb(&user, roles.into_iter().collect()));
        }
        Ok(Response::new(pb::ListUsersResponse { users }))
    }

    async fn request_role_grant(
        &self,
        request: Request<pb::RequestRoleGrantRequest>,
    ) -> Result<Response<pb::RoleGrant>, Status> {
        let actor = self
            .admin(&request, "admin:roles", "request_role_grant")
            .await?;
        let r = request.into_inner();
        let grant = self
            .issuer
            .request_role_grant(&actor, &r.subject, &r.role, &r.justification)
            .await?;
        Ok(Response::new(grant_record_to_pb(&grant)))
    }

    async fn approve_role_grant(
        &self,
        request: Request<pb::ApproveRoleGrantRequest>,
    ) -> Result<Response<pb::RoleGrant>, Status> {
        let actor = self
            .admin(&request, "admin:roles", "approve_role_grant")
            .await?;
        let grant = self
            .issuer
            .approve_role_grant(&actor, &request.into_inner().id)
            .await?;
        Ok(Response::new(grant_record_to_pb(&grant)))
    }

    async fn list_role_grants(
        &self,
        request: Request<pb::ListRoleGrantsRequest>,
    ) -> Result<Response<pb::ListRoleGrantsResponse>, Status> {
        self.admin(&request, "admin:roles", "list_role_grants")
            .await?;
        let state = match pb::RoleGrantState::try_from(request.into_inner().state) {
            Ok(pb::RoleGrantState::Pending) => Some("pending"),
            Ok(pb::RoleGrantState::Approved) => Some("approved"),
            Ok(pb::RoleGrantState::Expired) => Some("expired"),
            Ok(pb::RoleGrantState::Refused) => Some("refused"),
            _ => None,
        };
        let grants = self
            .issuer
            .store()
            .role_grants(state)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(pb::ListRoleGrantsResponse {
            grants: grants.iter().map(grant_record_to_pb).collect(),
        }))
    }

    async fn revoke_role(
        &self,
        request: Request<pb::RevokeRoleRequest>,
    ) -> Result<Response<pb::RevokeRoleResponse>, Status> {
        let actor = self.admin(&request, "admin:roles", "revoke_role").await?;
        let r = request.into_inner();
        self.issuer.revoke_role(&actor, &r.subject, &r.role).await?;
        Ok(Response::new(pb::RevokeRoleResponse {}))
    }

    async fn rotate_keys(
        &self,
        request: Request<pb::RotateKeysRequest>,
    ) -> Result<Response<pb::KeyInfo>, Status> {
        let actor = self.admin(&request, "admin:keys", "rotate_keys").await?;
        let algorithm = match pb::KeyAlgorithm::try_from(request.into_inner().algorithm) {
            Ok(pb::KeyAlgorithm::Eddsa) => Some(KeyAlgorithm::EdDSA),
            Ok(pb::KeyAlgorithm::Es256) => Some(KeyAlgorithm::ES256),
            Ok(pb::KeyAlgorithm::Unspecified) => None,
            Err(_) => return Err(Error::InvalidRequest("unknown key algorithm".into()).into()),
        };
        let key = self.issuer.rotate_keys(&actor, algorithm).await?;
        Ok(Response::new(key_to_pb(&key)))
    }

    async fn list_keys(
        &self,
        request: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        self.admin(&request, "admin:keys", "list_keys").await?;
        self.issuer.reload_keys().await?;
        Ok(Response::new(pb::ListKeysResponse {
            keys: self.issuer.keys().all().iter().map(key_to_pb).collect(),
        }))
    }
}
